"""Update packages for daemons: a content-addressed directory next to the database, served over HTTPS
with mutual TLS 1.3 (the Manager's server certificate, client certificates from the same CA as gRPC).

`push-update` copies a package in as `<db>.files/<sha256>`; `serve` runs `FileServer`, which answers
`GET /files/<sha256>` to any daemon holding a client certificate of the CA, and records its base URL
in the database so `push-update` (another process) can build the package's URL.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("daemon_manager")

CHUNK = 1024 * 1024
HANDSHAKE_TIMEOUT = 30.0
IO_TIMEOUT = 60.0  # a daemon that stops reading for this long is dropped
_PATH = re.compile(r"^/files/([0-9a-f]{64})$")
URL_SETTING = "files_url"


def files_dir(db_path: str) -> Path:
    """<db>.files, next to the database: both belong to the same Manager."""
    return Path(os.path.abspath(db_path) + ".files")


def add_file(db_path: str, source: str) -> tuple[str, int]:
    """Copy `source` into the content-addressed directory (once); return (sha256, size)."""
    directory = files_dir(db_path)
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=".incoming.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, directory / digest.hexdigest())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "daemon-manager-files"
    protocol_version = "HTTP/1.1"
    root: Path = Path("/nonexistent")

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("files %s: " + fmt, self.client_address[0], *args)

    def do_GET(self) -> None:
        match = _PATH.match(self.path)
        path = self.root / match.group(1) if match else None
        if path is None or not path.is_file():
            self.send_error(404, "no such package")
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        try:
            with open(path, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile, CHUNK)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        log.info("files: sent %s (%d bytes) to %s (CN %s)", match.group(1)[:16] if match else "?", size,
                 self.client_address[0], subject.get("commonName", "?"))


class _TLSServer(http.server.ThreadingHTTPServer):
    """Accepts plain TCP and does the TLS handshake in the connection's own thread, so one slow or
    hostile client never holds up the others."""

    daemon_threads = True
    ssl_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        tls = self.ssl_context.wrap_socket(request, server_side=True)
        tls.settimeout(IO_TIMEOUT)
        self.RequestHandlerClass(tls, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("files: connection from %s failed: %s", client_address[0], _current_error())


def _current_error() -> str:
    import sys

    exc = sys.exc_info()[1]
    return f"{type(exc).__name__}: {exc}" if exc else "?"


class FileServer:
    """A small threaded HTTPS server for the package directory; start() returns the base URL."""

    def __init__(self, db_path: str, tls_dir: str, listen: str) -> None:
        self.db_path, self.tls_dir, self.listen = db_path, tls_dir, listen
        self.url = ""
        self._httpd: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        root = files_dir(self.db_path)
        root.mkdir(mode=0o750, parents=True, exist_ok=True)
        handler = type("Handler", (_Handler,), {"root": root})
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # seed §6.1, like the daemon's link
        d = Path(self.tls_dir)
        ctx.load_cert_chain(d / "server.crt", d / "server.key")
        ctx.load_verify_locations(d / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, like the gRPC port

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("FilesServer", (_TLSServer,), {"address_family": family, "ssl_context": ctx})
        httpd = server_cls((host, int(port or 0)), handler)
        self._httpd = httpd
        bound = httpd.server_address[1]
        advertised = socket.getfqdn() if host in ("0.0.0.0", "::") else host
        self.url = f"https://{'[' + advertised + ']' if ':' in advertised else advertised}:{bound}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="manager-files", daemon=True)
        self._thread.start()
        log.info("update packages served on %s from %s", self.url, root)
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
