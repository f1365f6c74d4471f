"""Unpack daemon.pyz's site-packages so that no kill -9 can wedge a later start (in the pyz as
_daemon_unpack.py; build/mainpy.py's __main__.py calls it before shiv's bootstrap, which then finds
the directory in place and unpacks nothing itself).

shiv's own unpacking precompiles with compileall's worker pool: forked children that inherit the
flock on `$SHIV_ROOT/.<name>_<build>_lock`. A kill -9 during the first start of a build left them
running as orphans holding that lock, and every later start of the build waited on it forever. Here:

- the lock is an flock on an fd only this process holds (close-on-exec, and nothing is forked while
  it is held), so it dies with its holder, whatever kills it;
- a half-finished unpack (`<dir>.tmp`, left by a holder that died) is removed and done again; the
  directory appears in one rename only when complete;
- bytecode is compiled by child processes (one per CPU, up to 4, each taking every n-th file; no
  pool forking grandchildren) that exit as soon as their parent is gone, so none outlives the
  daemon, and the daemon's own heap never holds the compiler's garbage;
- only this interpreter's packages are compiled (site-packages/_interp/cpXY of the others are not).

Same lock file and layout as shiv's bootstrap, so the two agree if both ever run. Runs on 3.9+,
stdlib only, no hashlib (build/mainpy.py keeps OpenSSL out of the daemon).
"""

import fcntl
import os
import shutil
import subprocess
import sys
import time
import zipfile

# A compile child: the kernel kills it with its parent (PR_SET_PDEATHSIG), and where ctypes is
# missing a thread ends it the moment its parent (the daemon) is gone. argv: parent pid, directory,
# regex of paths to skip, this child's index, number of children.
COMPILE = """\
import os, py_compile, re, sys, threading, time
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)
except Exception:
    pass
parent = int(sys.argv[1])
def orphaned():
    while os.getppid() == parent:
        time.sleep(0.05)
    os._exit(1)
threading.Thread(target=orphaned, daemon=True).start()
skip, index, count = re.compile(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
files = sorted(os.path.join(d, f) for d, _, names in os.walk(sys.argv[2]) for f in names if f.endswith(".py"))
for path in files[index::count]:
    if not skip.search(path):
        try:
            py_compile.compile(path, doraise=True)
        except Exception:
            pass  # (a file that does not compile for this Python is imported, or not, as it is)
"""
MAX_COMPILERS = 4

# Test hook (docs/updates.md, "Kill points"): with DAEMON_TEST_PAUSE_AT=unpack the first unpack
# stops after extracting, before compiling and renaming, once per DAEMON_TEST_PAUSE_FILE.
PAUSE_ENV, PAUSE_FILE_ENV = "DAEMON_TEST_PAUSE_AT", "DAEMON_TEST_PAUSE_FILE"


def ensure_unpacked(archive: str, target: str, force: bool = False) -> None:
    """Make `target`/site-packages hold the archive's site-packages, complete, exactly once."""
    site = os.path.join(target, "site-packages")
    if os.path.isdir(site) and not force:
        return
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    lock = os.path.join(parent, ".%s_lock" % os.path.basename(target))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # its holder is alive (the lock dies with it): worth waiting
        if os.path.isdir(site) and not force:
            return
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a dead holder's half-finished unpack
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename.startswith("site-packages"):
                    path = zf.extract(info, tmp)
                    os.chmod(path, info.external_attr >> 16)
        _test_pause("unpack")
        compile_bytecode(os.path.join(tmp, "site-packages"))
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        os.close(fd)


def compile_bytecode(site_packages: str) -> None:
    """Precompile in children that die with us; a failure only means imports compile lazily."""
    own = "cp%d%d" % sys.version_info[:2]
    skip = r"/_interp/(?!%s/)" % own  # other interpreters' builds: never imported by this one
    count = max(1, min(os.cpu_count() or 1, MAX_COMPILERS))
    children = []
    try:
        for index in range(count):
            children.append(subprocess.Popen(
                [sys.executable, "-I", "-c", COMPILE, str(os.getpid()), site_packages, skip, str(index),
                 str(count)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    except OSError:
        pass
    for child in children:
        child.wait()


def _test_pause(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name or not os.environ.get(PAUSE_FILE_ENV):
        return
    try:
        fd = os.open(os.environ[PAUSE_FILE_ENV], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # paused here once already: go on
    os.write(fd, b"%d\n" % os.getpid())
    os.close(fd)
    while True:
        time.sleep(3600)
