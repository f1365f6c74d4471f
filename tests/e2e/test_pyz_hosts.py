"""The pyz on every interpreter and architecture it is built for, and a clear refusal elsewhere.

Interpreters: the pyenv builds on this machine (/root/.pyenv/versions/3.X.*), each without any of
our dependencies; the distributions' own python3 is tests/compat's job (`make compat`).
Architectures: every shared object in dist/daemon-aarch64.pyz must be an aarch64 ELF file (it is
inspected, not run: this machine is x86_64), and the aarch64 file refuses to start here.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.pyz_smoke

PYENV = Path("/root/.pyenv/versions")
SUPPORTED = ("3.9", "3.10", "3.11", "3.12", "3.13")
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}  # e_machine: EM_X86_64, EM_AARCH64
IMPORT_ALL = ROOT / "tests" / "compat" / "import_all.py"


def pyenv_python(minor: str) -> str | None:
    found = sorted(glob.glob(str(PYENV / f"{minor}.*" / "bin" / "python")))
    return found[-1] if found else None


def arch_pyz(arch: str) -> Path:
    path = ROOT / "dist" / f"daemon-{arch}.pyz"
    if not path.exists():
        pytest.skip(f"{path.name} is missing: `make pyz` builds both architectures")
    return path


def clean_env(shiv_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_", "SHIV_"))}
    return {**env, "SHIV_ROOT": str(shiv_root), **extra}


@pytest.mark.parametrize("minor", SUPPORTED)
def test_every_daemon_app_module_imports_and_version_runs_on_python(minor, pyz, shiv_root):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv Python {minor} on this machine")
    assert subprocess.run([python, "-c", "import psutil"], capture_output=True).returncode != 0
    imported = subprocess.run([python, str(pyz), str(IMPORT_ALL)], capture_output=True, text=True,
                              env=clean_env(shiv_root, SHIV_INTERPRETER="1"), timeout=180)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"on Python {minor}." in imported.stdout
    info = subprocess.run([python, str(pyz), "version", "--format", "json"], capture_output=True, text=True,
                          env=clean_env(shiv_root), timeout=120)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["python"].startswith(minor + ".")


@pytest.mark.parametrize("minor", ["2.7", "3.6", "3.8"])
def test_an_unsupported_python_gets_one_line_saying_what_the_pyz_needs(minor, pyz, tmp_path):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv Python {minor} on this machine")
    shiv_root = tmp_path / "shiv"
    shiv_root.mkdir()
    result = subprocess.run([python, str(pyz), "run"], capture_output=True, text=True,
                            env=clean_env(shiv_root), timeout=60)
    assert result.returncode == 69 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("daemon.pyz: this build runs on CPython 3.9 to 3.13 on ")
    assert f" {minor} on " in result.stderr
    assert not any(shiv_root.iterdir()), "nothing may be extracted for a host the pyz cannot run on"


def test_the_other_architectures_pyz_refuses_this_machine_in_one_line(tmp_path):
    other = "aarch64" if platform.machine() == "x86_64" else "x86_64"
    result = subprocess.run([sys.executable, str(arch_pyz(other)), "version"],
                            capture_output=True, text=True, env=clean_env(tmp_path), timeout=60)
    assert result.returncode == 69
    assert result.stderr == (f"daemon.pyz: this build runs on CPython 3.9 to 3.13 on {other} Linux; "
                             f"this host has cpython {platform.python_version_tuple()[0]}."
                             f"{platform.python_version_tuple()[1]} on {platform.machine()}\n")


def elf_machine(data: bytes) -> int | None:
    """e_machine of an ELF file, None when `data` is not ELF."""
    if data[:4] != b"\x7fELF":
        return None
    endian = "<" if data[5] == 1 else ">"
    return int(struct.unpack(endian + "H", data[18:20])[0])


@pytest.mark.parametrize("arch", sorted(ELF_MACHINE))
def test_every_binary_in_an_architectures_pyz_is_built_for_that_architecture(arch):
    found: dict[str, int] = {}
    with zipfile.ZipFile(arch_pyz(arch)) as zf:
        for info in zf.infolist():
            with zf.open(info) as fh:
                head = fh.read(20)
            machine = elf_machine(head)
            if machine is not None or info.filename.endswith(".so") or ".so." in info.filename:
                found[info.filename] = machine if machine is not None else -1
        build = json.loads(zf.read("site-packages/daemon_app/_build.json"))
    assert build["arch"] == arch
    assert found, "an architecture's pyz without any binary: the inspection would prove nothing"
    wrong = {name: m for name, m in found.items() if m != ELF_MACHINE[arch]}
    assert not wrong, f"not {arch} binaries in daemon-{arch}.pyz: {wrong}"
    # The stable-ABI and pure-Python choices hold: per-interpreter builds only under _interp/.
    shared = [n for n in found if not n.startswith("_interp/")]
    assert not [n for n in shared if ".cpython-3" in n], shared
