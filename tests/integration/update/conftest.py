"""Fixtures for the update integration tests: a trusted key, an installed Agent file, a real
mutual-TLS package server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon_app import config as config_mod
from daemon_app.update.flow import Updater, UpdateRequest
from daemon_app.update.state import UpdateState
from tests.update_support import (
    PackageServer,
    TestPKI,
    new_ed25519,
    public_pem,
    update_config,
    write_release,
)

OLD_AGENT = b"#!/bin/sh\necho agent 1.0.0\n"


@dataclass
class UpdateEnv:
    work: Path
    pki: TestPKI
    key: Any
    cfg: config_mod.Config
    releases: int = 0
    states: list[tuple[str, float, str]] = field(default_factory=list)

    def reconfigure(self, **update: Any) -> config_mod.Config:
        self.cfg = update_config(self.work, self.pki, **update)
        return self.cfg

    def release(self, version: str, package: bytes | None = None, *, component: str = "agent",
                key: Any = None, **kw: Any) -> Path:
        self.releases += 1
        package = package if package is not None else f"agent {version}\n".encode() * 100
        return write_release(self.work / "releases" / f"r{self.releases}", key or self.key, component,
                             version, package, **kw)

    def request(self, release: Path, *, component: str = "agent", url: str = "") -> UpdateRequest:
        return UpdateRequest.from_dir(component, str(release), url=url,
                                      file="" if url else str(release / "package"))

    def progress(self, state: str, percent: float = 0.0, message: str = "", result: Any = None) -> None:
        self.states.append((state, percent, message))

    def updater(self, **kw: Any) -> Updater:
        return Updater(self.cfg, **kw)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def env(tmp_path: Path, pki: TestPKI) -> UpdateEnv:
    """Agent 1.0.0 installed at <work>/bin/agent (floor 1.0.0), one trusted Ed25519 key."""
    key = new_ed25519()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "update.pub").write_bytes(public_pem(key))
    (tmp_path / "bin").mkdir()
    agent = tmp_path / "bin" / "agent"
    agent.write_bytes(OLD_AGENT)
    os.chmod(agent, 0o755)
    cfg = update_config(tmp_path, pki)
    UpdateState(str(tmp_path)).record("agent", "install", "1.0.0", raise_floor=True)
    return UpdateEnv(tmp_path, pki, key, cfg)


@pytest.fixture
def server(pki: TestPKI):
    srv = PackageServer(pki)
    yield srv
    srv.close()
