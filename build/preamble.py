"""shiv preamble of daemon.pyz: runs after extraction, before the CLI starts.

shiv extracts the pyz's packages once per build into $SHIV_ROOT/<pyz name>_<build id> (default
~/.shiv). Every update leaves another such directory behind, so this prunes them: it keeps the
current one and the most recently used other one (the version a rollback returns to, so that a
rollback does not extract again) and removes the rest. It also tells the daemon which file it
was started from ($SHIV_PYZ), and puts the running interpreter's own builds of the packages that
have no stable-ABI form on sys.path. It never stops the daemon: any error in pruning is ignored.
It runs on every Python the pyz supports (3.9+).
"""

import os
import shutil
import sys
import time
from pathlib import Path

KEEP_OTHERS = 1
STALE_TMP_S = 3600  # an interrupted extraction (<dir>.tmp) older than this is abandoned


def prune(current: Path) -> None:
    root = current.parent
    prefix = current.name.rsplit("_", 1)[0] + "_"
    os.utime(current)  # "most recently used" is what decides which other one stays
    others = []
    for entry in root.iterdir():
        if entry == current or not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        if entry.name.endswith(".tmp"):
            if time.time() - entry.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        others.append((entry.stat().st_mtime, entry))
    others.sort(reverse=True)
    for _, old in others[KEEP_OTHERS:]:
        shutil.rmtree(old, ignore_errors=True)
        (root / f".{old.name}_lock").unlink(missing_ok=True)


def forget_builtin_hashlib() -> None:
    """__main__.py (build/mainpy.py) hid _hashlib from shiv's bootstrap so that OpenSSL's libcrypto
    stays unloaded: drop that hashlib, and the daemon's first `import hashlib` loads the real one."""
    if "_hashlib" in sys.modules and sys.modules["_hashlib"] is None:
        del sys.modules["_hashlib"]
        sys.modules.pop("hashlib", None)


def add_interpreter_packages(site_packages: Path, pyz: str) -> None:
    """Put this interpreter's own builds of the packages that exist only per interpreter (the zip's
    _interp/cpXY/, see build/stage.py) on sys.path, ahead of the shared site-packages. shiv leaves
    them packed; they are unpacked here, once, for this interpreter only (not all five)."""
    tag = "cp%d%d" % sys.version_info[:2]
    own = site_packages.parent / "_interp" / tag
    if not own.is_dir() and not unpack_own(pyz, tag, own):
        return
    shared = os.path.abspath(str(site_packages))
    at = sys.path.index(shared) if shared in sys.path else 0
    sys.path.insert(at, str(own))


def unpack_own(pyz: str, tag: str, own: Path) -> bool:
    """Unpack _interp/<tag>/ of the pyz into `own` and compile it, atomically (a private temporary
    directory renamed into place: a concurrent start either wins or discards its copy)."""
    import compileall
    import zipfile

    prefix = "_interp/%s/" % tag
    with zipfile.ZipFile(pyz) as zf:
        members = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
        if not members:
            return False
        tmp = own.with_name("%s.%d.tmp" % (tag, os.getpid()))
        shutil.rmtree(tmp, ignore_errors=True)
        for info in members:
            path = tmp / info.filename[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(zf.read(info))
            os.chmod(path, (info.external_attr >> 16) & 0o777 or 0o644)
    # Compiled now, like shiv compiles site-packages, so the daemon never compiles at import;
    # ddir: the paths in tracebacks are the final ones, not the temporary directory's.
    compileall.compile_dir(str(tmp), quiet=2, ddir=str(own))
    try:
        os.rename(tmp, own)
    except OSError:  # another start got there first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return own.is_dir()


def main() -> None:
    add_interpreter_packages(Path(site_packages), archive)  # noqa: F821 - set by shiv's bootstrap
    forget_builtin_hashlib()
    os.environ["SHIV_PYZ"] = os.path.abspath(archive)  # noqa: F821 - set by shiv's bootstrap
    try:
        prune(Path(site_packages).parent)  # noqa: F821 - set by shiv's bootstrap
    except OSError:
        pass


if __name__ == "__main__":
    main()
