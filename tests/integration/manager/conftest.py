"""Fixtures for the Manager link: a development PKI, a real reference Manager, daemon configs and logs."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from daemon_manager import pki
from daemon_manager.server import ThreadedManager
from daemon_manager.store import Store
from tests.helpers import base_config, write_config


def free_port() -> int:
    """A port the OS just handed out; for a Manager that must come back on the same address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Manager:
    """A restartable in-process reference Manager (same port after a restart)."""

    def __init__(self, db: str, tls_dir: str | os.PathLike[str]) -> None:
        self.db = db
        self.tls_dir = str(tls_dir)
        self.port = 0
        self._running: ThreadedManager | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> str:
        listen = f"127.0.0.1:{port if port is not None else self.port}"
        self._running = ThreadedManager(self.db, self.tls_dir, listen)
        address = self._running.start()
        self.port = int(address.rsplit(":", 1)[1])
        return address

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop()
            self._running = None

    def store(self) -> Store:
        return Store(self.db)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    pki.init(directory, ["node-a", "node-b"])
    return directory


def load_ca(pki_dir: Path) -> pki.CertificateAuthority:
    return pki.CertificateAuthority.load(pki_dir / "ca.crt", pki_dir / "ca.key")


@pytest.fixture
def manager(tmp_path, pki_dir):
    mgr = Manager(str(tmp_path / "manager.db"), pki_dir)
    mgr.start(0)
    yield mgr
    mgr.stop()


def daemon_config(work: Path, address: str, tls: dict[str, str], **sections: Any) -> str:
    """A daemon config for `work` that reports to `address` every second."""
    manager = {"address": address, "tls": tls, "heartbeat_interval": "1s", "reconnect_interval": "100ms",
               "reconnect_max": "1s", "timeout": "5s"}
    manager.update(sections.pop("manager", {}))
    daemon = {"report_interval": "1s"}
    daemon.update(sections.pop("daemon", {}))
    cfg = base_config(work, daemon=daemon, manager=manager, **sections)
    work.mkdir(parents=True, exist_ok=True)
    return write_config(work / "daemon.yaml", cfg)


def node_tls(pki_dir: Path, node: str = "node-a") -> dict[str, str]:
    return {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / f"{node}.crt"),
            "key_file": str(pki_dir / f"{node}.key")}


def log_records(work: Path) -> list[dict[str, Any]]:
    path = work / "daemon.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def logged_codes(work: Path) -> list[str]:
    return [r.get("code", "") for r in log_records(work)]


def file_reports(work: Path) -> list[dict[str, Any]]:
    path = work / "reports.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
