"""Fixtures shared by every test area. Area-specific fixtures live in that area's own conftest.py."""

from __future__ import annotations

import pytest

from tests.helpers import DaemonProcess


@pytest.fixture
def daemon_processes():
    """Start daemons with `daemon_processes(config_path)`; each is killed at teardown if still alive."""
    started: list[DaemonProcess] = []

    def start(config_path: str, **kwargs) -> DaemonProcess:
        proc = DaemonProcess(config_path, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
