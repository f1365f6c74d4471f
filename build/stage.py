"""Stage the pyz's site-packages for one architecture: daemon_app plus the locked wheels.

Usage: python build/stage.py STAGE_DIR --arch ARCH [--version V] [--inject FILE]
       (run with the venv's python; prints the build id)

--arch ARCH     x86_64 or aarch64: the pyz runs on that architecture only
--version V     stamp V as daemon_app.__version__ in the staged copy (the source tree is untouched)
--inject FILE   append FILE's Python code to the staged daemon_app/__init__.py: test builds only,
                e.g. a daemon that crashes at start or never registers (tests/e2e/test_self_update.py)

The wheels are the ones build/wheels.py locked for every supported interpreter of ARCH (the
closure of `[project].dependencies`, same versions everywhere). Each package goes in once where
one wheel serves every interpreter (pure Python, or the stable ABI: abi3 built for the oldest
one); a package whose extensions are built per interpreter (e.g. cffi) goes in once per
interpreter, into STAGE_DIR's sibling _interp/cpXY: the zip's _interp/cpXY/, which shiv leaves
packed and build/preamble.py unpacks, for the running interpreter only, and puts on sys.path.
PURE packages go in without their extension modules. Files are unpacked in
sorted order with normalised modes, and the build id is a hash of the staged tree, so the same
sources and lock give the same id (and, with shiv --reproducible, the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "build"))
import wheels  # noqa: E402 - build/wheels.py, beside this file

# Per-interpreter packages: STAGE_DIR/../_interp/cp39 … beside site-packages; build/mainpy.py adds
# them to the zip as _interp/cpXY/…, outside site-packages, so that shiv does not unpack all five:
# build/preamble.py unpacks only the running interpreter's.
INTERP_DIR = "_interp"


def wheel_tags(filename: str) -> list[tuple[str, str]]:
    """'x-1-cp39-abi3-manylinux….whl' -> [('cp39', 'abi3')] (one pair per compressed tag)."""
    python, abi = filename[:-4].split("-")[-3:-1]
    return [(p, a) for p in python.split(".") for a in abi.split(".")]


def serves(filename: str, python: str) -> bool:
    """Whether the wheel (already of the right platform) loads on CPython `python` ('3.11')."""
    minor = int(python.split(".")[1])
    for interp, abi in wheel_tags(filename):
        if abi == "none" and interp in ("py3", "py2.py3", f"py3{minor}", f"cp3{minor}"):
            return True
        if abi == "abi3" and interp.startswith("cp3") and int(interp[3:]) <= minor:
            return True
        if abi == f"cp3{minor}" and interp == f"cp3{minor}":
            return True
    return False


def placement(arch: str, lock: dict) -> dict[str, list[tuple[str, str]]]:
    """Wheel file -> [(dir relative to the stage, python)] for every locked wheel this build unpacks:
    "site-packages" for the shared ones, "_interp/cpXY" for per-interpreter ones."""
    by_package: dict[str, dict[str, str]] = {}
    for python in wheels.PYTHONS:
        for filename in lock["targets"][wheels.target_name(python, arch)]:
            by_package.setdefault(wheels.wheel_name(filename)[0], {})[python] = filename
    placed: dict[str, list[tuple[str, str]]] = {}
    for name, per_python in sorted(by_package.items()):
        oldest = per_python[min(per_python, key=lambda p: int(p.split(".")[1]))]
        everywhere = set(per_python) == set(wheels.PYTHONS)
        if everywhere and (name in wheels.PURE or all(serves(oldest, p) for p in wheels.PYTHONS)):
            placed.setdefault(oldest, []).append(("site-packages", "any"))
            continue
        for python, filename in sorted(per_python.items()):
            placed.setdefault(filename, []).append(
                (f"{INTERP_DIR}/cp{python.replace('.', '')}", python))
    return placed


def is_extension(member: str) -> bool:
    return member.endswith(".so") or ".so." in member


def unpack(wheel: Path, target: Path, strip_extensions: bool) -> list[str]:
    """Unpack a wheel as pip would (purelib/platlib at the root; scripts and headers left out);
    return the extension modules left out."""
    stripped = []
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(zf.namelist())
        for member in names:
            rel = re.sub(r"^[^/]+\.data/(?:purelib|platlib)/", "", member)
            if re.match(r"^[^/]+\.data/", rel) or member.endswith("/") or not wanted(rel):
                continue  # scripts, headers, data: not importable, not needed
            if strip_extensions and is_extension(rel):
                stripped.append(rel)
                continue
            data = zf.read(member)
            if strip_extensions and rel.endswith(".dist-info/RECORD"):
                continue  # written below without the stripped files
            write_file(target / rel, data, executable=is_extension(rel))
        if strip_extensions:
            record = [m for m in names if m.endswith(".dist-info/RECORD")]
            for member in record:
                lines = zf.read(member).decode().splitlines(keepends=True)
                kept = "".join(line for line in lines if line.split(",")[0] not in stripped)
                write_file(target / member, kept.encode(), executable=False)
    return stripped


def write_file(dst: Path, data: bytes, executable: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    # Modes go into the zip: normalise them so a different umask gives the same bytes.
    os.chmod(dst, 0o755 if executable else 0o644)


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    # Modes go into the zip: normalise them so a different umask gives the same bytes.
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) and src.suffix != ".py" else 0o644)


def wanted(rel: str) -> bool:
    return not rel.startswith("..") and "__pycache__" not in rel and not rel.endswith(".pyc")


def customise(target: Path, version: str | None, inject: str | None) -> None:
    """Apply --version and --inject to the staged daemon_app/__init__.py."""
    init = target / "daemon_app" / "__init__.py"
    text = init.read_text()
    if version is not None:
        text, n = re.subn(r'^__version__ = ".*"$', f'__version__ = "{version}"', text, flags=re.M)
        if n != 1:
            sys.exit("build: cannot find __version__ in daemon_app/__init__.py")
    if inject is not None:
        text += "\n# --- injected by build/stage.py --inject (a test build) ---\n" + Path(inject).read_text()
    init.write_text(text)


def stage(target: Path, arch: str, version: str | None = None, inject: str | None = None) -> str:
    """Stage into `target` (the site-packages) and its sibling _interp; return the build id."""
    for tree in (target, target.parent / INTERP_DIR):
        if tree.exists():
            shutil.rmtree(tree)
    target.mkdir(parents=True)
    cache = wheels.fetch(arch)
    lock = wheels.load_lock()
    per_interpreter: set[str] = set()
    stripped: dict[str, list[str]] = {}
    for filename, places in sorted(placement(arch, lock).items()):
        name = wheels.wheel_name(filename)[0]
        for subdir, _python in places:
            if subdir != "site-packages":
                per_interpreter.add(name)
            left_out = unpack(cache / filename, target.parent / subdir, strip_extensions=name in wheels.PURE)
            if left_out:
                stripped[name] = sorted(set(stripped.get(name, [])) | {Path(f).name for f in left_out})
    for src in sorted((ROOT / "daemon_app").rglob("*")):
        rel = src.relative_to(ROOT).as_posix()
        if src.is_file() and wanted(rel) and src.name != "_build.json":
            copy_file(src, target / rel)
    customise(target, version, inject)

    digest = hashlib.sha256()
    for tree in (target, target.parent / INTERP_DIR):
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            digest.update(path.relative_to(target.parent).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    build_id = digest.hexdigest()[:16]
    sys.path.insert(0, str(ROOT))
    from daemon_app import __version__

    info = {
        "build_id": build_id,
        "version": version or __version__,
        "source_date_epoch": int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")),
        "pythons": list(wheels.PYTHONS),
        "arch": arch,
        "dependencies": {n: v for n, v in lock["pins"].items()},
        "per_interpreter": sorted(per_interpreter),
        "extensions_left_out": stripped,
    }
    (target / "daemon_app" / "_build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.chmod(target / "daemon_app" / "_build.json", 0o644)
    return build_id


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("--arch", required=True, choices=wheels.ARCHS)
    parser.add_argument("--version", default=None)
    parser.add_argument("--inject", default=None)
    opts = parser.parse_args()
    print(stage(opts.stage_dir, opts.arch, opts.version or None, opts.inject or None))
