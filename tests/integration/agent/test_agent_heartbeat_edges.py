"""Heartbeat receiver edges (issue #10 item 1), on a real HeartbeatServer and real Unix sockets:
deep nesting, streams without a newline, slow partial lines, non-finite and out-of-range numbers."""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from daemon_app.agent.heartbeat import MAX_DEPTH, HeartbeatServer
from tests.helpers import ROOT, short_tmpdir, wait_until
from tests.integration.agent.test_agent_heartbeat_socket import closed_by_peer, connect

pytestmark = pytest.mark.timeout(60)

GOOD = {"pid": 1, "timestamp": "2026-01-01T00:00:00Z", "version": "1.0.0", "status": "running"}


@pytest.fixture
def server():
    work = short_tmpdir("hbe")
    got: list = []
    srv = HeartbeatServer(os.path.join(work, "hb.sock"), 0o600, "", got.append, lambda pid: False,
                          partial_timeout=1.0)
    srv.received = got
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(work, ignore_errors=True)


def stream_until_closed(s: socket.socket, limit: int) -> int:
    """Write chunks without a newline until the daemon hangs up (or `limit` bytes went out)."""
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < limit:
            sent += s.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def good_line(**extra: object) -> bytes:
    return json.dumps(dict(GOOD, **extra)).encode() + b"\n"


def test_deeply_nested_json_is_invalid_closes_the_connection_and_logs_no_error(server, caplog):
    caplog.set_level(logging.DEBUG, logger="daemon_app.agent.heartbeat")
    s = connect(server.path)
    s.sendall(b"[" * 60000 + b"\n")
    assert closed_by_peer(s), "a 60,000-deep line must close its connection"
    s.close()
    wait_until(lambda: server.counters.invalid == 1, 5, what="the deep line counted invalid")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert server.connections == 0
    # The same for a nesting just past the documented limit, hidden inside an otherwise valid object.
    s = connect(server.path)
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    s.sendall(good_line()[:-2] + f', "x": {deep}}}\n'.encode())
    assert closed_by_peer(s)
    s.close()
    # ... while brackets inside strings do not count, and the limit itself is accepted.
    s = connect(server.path)
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    s.sendall(good_line(x=json.loads(ok), note="[" * 1000))
    wait_until(lambda: server.counters.lines == 1, 5, what="the line at the depth limit accepted")
    s.close()
    assert server.counters.invalid == 2


def test_a_stream_without_newline_after_a_deep_line_is_cut_off_with_memory_flat(server):
    rss = psutil.Process().memory_info().rss
    s = connect(server.path)
    s.sendall(b"[" * 60000)
    sent = stream_until_closed(s, 200 * 1024 * 1024)
    s.close()
    # Closed once the buffer reached the line cap: nowhere near the 200 MiB it tried to send.
    assert sent < 8 * 1024 * 1024, f"{sent} bytes were taken before the connection was closed"
    wait_until(lambda: server.counters.invalid == 1 and server.connections == 0, 5, what="cut off")
    grown = psutil.Process().memory_info().rss - rss
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown} bytes"


def test_the_buffer_never_exceeds_the_line_cap_even_mid_stream(server):
    s = connect(server.path)
    s.sendall(good_line())  # a valid line first, then an endless one on the same connection
    wait_until(lambda: server.counters.lines == 1, 5, what="the valid line")
    s.sendall(b"y" * (server.max_line - 10))
    wait_until(lambda: any(c.buf for c in list(server._conns.values())), 5, what="a partial line held")
    assert max(len(c.buf) for c in list(server._conns.values())) <= server.max_line
    stream_until_closed(s, 4 * 1024 * 1024)
    s.close()
    wait_until(lambda: server.counters.invalid == 1 and server.connections == 0, 5, what="cut off")


def test_a_line_of_exactly_the_cap_is_accepted_and_one_byte_more_is_not(server):
    line = good_line()
    padded = line[:-2] + b', "pad": "' + b"p" * (server.max_line - len(line) - 11) + b'"}\n'
    assert len(padded) == server.max_line
    s = connect(server.path)
    s.sendall(padded)
    wait_until(lambda: server.counters.lines == 1, 5, what="the line of exactly max_line bytes")
    s.sendall(padded[:-3] + b'p"}\n')
    assert closed_by_peer(s)
    s.close()
    assert server.counters.invalid == 1


def test_a_partial_line_held_too_long_closes_the_connection_but_a_slow_whole_line_does_not(server):
    slow = connect(server.path)
    slow.sendall(b'{"pid": 1, "timest')
    held = time.monotonic()
    steady = connect(server.path)
    # Trickling more of the same line does not reset its clock.
    slow.sendall(b"amp")
    slow.settimeout(10)
    assert closed_by_peer(slow)
    assert time.monotonic() - held < 5
    slow.close()
    wait_until(lambda: server.counters.stalled == 1, 5, what="the stalled connection counted")
    # An idle connection that holds no partial line is not stalled, and its next line still counts.
    steady.sendall(good_line())
    wait_until(lambda: server.counters.lines == 1, 5, what="the steady line")
    steady.settimeout(0.5)
    assert not closed_by_peer(steady) and server.counters.stalled == 1
    steady.close()


@pytest.mark.parametrize("field", [
    b'"pid": 1' + b"0" * 400,
    b'"pid": 9999999999',
    b'"pid": 1, "cpu": NaN',
    b'"pid": 1, "cpu": Infinity',
    b'"pid": 1, "cpu": -Infinity',
    b'"pid": 1, "cpu": 1e999',
    b'"pid": 1, "memory": 1' + b"0" * 30,
    b'"pid": 1, "x": 1' + b"0" * 5000,
])
def test_non_finite_and_out_of_range_numbers_are_invalid(server, field):
    rest = b', "timestamp": "2026-01-01T00:00:00Z", "version": "1", "status": "running"'
    s = connect(server.path)
    s.sendall(b"{" + field + rest + b"}\n")
    assert closed_by_peer(s)
    s.close()
    wait_until(lambda: server.counters.invalid == 1, 5, what="the line counted invalid")
    assert server.counters.lines == 0 and server.received == []


def test_a_failing_consumer_neither_kills_the_receiver_nor_drops_the_connection(server, caplog):
    calls = []

    def boom(hb):
        calls.append(hb)
        raise RuntimeError("consumer bug")

    server.on_heartbeat = boom
    s = connect(server.path)
    s.sendall(good_line() + good_line())
    wait_until(lambda: len(calls) == 2, 5, what="both lines delivered")
    assert server.connections == 1 and server.counters.invalid == 0
    s.close()


# A receiver in a child process whose descriptor limit is nearly used up: accept() fails with EMFILE.
LOW_FD_SERVER = """
import json, os, resource, signal, sys, time
from daemon_app.agent.heartbeat import HeartbeatServer
server = HeartbeatServer(sys.argv[1], 0o600, "", lambda hb: print("line", flush=True), lambda pid: False)
server.start()
# Leave room for a handful of connections only.
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, 1024))
done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
print("ready", flush=True)
while not done:
    time.sleep(0.05)
print(json.dumps(vars(server.counters)), flush=True)
"""


@pytest.mark.timeout(60)
def test_running_out_of_descriptors_pauses_accepting_instead_of_spinning(tmp_path):
    path = os.path.join(short_tmpdir("hbf"), "hb.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", LOW_FD_SERVER, path], stdout=subprocess.PIPE,
                             text=True, env=env)
    peers = []
    try:
        assert child.stdout.readline().strip() == "ready"
        for _ in range(40):  # more than the child can hold: the rest wait in the listen backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            peers.append(s)
        proc = psutil.Process(child.pid)
        wait_until(lambda: len(os.listdir(f"/proc/{child.pid}/fd")) >= 10, 10, what="the child out of fds")
        cpu = proc.cpu_times()
        began = time.monotonic()
        wait_until(lambda: time.monotonic() - began >= 2.0, 5, what="two seconds of EMFILE")
        spent = sum(proc.cpu_times()[:2]) - sum(cpu[:2])
        assert spent < 0.5, f"the receiver burnt {spent:.2f}s of CPU in 2s while out of descriptors"
        for s in peers:  # descriptors come back: it accepts and reads again
            s.close()
        peers.clear()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        peers.append(s)
        s.sendall(good_line())
        ready, _, _ = select.select([child.stdout], [], [], 10)
        assert ready and child.stdout.readline().strip() == "line", "no heartbeat after descriptors came back"
    finally:
        for s in peers:
            s.close()
        child.terminate()
        out, _ = child.communicate(timeout=10)
    counters = json.loads(out.strip().splitlines()[-1])
    assert counters["accept_errors"] >= 1
    assert counters["accept_errors"] < 20, "accept() retried in a tight loop"
