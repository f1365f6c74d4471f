"""SIGTERM with reports still queued and the Manager up: exit 0, the queue delivered, the Agent alive."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.helpers import ROOT, wait_until
from tests.integration.manager.conftest import Manager, daemon_config, file_reports, free_port, node_tls


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(90)
def test_sigterm_with_a_backlog_delivers_it_exits_0_and_leaves_the_agent_running(
        pki_dir, tmp_path, daemon_processes):
    work = tmp_path / "d"
    port = free_port()
    sock_dir = tmp_path / "s"
    sock_dir.mkdir()
    cfg = daemon_config(
        work, f"127.0.0.1:{port}", node_tls(pki_dir),
        daemon={"report_interval": "100ms", "shutdown_timeout": "30s"},
        # Small, paced batches: the backlog is still draining when SIGTERM arrives.
        manager={"outbox": {"batch_size": 2, "drain_interval": "200ms"}},
        agent={"enabled": True, "binary_path": sys.executable,
               "args": [str(ROOT / "examples" / "sample_agent.py"), "--interval", "0.5"],
               "socket_path": str(sock_dir / "a.sock"), "work_dir": str(tmp_path / "agent")},
    )
    daemon = daemon_processes(cfg)
    agent_pid = 0
    manager = Manager(str(tmp_path / "manager.db"), pki_dir)
    try:
        # The Manager is down at first: reports pile up in the outbox.
        wait_until(lambda: len(file_reports(work)) >= 20, timeout=30, what="a backlog of 20 reports")
        agent_pid = int(json.loads((work / "agent.pid").read_text())["pid"])
        manager.start(port)
        store = manager.store()
        node_id = (work / "node_id").read_text().strip()
        wait_until(lambda: store.node(node_id), timeout=20, what="the daemon to register")

        backlog = len(file_reports(work)) - len(store.reports(node_id))
        assert backlog > 5, "the backlog drained before SIGTERM; the test would prove nothing"
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(35) == 0

        written = {r["timestamp"] for r in file_reports(work)}
        stored = store.reports(node_id)
        assert {r["timestamp"] for r in stored} == written, "a queued report was not delivered"
        seqs = sorted(r["seq"] for r in stored)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert _alive(agent_pid), "stopping the daemon stopped the Agent"
    finally:
        manager.stop()
        if agent_pid and _alive(agent_pid):
            os.killpg(agent_pid, signal.SIGKILL)
