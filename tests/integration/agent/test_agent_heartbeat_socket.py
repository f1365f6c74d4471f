"""The heartbeat socket under hostile input: garbage, huge lines, bad JSON, wrong types, floods, strangers."""

from __future__ import annotations

import grp
import json
import os
import socket
import stat

import psutil
import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)

GOOD = {"pid": 1, "timestamp": "2026-01-01T00:00:00Z", "version": "1.0.0", "status": "running",
        "cpu": 1.5, "memory": 1024}


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def closed_by_peer(s: socket.socket) -> bool:
    """True once the daemon has closed its end (EOF or reset)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def send_and_expect_close(path: str, payload: bytes) -> None:
    s = connect(path)
    try:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed while we were still sending: the huge-line case
        assert closed_by_peer(s), f"connection not closed after {payload[:40]!r}"
    finally:
        s.close()


def test_hostile_lines_are_counted_and_dropped_while_the_agent_still_gets_through(harness):
    sup, _ = harness.supervisor()
    assert sup.wait_for_heartbeat(None, 10)
    harness.track(sup.pid)
    path = sup.cfg.agent.socket_path
    rss_before = psutil.Process().memory_info().rss
    bad_lines = [
        b"\x00\xff\xfe garbage \x80\x81\n",
        b"x" * (1024 * 1024) + b"\n",  # 1 MiB line
        b"{not json\n",
        b"[1, 2, 3]\n",
        json.dumps(dict(GOOD, pid="12")).encode() + b"\n",
        json.dumps(dict(GOOD, pid=True)).encode() + b"\n",
        json.dumps(dict(GOOD, version=5)).encode() + b"\n",
        json.dumps(dict(GOOD, memory=-1)).encode() + b"\n",
        json.dumps(dict(GOOD, cpu="high")).encode() + b"\n",
        json.dumps(dict(GOOD, timestamp="yesterday")).encode() + b"\n",
        json.dumps({k: v for k, v in GOOD.items() if k != "status"}).encode() + b"\n",
    ]
    for payload in bad_lines:
        send_and_expect_close(path, payload)
    wait_until(lambda: sup.agent_status()["heartbeats_invalid"] == len(bad_lines), 5,
               what=f"{len(bad_lines)} invalid lines counted")
    # A well-formed heartbeat from a process that is not the Agent cannot pose as it.
    s = connect(path)
    s.sendall(json.dumps(dict(GOOD, pid=sup.pid, version="6.6.6")).encode() + b"\n")
    wait_until(lambda: sup.status()["heartbeats_foreign"] == 1, 5, what="foreign heartbeat counted")
    s.close()
    assert sup.current_version() == "1.0.0"
    # 1,000 connections at once, each holding a partial line: capped, the Agent is never evicted.
    flood = []
    for _ in range(1000):
        try:
            c = connect(path)
            c.sendall(b'{"pid": 1, "partial": "' + b"y" * 1000)
            flood.append(c)
        except OSError:
            pass  # the backlog may refuse some: that is the cap working
    server = sup._server
    assert len(flood) > 2 * server.max_connections
    turned_away = len(flood) - server.max_connections
    wait_until(lambda: server.counters.evicted + server.counters.refused >= turned_away, 15,
               what="the flood processed")
    assert server.connections <= server.max_connections
    assert sum(len(c.buf) for c in list(server._conns.values())) <= server.max_connections * server.max_line
    assert sup.wait_for_heartbeat("1.0.0", 5), "the real Agent's heartbeats stopped getting through"
    for c in flood:
        c.close()
    assert sup.state == "RUNNING"
    assert sup.wait_for_heartbeat("1.0.0", 5)
    grown = psutil.Process().memory_info().rss - rss_before
    assert grown < 30 * 1024 * 1024, f"RSS grew by {grown} bytes"


def test_socket_is_created_with_the_configured_mode_and_group(harness):
    group = grp.getgrgid(os.getgid()).gr_name
    sup, _ = harness.supervisor(socket_mode="0660", socket_group=group)
    st = os.stat(sup.cfg.agent.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    assert not [n for n in os.listdir(harness.dir) if n.startswith(".hb")]  # no leftover bind dir


def test_a_regular_file_at_the_socket_path_is_not_replaced(harness):
    from daemon_app.errors import AgentStartError

    os.makedirs(harness.dir, exist_ok=True)
    path = os.path.join(harness.dir, "agent.sock")
    with open(path, "w") as fh:
        fh.write("precious")
    sup, _ = harness.supervisor(start=False)
    with pytest.raises(AgentStartError, match="D3001 .*not a socket"):
        sup.start()
    with open(path) as fh:
        assert fh.read() == "precious"


def _connect_as(path: str, uid: int, gid: int) -> int:
    """Fork, drop to uid/gid, connect, send a heartbeat; exit 0 if the daemon hung up, 1 if it kept
    the connection, 2 if connect() itself was refused (file permissions)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 3
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect(path)
            except PermissionError:
                os._exit(2)
            try:
                s.sendall(json.dumps(GOOD).encode() + b"\n")
                code = 0 if closed_by_peer(s) else 1
            except (BrokenPipeError, ConnectionResetError):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_peer_credentials_reject_strangers_and_admit_the_socket_group(harness):
    nogroup = grp.getgrnam("nogroup").gr_gid
    sup, _ = harness.supervisor(socket_mode="0666", socket_group="nogroup")
    path = sup.cfg.agent.socket_path
    os.chmod(harness.dir, 0o755)
    assert _connect_as(path, 4321, 4321) == 0  # reached the socket, then was hung up on
    wait_until(lambda: sup.status()["socket_counters"]["rejected"] == 1, 5, what="rejection counted")
    assert _connect_as(path, 4321, nogroup) == 1  # in the socket group: kept
    assert sup.status()["socket_counters"]["rejected"] == 1
    wait_until(lambda: sup.status()["heartbeats_foreign"] == 1, 5, what="its heartbeat seen as foreign")


def test_a_superseded_receiver_does_not_unlink_its_successors_socket(harness):
    from daemon_app.agent.heartbeat import HeartbeatServer

    os.makedirs(harness.dir, exist_ok=True)
    path = os.path.join(harness.dir, "hb.sock")
    got = []
    old = HeartbeatServer(path, 0o600, "", got.append, lambda pid: False)
    new = HeartbeatServer(path, 0o600, "", got.append, lambda pid: False)
    old.start()
    new.start()
    try:
        old.stop()
        s = connect(path)
        s.sendall(json.dumps(GOOD).encode() + b"\n")
        wait_until(lambda: new.counters.lines == 1, 5, what="the line at the new receiver")
        s.close()
    finally:
        new.stop()
    assert not os.path.exists(path) and len(got) == 1
