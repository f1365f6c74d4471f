"""A real TLS server that offers nothing newer than TLS 1.2: an old Manager, for the refusal tests."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


class Tls12OnlyPeer:
    """Accepts TCP on a loopback port the OS chooses and runs the TLS handshake with TLS <= 1.2, the
    Manager's own certificate and mutual TLS; records each handshake's outcome and closes."""

    def __init__(self, pki_dir: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(pki_dir / "server.crt", pki_dir / "server.key")
        ctx.load_verify_locations(pki_dir / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])
        self._ctx = ctx
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls12-peer", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Tls12OnlyPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self._ctx.wrap_socket(conn, server_side=True) as tls:
                    self.outcomes.append(f"handshake {tls.version()}")
            except (ssl.SSLError, OSError) as exc:
                self.outcomes.append(f"refused {getattr(exc, 'reason', None) or exc}")
                conn.close()
