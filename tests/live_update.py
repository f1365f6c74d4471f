"""Support for updates end to end: a real Manager (gRPC + package server, mutual TLS), a real daemon
with the sample Agent, releases signed in the test, and the `daemon-manager` CLI as a subprocess.
Shared by tests/integration/update, tests/e2e and bench/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon_manager import pki
from daemon_manager.server import ThreadedManager
from daemon_manager.store import Store
from tests.helpers import ROOT, base_config, short_tmpdir, wait_until, write_config
from tests.update_support import new_ed25519, private_pem, public_pem

SAMPLE_AGENT = ROOT / "examples" / "sample_agent.py"
NODE = "node-a"
FINAL = ("completed", "rolled_back", "failed")

# Faults an Agent build can carry (a line run at import, right after VERSION).
AGENT_FAULTS = {
    "exit_at_start": 'sys.argv += ["--exit-at-start", "3"]',
    "no_heartbeat": 'sys.argv += ["--no-heartbeat"]',
}


def sample_agent(version: str, fault: str | None = None) -> bytes:
    """examples/sample_agent.py with its VERSION set to `version` (the sed an Agent team would run),
    run by this interpreter, optionally with a fault."""
    text = SAMPLE_AGENT.read_text()
    text = re.sub(r"^#!.*$", f"#!{sys.executable}", text, count=1, flags=re.M)
    line = f'VERSION = "{version}"'
    if fault is not None:
        line += "\n" + AGENT_FAULTS[fault]
    text, n = re.subn(r'^VERSION = "[^"]*"', line, text, count=1, flags=re.M)
    assert n == 1, "examples/sample_agent.py lost its VERSION line"
    return text.encode()


@dataclass
class Site:
    """One Manager and one node's files: PKI, signing key, work dir, config."""

    dir: Path
    pki_dir: Path
    key_file: Path
    db: str
    manager: ThreadedManager
    work: Path

    @property
    def address(self) -> str:
        return self.manager.address

    def store(self) -> Store:
        return Store(self.db)

    def stop(self) -> None:
        self.manager.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- releases ---------------------------------------------------------------------------------

    def release(self, name: str, component: str, version: str, package: bytes) -> tuple[Path, Path]:
        """Write the package and sign it with `daemon-manager release sign`; (package, release dir)."""
        out = self.dir / "releases" / name
        out.mkdir(parents=True, exist_ok=True)
        pkg = out / "package"
        pkg.write_bytes(package)
        manager_cli("release", "sign", "--key", str(self.key_file), "--component", component,
                    "--version", version, "--file", str(pkg), "--expires", "1h", "--out", str(out))
        return pkg, out

    def push_update(self, package: Path, release: Path) -> str:
        """`daemon-manager push-update`; returns the command id."""
        return manager_cli("push-update", "--db", self.db, "--node", NODE, "--file", str(package),
                           "--manifest", str(release)).strip()

    def updates(self) -> list[dict[str, Any]]:
        """`daemon-manager updates --format json`."""
        return json.loads(manager_cli("updates", "--db", self.db, "--node", NODE, "--format", "json"))

    def command(self, command_id: str) -> dict[str, Any]:
        store = self.store()
        try:
            return next(u for u in store.updates(NODE) if u["id"] == command_id)
        finally:
            store.close()

    def wait_final(self, command_id: str, timeout: float = 40.0) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            cmd = self.command(command_id)
            return cmd if cmd["state"] in FINAL and cmd["result"] else None

        return wait_until(final, timeout=timeout, interval=0.1, what=f"command {command_id} to end")

    def node(self) -> dict[str, Any] | None:
        store = self.store()
        try:
            return store.node(NODE)
        finally:
            store.close()

    def agent_version(self) -> str:
        """The Agent version the Manager last heard of (heartbeats carry it)."""
        node = self.node() or {}
        return str((node.get("agent_status") or {}).get("version") or "")

    # --- the node -----------------------------------------------------------------------------------

    def daemon_config(self, *, agent: bool = True, **update: Any) -> str:
        """A config for the node: the Manager, the sample Agent at <work>/bin/agent, updates."""
        w = self.work
        sections: dict[str, Any] = {
            "daemon": {"id": NODE, "report_interval": "500ms", "shutdown_timeout": "10s"},
            "manager": {"address": self.address, "heartbeat_interval": "500ms", "reconnect_interval": "100ms",
                        "reconnect_max": "500ms", "timeout": "5s",
                        "tls": {"ca_file": str(self.pki_dir / "ca.crt"),
                                "cert_file": str(self.pki_dir / f"{NODE}.crt"),
                                "key_file": str(self.pki_dir / f"{NODE}.key")}},
            "update": {"public_key_file": str(self.dir / "update.pub"), "min_free_bytes": 0,
                       "verify_timeout": "8s", "connect_timeout": "5s", "read_timeout": "10s",
                       "download_deadline": "2m", **update},
        }
        if agent:
            sections["agent"] = {"enabled": True, "binary_path": str(w / "bin" / "agent"),
                                 "args": ["--interval", "0.3"], "start_seconds": "500ms",
                                 "stop_timeout": "5s"}
        return write_config(w / "daemon.yaml", base_config(w, **sections))

    def install_agent(self, version: str = "1.0.0") -> Path:
        path = self.work / "bin" / "agent"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample_agent(version))
        os.chmod(path, 0o755)
        return path


def make_site(base: Path) -> Site:
    """A PKI for NODE, an Ed25519 release key (trusted by the node), and a running Manager that
    serves update packages; the node's work dir is short (Unix socket paths)."""
    pki_dir = base / "pki"
    pki.init(pki_dir, [NODE])
    key = new_ed25519()
    key_file = base / "release-key.pem"
    key_file.write_bytes(private_pem(key))
    (base / "update.pub").write_bytes(public_pem(key))
    db = str(base / "manager.db")
    manager = ThreadedManager(db, str(pki_dir), "127.0.0.1:0", files_listen="127.0.0.1:0")
    manager.start()
    return Site(base, pki_dir, key_file, db, manager, Path(short_tmpdir("upd")))


def manager_cli(*args: str, check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "daemon_manager", *args], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if check and proc.returncode != 0:
        raise AssertionError(f"daemon-manager {args[0]} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def agent_pid(work: Path) -> int:
    try:
        return int(json.loads((work / "agent.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return 0


def kill_agent(work: Path) -> None:
    """Tests own the Agent they made: the daemon never stops it on exit."""
    import signal

    pid = agent_pid(work)
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
