"""The three socket servers (heartbeat, control, Prometheus) on their one `SocketLoop` base, attacked
the same way: silent peers, half-closed peers, stop() mid-line, stop() twice or before start(), a
protocol that raises, and running out of descriptors. After every stop no thread and no descriptor
of the server is left, and a Unix socket's file is gone. Real sockets throughout."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import pytest

from daemon_app.agent.heartbeat import HeartbeatServer
from daemon_app.control import MAX_CLIENTS, ControlServer
from daemon_app.errors import AgentStartError, ConfigValidateError
from daemon_app.prometheus.server import MetricsServer
from daemon_app.socketloop import READ, SocketLoop
from daemon_app.threads import reason
from tests.helpers import ROOT, short_tmpdir, wait_until

pytestmark = pytest.mark.timeout(60)

BODY = b"# HELP x h\n# TYPE x gauge\nx 1\n"
HEARTBEAT = json.dumps({"pid": 1, "timestamp": "2026-01-01T00:00:00Z", "version": "1",
                        "status": "running"}).encode() + b"\n"
THREAD_NAMES = {"agent-heartbeat", "control", "control-client", "prometheus", "echo-loop"}


@dataclass
class Kit:
    """One server under test and how to talk to it."""

    server: SocketLoop
    connect: Callable[[], socket.socket]
    partial: bytes  # the start of a request that never ends
    exchange: Callable[[], None]  # one whole request, answered (raises when it is not)
    path: str | None  # the Unix socket file, None for TCP


def unix_connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def heartbeat_kit(work: str) -> Kit:
    got: list = []
    srv = HeartbeatServer(os.path.join(work, "hb.sock"), 0o600, "", got.append, lambda pid: False)

    def exchange() -> None:
        before = len(got)
        with unix_connect(srv.path) as s:
            s.sendall(HEARTBEAT)
            wait_until(lambda: len(got) > before, 5, what="the heartbeat handled")

    return Kit(srv, lambda: unix_connect(srv.path), b'{"pid": 1, "timest', exchange, srv.path)


def control_kit(work: str) -> Kit:
    srv = ControlServer(os.path.join(work, "control.sock"), lambda fn, timeout: fn())
    srv.register("echo", lambda args: {"echo": args})

    def exchange() -> None:
        with unix_connect(srv.path) as s:
            s.sendall(b'{"cmd": "echo", "args": {"a": 1}}\n')
            assert json.loads(s.makefile("rb").readline()) == {"ok": True, "result": {"echo": {"a": 1}}}

    return Kit(srv, lambda: unix_connect(srv.path), b'{"cmd": "ec', exchange, srv.path)


def prometheus_kit(work: str) -> Kit:
    srv = MetricsServer("127.0.0.1", 0, lambda: BODY)

    def connect() -> socket.socket:
        return socket.create_connection(srv.address, timeout=5)

    def exchange() -> None:
        with connect() as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(BODY)

    return Kit(srv, connect, b"GET /metr", exchange, None)


KITS = {"heartbeat": heartbeat_kit, "control": control_kit, "prometheus": prometheus_kit}


def open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


def server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in THREAD_NAMES]


@pytest.fixture(params=sorted(KITS))
def kit(request) -> Iterator[Kit]:
    """A started server; after the test: stopped, and nothing of it left behind."""
    work = short_tmpdir("sl")
    fds = open_fds()
    threads = server_threads()
    made = KITS[request.param](work)
    made.server.start()
    yield made
    made.server.stop()
    wait_until(lambda: server_threads() == threads, 10, what="the server's threads ended")
    # The test's own client sockets are closed by now; only the server's could be left.
    wait_until(lambda: open_fds() <= fds, 10, what=f"no descriptor left (extra: {open_fds() - fds})")
    if made.path is not None:
        assert not os.path.lexists(made.path), "stop() leaves the socket file behind"
    shutil.rmtree(work, ignore_errors=True)


def closed_by_server(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_peer_that_connects_and_never_sends_neither_blocks_others_nor_survives_stop(kit):
    silent = [kit.connect() for _ in range(3)]
    try:
        kit.exchange()  # the silent ones hold no one up
        began = time.monotonic()
        kit.server.stop()
        assert time.monotonic() - began < 3, "stop() waited for silent peers"
        for s in silent:
            assert closed_by_server(s), "a silent peer still connected after stop()"
    finally:
        for s in silent:
            s.close()


def test_a_half_closed_peer_is_let_go_and_the_server_goes_on(kit):
    s = kit.connect()
    try:
        s.sendall(kit.partial)
        s.shutdown(socket.SHUT_WR)  # the peer will send no more: the partial request never ends
        assert closed_by_server(s), "the server kept a half-closed peer's connection open"
    finally:
        s.close()
    wait_until(lambda: kit.server.connections == 0, 5, what="the half-closed connection dropped")
    kit.exchange()


def test_stop_while_a_client_is_mid_line_closes_it_at_once(kit):
    s = kit.connect()
    try:
        s.sendall(kit.partial)
        kit.exchange()  # by now the partial one is being held (its bytes were sent first)
        began = time.monotonic()
        kit.server.stop()
        assert time.monotonic() - began < 3, "stop() waited for the client to finish its line"
        assert closed_by_server(s)
    finally:
        s.close()


def test_stop_twice_and_from_two_threads_at_once_is_harmless(kit):
    kit.exchange()
    stoppers = [threading.Thread(target=kit.server.stop) for _ in range(2)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(10)
    kit.server.stop()
    assert not any(t.is_alive() for t in stoppers)


def test_the_server_starts_again_after_stop(kit):
    kit.server.stop()
    kit.server.start()
    kit.exchange()


@pytest.mark.parametrize("name", sorted(KITS))
def test_stop_before_start_does_nothing_and_leaves_nothing(name):
    work = short_tmpdir("sl")
    fds = open_fds()
    try:
        made = KITS[name](work)
        made.server.stop()
        made.server.stop()
        assert open_fds() <= fds and made.server.connections == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(KITS))
def test_a_start_that_fails_leaves_nothing_and_a_later_start_works(name):
    work = short_tmpdir("sl")
    threads = server_threads()
    holder = socket.socket()
    fds = open_fds()
    try:
        made = KITS[name](work)
        if made.path is not None:  # a regular file where the socket should go: never replaced
            with open(made.path, "w") as fh:
                fh.write("not a socket")
        else:  # the port taken by someone else
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            made.server.port = holder.getsockname()[1]
        refused = {"heartbeat": AgentStartError, "control": ConfigValidateError, "prometheus": OSError}
        with pytest.raises(refused[name]):
            made.server.start()
        if made.path is not None:
            with open(made.path) as fh:
                assert fh.read() == "not a socket"
            os.unlink(made.path)
        else:
            holder.close()
        assert server_threads() == threads and open_fds() <= fds
        made.server.start()
        made.exchange()
        made.server.stop()
    finally:
        holder.close()
        shutil.rmtree(work, ignore_errors=True)
    wait_until(lambda: open_fds() <= fds and server_threads() == threads, 10, what="nothing left")


def test_starting_a_running_server_is_refused_and_it_still_serves(kit):
    with pytest.raises((RuntimeError, OSError)):
        kit.server.start()
    kit.exchange()


# --- the base alone, with a protocol written here: a handler that raises ---------------------------


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class EchoLoop(SocketLoop[_Conn]):
    """Echoes what it reads; `boom` makes its handler raise (a protocol bug, not the peer's)."""

    def __init__(self, path: str) -> None:
        super().__init__("echo-loop", logging.getLogger("tests.echo"), socket_file=path)
        self.path = path

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(8)
        return sock

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._watch(_Conn(sock), READ)

    def _ready(self, conn: _Conn, events: int) -> None:
        data = conn.sock.recv(4096)
        if not data:
            self._close(conn)
        elif b"boom" in data:
            raise RuntimeError("protocol bug")
        else:
            conn.sock.sendall(data)


def test_a_handler_that_raises_closes_its_connection_logs_it_and_the_loop_goes_on(caplog):
    work = short_tmpdir("sl")
    loop = EchoLoop(os.path.join(work, "echo.sock"))
    loop.start()
    try:
        good, bad = unix_connect(loop.path), unix_connect(loop.path)
        with good, bad:
            bad.sendall(b"boom")
            assert closed_by_server(bad)
            good.sendall(b"still here")
            assert good.recv(100) == b"still here"
        assert any("connection handler failed" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        loop.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert "echo-loop" not in server_threads()


# --- out of descriptors: accept() fails with EMFILE ------------------------------------------------

# A server in a child process whose descriptor limit is nearly used up. The heartbeat server has the
# same test in tests/integration/agent/test_agent_heartbeat_edges.py.
LOW_FD_SERVER = """
import json, os, resource, signal, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "control":
    from daemon_app.control import ControlServer
    server = ControlServer(path, lambda fn, timeout: fn())
    server.register("echo", lambda args: "echo")
else:
    from daemon_app.prometheus.server import MetricsServer
    server = MetricsServer("127.0.0.1", 0, lambda: b"x 1\\n")
server.start()
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, 1024))
done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
print(json.dumps(server.address[1] if kind == "prometheus" else path), flush=True)
while not done:
    time.sleep(0.05)
server.stop()
print("stopped", flush=True)
"""


@pytest.mark.parametrize("kind", ["control", "prometheus"])
def test_running_out_of_descriptors_pauses_accepting_then_serves_again(kind):
    work = short_tmpdir("slf")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", LOW_FD_SERVER, kind, os.path.join(work, "c.sock")],
                             stdout=subprocess.PIPE, text=True, env=env)
    peers: list[socket.socket] = []

    def connect() -> socket.socket:
        if kind == "control":
            return unix_connect(where)
        return socket.create_connection(("127.0.0.1", where), timeout=5)

    try:
        where = json.loads(child.stdout.readline())
        for _ in range(12):  # more than the child can hold: the rest wait in the listen backlog
            peers.append(connect())
        proc = psutil.Process(child.pid)
        wait_until(lambda: proc.num_fds() >= 10, 10, what="the child out of descriptors")
        cpu = sum(proc.cpu_times()[:2])
        began = time.monotonic()
        wait_until(lambda: time.monotonic() - began >= 2.0, 5, what="two seconds of EMFILE")
        spent = sum(proc.cpu_times()[:2]) - cpu
        assert spent < 0.5, f"the server burnt {spent:.2f}s of CPU in 2s while out of descriptors"
        for s in peers:  # descriptors come back: it accepts and answers again
            s.close()
        peers.clear()
        s = connect()
        peers.append(s)
        if kind == "control":
            s.sendall(b'{"cmd": "echo"}\n')
            assert json.loads(s.makefile("rb").readline()) == {"ok": True, "result": "echo"}
        else:
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 OK"), "no answer after descriptors came back"
    finally:
        for s in peers:
            s.close()
        child.terminate()
        out, _ = child.communicate(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    assert out.strip().endswith("stopped")


def test_no_server_thread_is_unlisted_in_daemon_status():
    assert all(reason(name) != "unlisted" for name in THREAD_NAMES - {"echo-loop"})


def test_a_refused_control_client_is_answered_busy_and_the_others_are_served():
    work = short_tmpdir("slb")
    srv = ControlServer(os.path.join(work, "c.sock"), lambda fn, timeout: fn())
    srv.register("echo", lambda args: "echo")
    srv.start()
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CLIENTS):
            held.append(unix_connect(srv.path))
        wait_until(lambda: server_threads().count("control-client") >= MAX_CLIENTS, 5,
                   what="every slot taken")
        with unix_connect(srv.path) as extra:
            answer = json.loads(extra.makefile("rb").readline())
        assert answer["ok"] is False and "busy" in answer["error"]
        held.pop().close()
        wait_until(lambda: server_threads().count("control-client") < MAX_CLIENTS, 5, what="a slot freed")
        with unix_connect(srv.path) as s:
            s.sendall(b'{"cmd": "echo"}\n')
            assert json.loads(s.makefile("rb").readline())["result"] == "echo"
    finally:
        for s in held:
            s.close()
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    wait_until(lambda: "control-client" not in server_threads(), 5, what="the client threads ended")


def test_control_stop_is_bounded_by_a_command_still_running_and_its_thread_ends_after_it():
    work = short_tmpdir("slc")
    srv = ControlServer(os.path.join(work, "c.sock"), lambda fn, timeout: fn())
    running, release = threading.Event(), threading.Event()

    def slow(args):
        running.set()
        release.wait(20)
        return "late"

    srv.register("slow", slow, on_engine_thread=False)
    srv.start()
    try:
        with unix_connect(srv.path) as s:
            s.sendall(b'{"cmd": "slow"}\n')
            assert running.wait(5)
            began = time.monotonic()
            srv.stop(timeout=0.5)
            assert time.monotonic() - began < 2, "stop() waited for the command beyond its timeout"
            assert not os.path.lexists(srv.path)
            release.set()
            assert closed_by_server(s), "the connection outlived its command after stop()"
        wait_until(lambda: srv.connections == 0 and "control-client" not in server_threads(), 5,
                   what="the client thread ended once its command returned")
    finally:
        release.set()
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
