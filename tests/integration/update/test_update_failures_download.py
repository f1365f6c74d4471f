"""Downloads that go wrong half-way, against a real mutual-TLS HTTPS server that misbehaves on purpose:
cut after half the body (announced or not), reset, a length announced larger than the manifest, a
server that accepts and never answers, and a client certificate that cannot be read. Each ends in
its D-code with nothing changed: installed file, floor, journal, download_dir."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.update_support import TestPKI, snapshot, update_config


class HalfwayServer:
    """A TLS server (client certificate required) that answers each connection with `behave`."""

    def __init__(self, pki: TestPKI, behave: Callable[[ssl.SSLSocket], None]) -> None:
        self.behave = behave
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.server_cert, pki.server_key)
        self.ctx.load_verify_locations(pki.ca_file)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.served = threading.Event()
        self.release = threading.Event()  # set at teardown: lets a server that "hangs" finish
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/pkg"

    def _serve(self) -> None:
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            _read_request(conn)
            self.behave(conn)
            self.served.set()
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    def close(self) -> None:
        self.release.set()
        self.sock.close()
        self.thread.join(10)


def _read_request(conn: ssl.SSLSocket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def _head(length: int | None) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/octet-stream", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def serve(pki):
    servers: list[HalfwayServer] = []

    def start(behave: Callable[[ssl.SSLSocket], None]) -> HalfwayServer:
        srv = HalfwayServer(pki, behave)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def _fails_and_changes_nothing(env, request, code: str, *phrases: str) -> str:
    before = snapshot(env.cfg)
    result = env.updater().run(request, env.progress)
    assert not result.success and not result.rolled_back
    assert result.error.startswith(code), result.error
    for phrase in phrases:
        assert phrase in result.error, result.error
    assert env.states[-1][0] == "failed"
    assert snapshot(env.cfg) == before
    return result.error


PACKAGE = b"agent 2.0.0\n" * 20_000  # 240 kB: several TLS records, so "half" is a real partial body


@pytest.mark.timeout(30)
def test_connection_closed_after_half_the_announced_body_fails_with_d4001(env, serve) -> None:
    rel = env.release("2.0.0", PACKAGE)

    def half_then_close(conn: ssl.SSLSocket) -> None:
        conn.sendall(_head(len(PACKAGE)) + PACKAGE[: len(PACKAGE) // 2])

    srv = serve(half_then_close)
    error = _fails_and_changes_nothing(env, env.request(rel, url=srv.url()), "D4001",
                                       "connection broke after")
    received = int(error.split("connection broke after ")[1].split()[0])
    assert 0 < received <= len(PACKAGE) // 2


@pytest.mark.timeout(30)
def test_body_cut_short_without_a_length_is_caught_by_the_manifest_size(env, serve) -> None:
    """No Content-Length and a clean close: HTTP cannot tell, the signed size can."""
    rel = env.release("2.0.0", PACKAGE)
    srv = serve(lambda conn: conn.sendall(_head(None) + PACKAGE[: len(PACKAGE) // 2]))
    _fails_and_changes_nothing(env, env.request(rel, url=srv.url()), "D4002",
                               f"{len(PACKAGE) // 2} bytes, the manifest says {len(PACKAGE)}")


@pytest.mark.timeout(30)
def test_connection_reset_mid_body_fails_with_d4001(env, serve) -> None:
    rel = env.release("2.0.0", PACKAGE)

    def half_then_reset(conn: ssl.SSLSocket) -> None:
        conn.sendall(_head(len(PACKAGE)) + PACKAGE[: len(PACKAGE) // 3])
        # SO_LINGER 0: close() sends a TCP RST instead of a FIN, as a crashed proxy or middlebox does.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    srv = serve(half_then_reset)
    _fails_and_changes_nothing(env, env.request(rel, url=srv.url()), "D4001", "connection broke after")


@pytest.mark.timeout(30)
def test_server_announcing_more_than_the_manifest_is_refused_before_the_body(env, serve) -> None:
    rel = env.release("2.0.0", PACKAGE)
    srv = serve(lambda conn: conn.sendall(_head(len(PACKAGE) * 10) + PACKAGE))
    _fails_and_changes_nothing(env, env.request(rel, url=srv.url()), "D4001",
                               f"server announces {len(PACKAGE) * 10} bytes, "
                               f"the manifest says {len(PACKAGE)}")


@pytest.mark.timeout(30)
def test_server_that_accepts_and_never_answers_fails_after_read_timeout(env, serve) -> None:
    env.reconfigure(read_timeout="500ms")
    rel = env.release("2.0.0", PACKAGE)
    srv = serve(lambda conn: srv.release.wait(20))
    _fails_and_changes_nothing(env, env.request(rel, url=srv.url()), "D4001", "no response within 0.5s")


@pytest.mark.timeout(30)
def test_unreadable_client_certificate_fails_before_connecting(env, serve, tmp_path: Path) -> None:
    srv = serve(lambda conn: conn.sendall(_head(len(PACKAGE)) + PACKAGE))
    rel = env.release("2.0.0", PACKAGE)
    # The certificate was removed (a rotation gone wrong): say which file, do not even connect.
    rotated = SimpleNamespace(ca_file=env.pki.ca_file, client_cert=tmp_path / "gone.crt",
                              client_key=env.pki.client_key)
    env.cfg = update_config(env.work, rotated)
    _fails_and_changes_nothing(env, env.request(rel, url=srv.url()), "D4001",
                               f"cannot read manager.tls.cert_file '{tmp_path / 'gone.crt'}'")
    assert not srv.served.is_set()
