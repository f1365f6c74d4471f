"""Fixtures for the ops unit tests: a stand-alone Engine in this process, in a short tmp dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_app import config, plugins
from daemon_app.engine import Engine
from daemon_app.systemd import Notifier
from tests.helpers import base_config, short_tmpdir, write_config


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """Short (AF_UNIX-safe) and removed afterwards."""
    path = Path(short_tmpdir("ops"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_engine(work_dir: Path):
    """make_engine(**sections) -> an Engine built from a real config file in work_dir (not started)."""
    made: list[Engine] = []

    def make(notifier: Notifier | None = None, **sections) -> Engine:
        raw = base_config(work_dir, **sections)
        raw["daemon"]["log_file"] = ""
        path = write_config(work_dir / "daemon.yaml", raw)
        cfg = config.load(path)
        engine = Engine(cfg, plugins.load_all(cfg), notifier=notifier or Notifier(""))
        made.append(engine)
        return engine

    yield make
    for engine in made:
        if engine.state == "running":
            engine.shutdown()
