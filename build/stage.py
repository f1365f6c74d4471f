"""Stage the pyz's site-packages: daemon_app plus the runtime dependencies exactly as installed.

Usage: python build/stage.py STAGE_DIR [--version V] [--inject FILE]
       (run with the venv's python; prints the build id)

--version V     stamp V as daemon_app.__version__ in the staged copy (the source tree is untouched)
--inject FILE   append FILE's Python code to the staged daemon_app/__init__.py: test builds only,
                e.g. a daemon that crashes at start or never registers (tests/e2e/test_self_update.py)

Dependencies are copied file by file from the running interpreter's environment (their RECORD),
so the pyz carries the very versions the tests ran against, without a network or a resolver.
Only the closure of `[project].dependencies` goes in: dev tools (pytest, ruff, shiv, grpcio-tools)
stay out. Files are copied in sorted order with normalised modes, and the build id is a hash of
the staged tree, so the same sources and venv give the same id (and, with shiv --reproducible,
the same bytes).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pip vendors packaging; every venv has pip
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure() -> dict[str, md.Distribution]:
    """Every distribution the project's runtime dependencies need, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(spec) for spec in project["dependencies"]]
    found: dict[str, md.Distribution] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonical(req.name)
        if name in found:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"build: {req.name} is not installed in {sys.prefix}; run `make venv`")
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"build: installed {req.name} {dist.version} does not satisfy {req}")
        found[name] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return found


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


def stage(target: Path, version: str | None = None, inject: str | None = None) -> str:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    pins = {}
    for name, dist in sorted(runtime_closure().items()):
        pins[name] = dist.version
        for rel in sorted(str(f) for f in dist.files or []):
            if wanted(rel):
                copy_file(Path(dist.locate_file(rel)), target / rel)
    for src in sorted((ROOT / "daemon_app").rglob("*")):
        rel = src.relative_to(ROOT).as_posix()
        if src.is_file() and wanted(rel) and src.name != "_build.json":
            copy_file(src, target / rel)
    customise(target, version, inject)

    digest = hashlib.sha256()
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        digest.update(path.relative_to(target).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    build_id = digest.hexdigest()[:16]
    sys.path.insert(0, str(ROOT))
    from daemon_app import __version__

    info = {
        "build_id": build_id,
        "version": version or __version__,
        "source_date_epoch": int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")),
        "python": "%d.%d" % sys.version_info[:2],
        "dependencies": pins,
    }
    (target / "daemon_app" / "_build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.chmod(target / "daemon_app" / "_build.json", 0o644)
    return build_id


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("--version", default=None)
    parser.add_argument("--inject", default=None)
    opts = parser.parse_args()
    print(stage(opts.stage_dir, opts.version or None, opts.inject or None))
