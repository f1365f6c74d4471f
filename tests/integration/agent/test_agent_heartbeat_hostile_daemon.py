"""A hostile peer against the heartbeat socket of a real daemon (`python -m daemon_app run`) that
supervises a real Agent: garbage, over-long lines, deep nesting, endless lines, slow partial lines
and 1,000 connections at once. Afterwards the Agent's heartbeats still register and the daemon's RSS
has not grown by more than a few MB."""

from __future__ import annotations

import os
import socket
import time

import psutil
import pytest

from daemon_app import control
from tests.helpers import base_config, deep_merge, wait_until, write_config
from tests.integration.agent.conftest import FAST_AGENT
from tests.integration.agent.test_agent_daemon import agents_on

pytestmark = pytest.mark.timeout(120)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)  # blocking: waits for room in the listen backlog instead of failing with EAGAIN
    s.settimeout(10)
    return s


def agent_status(control_path: str) -> dict:
    """The agent section of `daemon status` ({} while the daemon is still starting)."""
    try:
        return control.request(control_path, "status", timeout=10).get("agent") or {}
    except control.ControlError:
        return {}


def send_quietly(path: str, payload: bytes) -> None:
    """Send one hostile payload; the daemon may hang up at any point, which is fine."""
    s = connect(path)
    try:
        view = memoryview(payload)
        while view:
            view = view[s.send(view[:1 << 20]):]
        s.settimeout(10)
        s.recv(1)
    except OSError:
        pass
    finally:
        s.close()


def daemon_rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_a_hostile_peer_neither_grows_the_daemon_nor_locks_out_the_agent(harness, daemon_processes):
    work = harness.dir
    agent = deep_merge(FAST_AGENT, {"socket_path": os.path.join(work, "agent.sock"),
                                    "work_dir": os.path.join(work, "agent"),
                                    "health_check": {"heartbeat_timeout": "10s"}})
    cfg_path = write_config(os.path.join(work, "daemon.yaml"),
                            base_config(work, agent=agent, daemon={"report_interval": "1h",
                                                                   "log_level": "info"}))
    sock_path = agent["socket_path"]
    control_path = os.path.join(work, "control.sock")
    daemon = daemon_processes(cfg_path)
    try:
        wait_until(lambda: agent_status(control_path).get("heartbeats_received", 0) >= 3,
                   30, what="the Agent's heartbeats registering")
        agent_pid = harness.track(agent_status(control_path)["pid"])
        # Warm up the receiver's code paths once, so what is measured after is growth, not first use.
        send_quietly(sock_path, b"{}\n")
        rss_before = daemon_rss(daemon.pid)

        hostile = [
            b"\x00\xff\xfe garbage \x80\x81\n",
            b"x" * (1024 * 1024) + b"\n",  # 1 MiB line
            b"[" * 60000 + b"\n",  # deep nesting under the old 64 KiB cap
            b"[" * 60000 + b"z" * (32 * 1024 * 1024),  # deep, then an endless line
            b'{"pid": 1' + b"0" * 400 + b"}\n",
            b'{"pid": 1, "timestamp": "2026-01-01T00:00:00Z", "version": "1", "status": "x", "cpu": NaN}\n',
            b'{"a": "' + b'\\"' * 30000 + b"[" * 100 + b"\n",  # escapes that would make a regex backtrack
        ]
        for payload in hostile:
            send_quietly(sock_path, payload)

        # Slow partial lines: each connection trickles one line and never ends it.
        slow = [connect(sock_path) for _ in range(20)]
        for s in slow:
            s.sendall(b'{"pid": 1, "timestamp": "2026-')

        # 1,000 connections at once, each holding a partial line.
        flood = []
        for _ in range(1000):
            c = connect(sock_path)
            flood.append(c)
            try:
                c.sendall(b'{"pid": 1, "partial": "' + b"y" * 1000)
            except OSError:
                pass  # already evicted to make room for the next one: the cap at work
        # The daemon hangs up on every one of them on its own: evicted at the cap or stalled.
        deadline = time.monotonic() + 60
        for c in flood + slow:
            c.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert c.recv(1) == b"", "the daemon wrote to a heartbeat peer"
            except ConnectionResetError:
                pass
            c.close()

        counters = agent_status(control_path)["socket_counters"]
        assert counters["accepted"] >= len(flood)
        assert counters["invalid"] >= len(hostile)
        assert counters["stalled"] >= 1
        assert counters["evicted"] + counters["refused"] + counters["stalled"] >= len(flood)

        # The real Agent is still heard, still the same process, still RUNNING.
        seen = agent_status(control_path)["heartbeats_received"]
        wait_until(lambda: agent_status(control_path)["heartbeats_received"] >= seen + 3, 15,
                   what="the Agent's heartbeats after the attack")
        status = agent_status(control_path)
        assert status["state"] == "RUNNING" and status["pid"] == agent_pid
        grown = daemon_rss(daemon.pid) - rss_before
        print(f"daemon RSS {rss_before / 2**20:.1f} MB, grew {grown / 2**20:.2f} MB; counters {counters}")
        assert grown < 6 * 1024 * 1024, f"the daemon's RSS grew by {grown / 2**20:.1f} MB"
    finally:
        for pid in agents_on(sock_path):
            harness.track(pid)
