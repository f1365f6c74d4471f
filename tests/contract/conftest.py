"""The contract suite: `daemon.pyz run` against a Manager written in the test from the proto alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from daemon_manager import pki
from tests.contract.independent_manager import IndependentManager
from tests.e2e.conftest import pyz, shiv_root  # noqa: F401 - the built pyz and its extraction root
from tests.helpers import DaemonProcess, base_config, write_config


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    pki.init(directory, ["node-a"])
    return directory


@pytest.fixture
def independent(pki_dir):
    manager = IndependentManager(pki_dir)
    yield manager
    manager.stop()


@pytest.fixture
def run_daemon(pyz, shiv_root, pki_dir, tmp_path):  # noqa: F811
    """run_daemon(address, agent=None, **manager_settings): `daemon.pyz -c CONFIG run` reporting every
    0.5 s; `agent` is the config's agent section (none supervised by default)."""
    started: list[DaemonProcess] = []

    def start(address: str, agent: dict | None = None, **manager: object) -> DaemonProcess:
        work = tmp_path / "d"
        settings = {"address": address, "heartbeat_interval": "1s", "reconnect_interval": "200ms",
                    "reconnect_max": "1s", "timeout": "5s",
                    "tls": {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / "node-a.crt"),
                            "key_file": str(pki_dir / "node-a.key")}}
        settings["tls"].update(manager.pop("tls", {}))  # type: ignore[attr-defined]
        settings.update(manager)
        cfg = base_config(work, daemon={"report_interval": "500ms"}, manager=settings, agent=agent or {})
        work.mkdir(parents=True, exist_ok=True)
        path = write_config(work / "daemon.yaml", cfg)
        env = {"SHIV_ROOT": str(shiv_root), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        proc = DaemonProcess(path, cmd=[sys.executable, str(pyz), "-c", path, "run"], extra_env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
