"""The /metrics HTTP server under attack: slow clients, huge requests, many connections, garbage.

Real sockets on OS-chosen loopback ports; the server is the one the daemon runs, with its timeouts
shrunk so each test takes a second or two.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from daemon_app.prometheus.plugin import PrometheusExporter
from daemon_app.prometheus.server import MAX_REQUEST, MetricsServer
from tests.helpers import wait_until

BODY = b"# HELP x h\n# TYPE x gauge\nx 1\n"


@pytest.fixture
def server():
    started: list[MetricsServer] = []

    def start(body=lambda: BODY, **kwargs) -> MetricsServer:
        srv = MetricsServer("127.0.0.1", 0, body, **kwargs)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def url(srv: MetricsServer, path: str = "/metrics") -> str:
    return f"http://127.0.0.1:{srv.address[1]}{path}"


def scrape(srv: MetricsServer, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url(srv), timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def raw(srv: MetricsServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the server closes; the whole answer."""
    with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # done sending: an incomplete request is not waited for
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def connect(srv: MetricsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.address[1]), timeout=5)


@pytest.mark.timeout(30)
def test_get_metrics_serves_the_body_with_prometheus_content_type(server):
    srv = server()
    status, headers, body = scrape(srv)
    assert (status, body) == (200, BODY)
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Content-Length"] == str(len(BODY))
    assert raw(srv, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").endswith(b"\r\n\r\n" + BODY)
    head = raw(srv, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert srv.counters.requests == 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"405"),
    (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"405"),
    (b"GET /metrics\r\n\r\n", b"400"),
    (b"\x00\xff\xfe garbage\r\n\r\n", b"400"),
    (b"GET /metrics SPDY/3\r\n\r\n", b"400"),
])
def test_anything_but_get_metrics_gets_a_clear_status_and_the_server_goes_on(server, request_bytes, status):
    srv = server()
    assert raw(srv, request_bytes).split(b" ", 2)[1] == status
    assert scrape(srv)[2] == BODY


@pytest.mark.timeout(30)
def test_a_huge_request_is_cut_at_the_limit_with_431(server):
    srv = server()
    sock = connect(srv)
    try:
        sent = 0
        try:
            while sent < 1024 * 1024:  # a 1 MiB header line that never ends
                sock.sendall(b"X-A: " + b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed the connection: what it should do
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b""
    assert srv.counters.bad_requests == 1
    assert scrape(srv)[2] == BODY
    assert sent >= MAX_REQUEST


@pytest.mark.timeout(30)
def test_a_client_that_sends_nothing_is_dropped_after_the_request_timeout(server):
    srv = server(request_timeout=0.3)
    sock = connect(srv)
    try:
        sock.sendall(b"GET /metr")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, no answer
        assert time.monotonic() - started < 4.0
    finally:
        sock.close()
    assert srv.counters.timeouts == 1


@pytest.mark.timeout(60)
def test_slow_clients_holding_every_slot_do_not_keep_a_scrape_out(server):
    srv = server(max_connections=8, request_timeout=30.0)
    idle = [connect(srv) for _ in range(8)]
    for sock in idle:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
    try:
        wait_until(lambda: len(srv._conns) == 8, timeout=5, what="eight idle connections held")
        t0 = time.monotonic()
        assert scrape(srv)[2] == BODY
        assert time.monotonic() - t0 < 2.0
        assert srv.counters.evicted == 1
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.timeout(60)
def test_hundreds_of_connections_cost_no_thread_and_stay_bounded(server):
    srv = server(max_connections=16)
    threads = threading.active_count()
    socks = []
    try:
        for _ in range(300):
            socks.append(connect(srv))
        wait_until(lambda: srv.counters.evicted >= 300 - 16, timeout=10, what="old connections evicted")
        assert len(srv._conns) <= 16
        assert threading.active_count() <= threads  # none added (threads of earlier tests may end meanwhile)
        assert scrape(srv)[2] == BODY
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.timeout(60)
def test_a_client_that_stops_reading_is_dropped_and_others_are_served_meanwhile(server):
    big = b"# HELP x h\n# TYPE x gauge\n" + b"x 1\n" * (4 * 1024 * 1024)  # 16 MiB: more than socket buffers
    srv = server(body=lambda: big, response_timeout=1.0)
    slow = connect(srv)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        wait_until(lambda: any(c.outbuf for c in list(srv._conns.values())), timeout=5,
                   what="the response to the slow client pending")
        t0 = time.monotonic()
        with urllib.request.urlopen(url(srv, "/"), timeout=5) as resp:  # served while the slow one waits
            assert resp.status == 200
        assert time.monotonic() - t0 < 1.0
        wait_until(lambda: srv.counters.timeouts == 1, timeout=10, what="the slow reader dropped")
        assert not srv._conns
    finally:
        slow.close()


@pytest.mark.timeout(60)
def test_random_bytes_never_stop_the_server(server):
    srv = server(request_timeout=0.2)
    rng = random.Random(15)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        if rng.random() < 0.5:
            data += b"\r\n\r\n"
        try:
            raw(srv, data, timeout=5)
        except OSError:
            pass  # reset by the server: fine, it must just live on
    assert scrape(srv)[2] == BODY


@pytest.mark.timeout(30)
def test_stop_closes_the_port(server):
    srv = server()
    port = srv.address[1]
    srv.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.timeout(30)
def test_a_busy_port_is_logged_d1002_and_taken_once_it_is_free(caplog):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    exporter = PrometheusExporter(f"127.0.0.1:{port}", 100, status=lambda: {})
    try:
        with caplog.at_level(logging.ERROR, logger="daemon_app.prometheus.plugin"):
            exporter.report({"metrics": {}})
            exporter.report({"metrics": {}})
        assert exporter.server is None
        errors = [r.getMessage() for r in caplog.records]
        assert len(errors) == 1  # once, not at every report while it lasts
        assert errors[0].startswith(f"D1002 prometheus.listen: cannot listen on 127.0.0.1:{port}")
        holder.close()
        exporter.report({"metrics": {"memory": {"values": {"total": 42}}}})
        assert exporter.server is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"node_memory_MemTotal_bytes 42\n" in resp.read()
    finally:
        holder.close()
        exporter.close()


@pytest.mark.timeout(30)
def test_an_ipv6_listen_address_serves_too():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    srv = MetricsServer("::1", 0, lambda: BODY)
    try:
        srv.start()
    except OSError as exc:
        pytest.skip(f"cannot bind [::1]: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{srv.address[1]}/metrics", timeout=5) as resp:
            assert resp.read() == BODY
    finally:
        srv.stop()
