"""Replace shiv's __main__.py in a built pyz: refuse an unsupported host in one line; keep OpenSSL's
libcrypto out of the daemon.

Usage: python build/mainpy.py PYZ [INTERP_DIR]   (build/shiv.sh runs it on the freshly built file)

INTERP_DIR (build/stage.py's _interp) is added as the zip's _interp/cpXY/… entries: the packages
built per interpreter, outside site-packages so that shiv's bootstrap leaves them packed and
build/preamble.py unpacks only the running interpreter's.

shiv's bootstrap imports hashlib at its top (for an optional source-hash check this pyz does not
use), and hashlib loads OpenSSL's libcrypto through _hashlib: ~3.6 MB of resident memory for the
life of a stand-alone daemon, although nothing on its idle path hashes anything (with a Manager the
link's ssl module loads libcrypto anyway). The new __main__.py hides _hashlib while the bootstrap imports, so that hashlib falls back
to Python's built-in hashes there; build/preamble.py then forgets both modules before the daemon
starts, so the daemon's own `import hashlib` (an update's SHA-256) gets OpenSSL's again.
Before all that, the new __main__.py compares the interpreter and the machine with the ones the
build is for (_build.json: arch, pythons): Python 3.8, PyPy or an x86_64 pyz on aarch64 get one
line saying what the pyz needs and exit 69 (EX_UNAVAILABLE), not a traceback from deep inside.
Then it unpacks the pyz with build/unpack.py (added as _daemon_unpack.py) instead of shiv's
bootstrap, whose compile workers could outlive a killed daemon while holding the unpack lock.
Entries, their order, dates and modes are kept: the output is as reproducible as shiv's.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO

MAIN_PY = """\
# -*- coding: utf-8 -*-
# Written by build/mainpy.py. First: a host this build cannot run on gets one line saying what it
# needs (this part runs even on Python 2). Then shiv's bootstrap, whose hashlib must not load
# OpenSSL (see build/preamble.py).
import os
import sys

PYTHONS = {pythons!r}
ARCH = {arch!r}
_impl = getattr(getattr(sys, "implementation", None), "name", "python")
_here = (_impl, tuple(sys.version_info[:2]), os.uname()[4])
if _here != ("cpython", _here[1], ARCH) or "%d.%d" % _here[1] not in PYTHONS:
    sys.stderr.write("daemon.pyz: this build runs on CPython %s to %s on %s Linux; this host has "
                     "%s %d.%d on %s\\n" % (PYTHONS[0], PYTHONS[-1], ARCH, _impl, _here[1][0], _here[1][1],
                                            _here[2]))
    sys.exit(69)  # EX_UNAVAILABLE
sys.modules["_hashlib"] = None
import _bootstrap
import _daemon_unpack
with _bootstrap.current_zipfile() as _zf:
    _env = _bootstrap.Environment.from_json(_zf.read("environment.json").decode())
    _target = _bootstrap.cache_path(_zf, _env.root, _env.build_id)
_daemon_unpack.ensure_unpacked(sys.argv[0], str(_target), _env.force_extract)
os.environ.pop("SHIV_FORCE_EXTRACT", None)  # done above: shiv's bootstrap must not unpack again
_bootstrap.bootstrap()
"""
UNPACK_NAME = "_daemon_unpack.py"
UNPACK_SOURCE = Path(__file__).with_name("unpack.py")


def main_py(build: dict) -> bytes:
    return MAIN_PY.format(pythons=tuple(build["pythons"]), arch=build["arch"]).encode()


def copy_compressed(raw: BinaryIO, info: zipfile.ZipInfo, dst: zipfile.ZipFile) -> None:
    """Copy one entry's compressed bytes as they are: recompressing ~100 MB of extensions would
    double the build time for nothing. zipfile has no public call for this; these are the steps
    of ZipFile.writestr after compression (local header, data, bookkeeping for the directory)."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    raw.seek(info.header_offset + 30 + name_len + extra_len)
    data = raw.read(info.compress_size)
    entry = copy.copy(info)
    entry.header_offset = dst.fp.tell()
    dst.fp.write(entry.FileHeader())
    dst.fp.write(data)
    dst.filelist.append(entry)
    dst.NameToInfo[entry.filename] = entry
    dst.start_dir = dst.fp.tell()
    dst._didModify = True


def add_tree(dst: zipfile.ZipFile, tree: Path, like: zipfile.ZipInfo) -> None:
    """Add `tree` (build/stage.py's _interp: per-interpreter packages) as _interp/… entries, sorted,
    dated and compressed like `like`, modes normalised: as reproducible as shiv's own entries."""
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        info = zipfile.ZipInfo(f"{tree.name}/{path.relative_to(tree).as_posix()}", like.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        mode = 0o755 if path.suffix == ".so" or ".so." in path.name else 0o644
        info.external_attr = (0o100000 | mode) << 16
        dst.writestr(info, path.read_bytes())


def rewrite(pyz: Path, interp: Path | None = None) -> None:
    with open(pyz, "rb") as fh:
        shebang = fh.readline()
    if not shebang.startswith(b"#!"):
        sys.exit(f"build: {pyz} does not start with a shebang line")
    tmp = pyz.with_name(pyz.name + ".main")
    with zipfile.ZipFile(pyz) as src, open(pyz, "rb") as raw, open(tmp, "wb") as fh:
        fh.write(shebang)
        with zipfile.ZipFile(fh, "w") as dst:
            found: zipfile.ZipInfo | None = None
            build = json.loads(src.read("site-packages/daemon_app/_build.json"))
            for info in src.infolist():
                if info.filename != "__main__.py":
                    copy_compressed(raw, info, dst)
                    continue
                data = src.read(info)
                if b"import _bootstrap" not in data:
                    sys.exit(f"build: unexpected __main__.py in {pyz}: {data!r}")
                dst.writestr(info, main_py(build))
                unpack = zipfile.ZipInfo(UNPACK_NAME, info.date_time)
                unpack.external_attr, unpack.compress_type = info.external_attr, info.compress_type
                dst.writestr(unpack, UNPACK_SOURCE.read_bytes())
                found = info
            if not found:
                sys.exit(f"build: {pyz} has no __main__.py")
            if interp is not None and interp.is_dir():
                add_tree(dst, interp, found)
    with zipfile.ZipFile(tmp) as check:
        bad = check.testzip()
        if bad is not None:
            sys.exit(f"build: {tmp}: {bad} is corrupt after the rewrite")
    os.chmod(tmp, os.stat(pyz).st_mode)
    os.replace(tmp, pyz)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    rewrite(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None)
