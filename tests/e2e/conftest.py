"""Fixtures for the pyz smoke tests: the built dist/daemon.pyz and a private extraction root."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PYZ = ROOT / "dist" / "daemon.pyz"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def build_pyz(out: Path, *, epoch: str | None = None) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out)}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    subprocess.run([str(ROOT / "build" / "shiv.sh")], check=True, env=env, cwd=ROOT, timeout=300,
                   stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def pyz() -> Path:
    """dist/daemon.pyz, built first when it is missing (`make pyz` builds it in CI)."""
    if not PYZ.exists():
        if importlib.util.find_spec("shiv") is None:
            pytest.skip("dist/daemon.pyz is missing and shiv is not installed to build it (make venv)")
        build_pyz(PYZ)
    return PYZ


@pytest.fixture(scope="session")
def shiv_root(tmp_path_factory) -> Path:
    """One extraction root for the session, so the pyz is extracted once, never into ~/.shiv."""
    return tmp_path_factory.mktemp("shiv")


@pytest.fixture
def run_pyz(pyz, shiv_root):
    """run_pyz(*args, python=...) runs the pyz like an operator does: `python3 daemon.pyz ...`."""

    def run(*args: str, python: str = sys.executable, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_", "SHIV_"))}
        clean.update({"SHIV_ROOT": str(shiv_root), **(env or {})})
        return subprocess.run([python, str(pyz), *args], capture_output=True, text=True, env=clean,
                              timeout=timeout, cwd="/")

    return run
