"""Shared by the Manager-link benchmarks: a dev PKI, the reference Manager as a subprocess, a real report."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def say(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


class ManagerProcess:
    """`python -m daemon_manager serve` on a free loopback port (or the given HOST:PORT)."""

    def __init__(self, db: str, tls_dir: str, listen: str = "127.0.0.1:0") -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "daemon_manager", "serve", "--listen", listen, "--db", db,
               "--tls-dir", tls_dir]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=str(ROOT))
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("the Manager did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def sample_report() -> dict[str, Any]:
    """One report built from this machine's real collectors (as the engine builds it)."""
    from daemon_app import config
    from daemon_app.collection import CollectorRunner
    from daemon_app.collectors import BUILTIN_COLLECTORS
    from daemon_app.metrics import rfc3339

    cfg = config.validate({})
    calls = [(name, cls().collect, cfg.collector(name), 5.0) for name, cls in BUILTIN_COLLECTORS.items()]
    metrics = {}
    for outcome in CollectorRunner().run(calls):
        for m in outcome.metrics:
            metrics[m.name] = m.to_dict()
    return {"node_id": "bench", "timestamp": rfc3339(), "metrics": metrics, "agent_status": None, "logs": []}


class EngineStandIn:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def run_soon(self, fn: Any) -> None:
        fn()

    def adopt_node_id(self, node_id: str) -> None:
        self.node_id = node_id

    def dispatch_command(self, command: dict[str, Any]) -> bool:
        return True


def make_link(work: str, address: str, pki_dir: str, node: str, **manager: Any) -> Any:
    from daemon_app import config
    from daemon_app.comm.link import ManagerLink

    mcfg = {"address": address, "heartbeat_interval": "60s", "reconnect_interval": "50ms",
            "reconnect_max": "500ms",
            "tls": {"ca_file": f"{pki_dir}/ca.crt", "cert_file": f"{pki_dir}/{node}.crt",
                    "key_file": f"{pki_dir}/{node}.key"}}
    mcfg.update(manager)
    cfg = config.validate({"daemon": {"work_dir": work, "log_file": ""}, "manager": mcfg,
                           "agent": {"enabled": False}})
    return ManagerLink(cfg, EngineStandIn(f"bench-{node}"), agent=lambda: None, config_hashes=lambda: None)


def workspace() -> str:
    return tempfile.mkdtemp(prefix="bench-mgr-")


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.001)
