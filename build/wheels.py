"""The wheels that go into the pyz, for every interpreter and architecture it runs on.

Usage: python build/wheels.py lock            re-resolve build/pyz-lock.json from pyproject (network)
       python build/wheels.py fetch ARCH      the locked wheels of ARCH into the cache (network only
                                              for wheels not cached yet); prints the cache dir

The daemon runs on the distributions' own python3, CPython 3.9 to 3.13, on x86_64 and aarch64
(TARGETS). One machine builds every variant: pip downloads wheels for another interpreter and
architecture with --platform/--python-version/--implementation/--abi and --only-binary=:all:.

The lock (build/pyz-lock.json, committed) makes builds reproducible and checked:
- it is resolved from pyproject's [project].dependencies, so a dependency added or removed there
  is picked up by the next `make pyz` (the lock records the requirements it was made from and is
  re-resolved when they differ);
- every target gets the same version of each package: the oldest interpreter is resolved first,
  and its versions constrain the others (a package only some targets need, by marker, is added);
- PURE packages ship as pure Python: the pure wheel where one is published, otherwise the
  extension modules are left out of the binary one at staging (build/stage.py) and the package's
  own fallback runs;
- every wheel file is listed per target with its sha256, which `fetch` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "build" / "pyz-lock.json"
CACHE = Path(os.environ.get("PYZ_WHEEL_CACHE") or Path.home() / ".cache" / "daemon-pyz" / "wheels")

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
ARCHS = ("x86_64", "aarch64")
# pip reads --python-version 3.9 as 3.9.0, which e.g. cryptography excludes ("!=3.9.0,!=3.9.1");
# resolve for the oldest release a distribution ships (Debian 11: 3.9.2).
PATCH_LEVEL = {"3.9": "3.9.2"}
# glibc 2.28 (Debian 10, RHEL 8, Ubuntu 20.04 and newer; Debian 11 has 2.31): cryptography ships
# its current releases for manylinux_2_28 and newer only (manylinux2014 would hold it at 43.0.x).
GLIBC_MINOR = 28


def platforms(arch: str) -> list[str]:
    """Every manylinux tag a glibc 2.GLIBC_MINOR system takes (pip matches --platform exactly)."""
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(GLIBC_MINOR, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags
# Pure Python where the package has a fallback and speed does not matter to the daemon:
# PyYAML parses one small config file; charset_normalizer only guesses an HTTP body's encoding
# (requests); multidict holds a few HTTP/2 headers per call.
PURE = ("pyyaml", "charset-normalizer", "multidict")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_name(python: str, arch: str) -> str:
    return f"cp{python.replace('.', '')}-{arch}"


def project_requirements() -> list[str]:
    try:
        import tomllib
    except ImportError:  # build tools run on the venv's 3.11; keep a clear message elsewhere
        sys.exit("build: run the build with Python 3.11 or newer (`make pyz`)")
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def pip_download(dest: Path, args: list[str], python: str, arch: str | None) -> None:
    if arch is None:  # a pure wheel: any platform
        where = ["--platform", "any", "--implementation", "py", "--abi", "none"]
    else:
        abi = "cp" + python.replace(".", "")
        where = [*(f"--platform={tag}" for tag in platforms(arch)), "--implementation", "cp",
                 "--abi", abi, "--abi", "abi3", "--abi", "none"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", PATCH_LEVEL.get(python, python), *where, "-d", str(dest), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "Location 'file:" not in line]
        raise RuntimeError(f"pip download for python {python} {arch or 'any'} failed:\n" + "\n".join(errors))


def marker_dependencies(dest: Path, python: str) -> list[str]:
    """Requirements of the wheels in `dest` that apply on `python` but were not downloaded.

    pip evaluates environment markers against the interpreter it runs on, not --python-version:
    run from 3.11, it leaves out `typing-extensions; python_version < "3.11"` (multidict's) for the
    3.9 and 3.10 targets. Each wheel's own Requires-Dist is evaluated here for the target."""
    import zipfile

    from packaging.requirements import Requirement

    full = PATCH_LEVEL.get(python, python + ".0")
    env = {"python_version": python, "python_full_version": full, "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
           "platform_system": "Linux", "extra": ""}
    have = {wheel_name(p.name)[0] for p in dest.iterdir()}
    wanted = []
    for wheel in dest.iterdir():
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode("utf-8", "replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or canonical(req.name) in have or not req.marker.evaluate(env):
                continue
            wanted.append(f"{req.name}{req.specifier}")
    return sorted(set(wanted))


def wheel_name(filename: str) -> tuple[str, str]:
    """'PyYAML-6.0.2-cp39-….whl' -> ('pyyaml', '6.0.2')."""
    name, version = filename.split("-")[:2]
    return canonical(name), version


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock() -> dict:
    """Resolve every target; write and return the lock."""
    requirements = project_requirements()
    pins: dict[str, str] = {}
    targets: dict[str, list[str]] = {}
    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            for python in PYTHONS:
                dest = Path(tmp) / target_name(python, arch)
                constraints = Path(tmp) / "constraints.txt"
                constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
                pip_download(dest, ["-c", str(constraints), *requirements], python, arch)
                while extra := marker_dependencies(dest, python):
                    pip_download(dest, ["-c", str(constraints), *extra], python, arch)
                files = sorted(p.name for p in dest.iterdir())
                CACHE.mkdir(parents=True, exist_ok=True)
                for name in files:
                    pins.setdefault(*wheel_name(name))
                    hashes[name] = sha256(dest / name)
                    shutil.copyfile(dest / name, CACHE / name)  # `fetch` finds it there
                targets[target_name(python, arch)] = files
        pure: dict[str, str] = {}
        for name in PURE:
            if name not in pins:
                continue
            dest = Path(tmp) / "pure"
            try:
                pip_download(dest, ["--no-deps", f"{name}=={pins[name]}"], PYTHONS[0], None)
            except RuntimeError:
                continue  # no pure wheel published: build/stage.py strips the binary one
            (found,) = [p for p in dest.iterdir() if wheel_name(p.name)[0] == name]
            pure[name] = found.name
            hashes[found.name] = sha256(found)
            shutil.copyfile(found, CACHE / found.name)
    for files in targets.values():
        files[:] = sorted(pure.get(wheel_name(f)[0], f) for f in files)
    data = {
        "comment": "written by `python build/wheels.py lock` from pyproject's dependencies; do not edit",
        "requirements": requirements,
        "pure": sorted(PURE),
        "glibc": f"2.{GLIBC_MINOR}",
        "pins": dict(sorted(pins.items())),
        "targets": targets,
        "sha256": dict(sorted(hashes.items())),
    }
    LOCK.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return data


def load_lock() -> dict:
    """The lock, re-resolved first when pyproject's dependencies changed since it was written."""
    try:
        data = json.loads(LOCK.read_text())
    except FileNotFoundError:
        data = {}
    if data.get("requirements") != project_requirements() or data.get("pure") != sorted(PURE):
        print("build: pyproject's dependencies changed: re-resolving build/pyz-lock.json", file=sys.stderr)
        data = lock()
    return data


def fetch(arch: str) -> Path:
    """Every locked wheel of `arch` in CACHE, each checked against its sha256."""
    data = load_lock()
    CACHE.mkdir(parents=True, exist_ok=True)
    for python in PYTHONS:
        files = data["targets"][target_name(python, arch)]
        missing = [f for f in files if not (CACHE / f).is_file()]
        if missing:
            with tempfile.TemporaryDirectory() as tmp:
                pure = ["{}=={}".format(*wheel_name(f)) for f in missing if f.endswith("-none-any.whl")]
                binary = ["{}=={}".format(*wheel_name(f)) for f in missing if not f.endswith("-none-any.whl")]
                if pure:
                    pip_download(Path(tmp), ["--no-deps", *pure], python, None)
                if binary:
                    pip_download(Path(tmp), ["--no-deps", *binary], python, arch)
                for got in Path(tmp).iterdir():
                    if got.name in missing:
                        os.replace(got, CACHE / got.name)
        for name in files:
            path = CACHE / name
            if not path.is_file():
                sys.exit(f"build: pip did not fetch {name} for python {python} {arch}")
            if sha256(path) != data["sha256"][name]:
                path.unlink()
                sys.exit(f"build: {name} does not match its sha256 in build/pyz-lock.json (removed; retry)")
    return CACHE


if __name__ == "__main__":
    if sys.argv[1:] == ["lock"]:
        lock()
        print(LOCK)
    elif len(sys.argv) == 3 and sys.argv[1] == "fetch" and sys.argv[2] in ARCHS:
        print(fetch(sys.argv[2]))
    else:
        sys.exit(__doc__)
