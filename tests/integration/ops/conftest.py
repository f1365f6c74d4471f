"""Fixtures for the ops integration tests: real `daemon run` processes in short tmp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, base_config, daemon_cmd, short_tmpdir, wait_until, write_config


@pytest.fixture
def ops_dir() -> Iterator[Path]:
    path = Path(short_tmpdir("opsi"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def stand_alone(work: Path, **sections: Any) -> dict[str, Any]:
    """A stand-alone config (no Manager, no Agent) whose first report comes right after start."""
    return base_config(work, **sections)


def write(work: Path, raw: dict[str, Any], name: str = "daemon.yaml") -> str:
    return write_config(work / name, raw)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m daemon_app ARGS` as a real process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(daemon_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(ROOT))


def reports(work: Path) -> list[str]:
    try:
        return (work / "reports.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []


def log_text(work: Path) -> str:
    try:
        return (work / "daemon.log").read_text()
    except FileNotFoundError:
        return ""


def wait_ready(work: Path, timeout: float = 20) -> None:
    """Ready means signal handlers are in place: the first report is written after READY."""
    wait_until(lambda: reports(work), timeout=timeout, what="the first report")


def plugin(work: Path, name: str, body: str) -> None:
    """Drop a loose plugin module into <work_dir>/plugins (the daemon loads it at start)."""
    pdir = work / "plugins"
    pdir.mkdir(exist_ok=True)
    header = ("import os, time\nfrom daemon_app.hookspecs import hookimpl\n"
              "from daemon_app.metrics import Metrics\n")
    (pdir / f"{name}.py").write_text(header + body)
