"""A minimal HTTP/1.1 server for GET /metrics: one `SocketLoop` thread, every resource bounded.

Not `http.server`: its threading server starts a thread per connection without a limit, and a
client that sends its request slowly holds that thread as long as it likes. Here a scrape only
copies a body that was rendered at report time, so one thread serves every client:

- at most MAX_CONNECTIONS open at once; one more evicts the oldest that has not sent its request
  yet (else the oldest of all), counted: clients that open connections and send nothing cannot
  keep a real scrape, which takes milliseconds, out;
- a request head is at most MAX_REQUEST bytes (431 past that) and must arrive within
  REQUEST_TIMEOUT of the connection (slowloris); the response must be taken within
  RESPONSE_TIMEOUT (a client that stops reading is dropped);
- one request per connection (`Connection: close`); request bodies are never read.
Idle, the thread sleeps in its selector with no timeout: it costs no CPU between scrapes.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from daemon_app.prometheus.exposition import CONTENT_TYPE
from daemon_app.socketloop import ACCEPT_PAUSE, WRITE, SocketLoop

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
MAX_REQUEST = 8192
LISTEN_BACKLOG = 128  # the kernel's queue: a burst of connects waits there, not in SYN retries
REQUEST_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 10.0

Body = Callable[[], bytes]


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "deadline", "opened")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = memoryview(b"")
        self.deadline = deadline
        self.opened = time.monotonic()


class Counters:
    """What the server did since it started (exported as daemon_prometheus_http_*)."""

    def __init__(self) -> None:
        self.requests = 0
        self.evicted = 0
        self.timeouts = 0
        self.bad_requests = 0


class MetricsServer(SocketLoop[_Conn]):
    """Serves `body()` at GET /metrics on (host, port); `start()` binds, `stop()` closes.

    The thread, accept (paused when out of descriptors), stop and teardown are `SocketLoop`'s.
    """

    def __init__(self, host: str, port: int, body: Body, *, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT,
                 response_timeout: float = RESPONSE_TIMEOUT) -> None:
        super().__init__("prometheus", log, accept_batch=LISTEN_BACKLOG)
        self.host, self.port = host, port
        self._body = body
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.response_timeout = response_timeout
        self.counters = Counters()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when 0 asked the OS to choose."""
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return host, port

    def _listen(self) -> socket.socket:
        """Bind; raises OSError when the address cannot be bound (in use, not local)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # A restarted daemon must get its port back while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock

    # --- the protocol ---------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        return min((c.deadline for c in self._conns.values()), default=None)

    def _accept_failed(self, exc: OSError) -> None:
        log.warning("prometheus: accept failed: %s; pausing %gs", exc, ACCEPT_PAUSE)

    def _admit(self, sock: socket.socket) -> None:
        if len(self._conns) >= self.max_connections:
            self._evict_one()
        sock.setblocking(False)
        self._watch(_Conn(sock, time.monotonic() + self.request_timeout))

    def _evict_one(self) -> None:
        waiting = [c for c in self._conns.values() if not c.outbuf] or list(self._conns.values())
        self.counters.evicted += 1
        self._close(min(waiting, key=lambda c: c.opened))

    def _ready(self, conn: _Conn, events: int) -> None:
        try:
            if conn.outbuf:
                self._write(conn)
            else:
                self._read(conn)
        except OSError:
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST + 1 - len(conn.inbuf))
        except BlockingIOError:
            return
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbuf.find(b"\n\n")
        if end < 0:
            if len(conn.inbuf) > MAX_REQUEST:
                self.counters.bad_requests += 1
                self._respond(conn, 431, b"request header too large\n")
            return
        self._respond(conn, *self._route(conn.inbuf[:end]))

    def _route(self, head: bytes) -> tuple[int, bytes, bool]:
        """(status, body, head_only) for one request head."""
        parts = head.split(b"\n", 1)[0].strip().split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.counters.bad_requests += 1
            return 400, b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self.counters.bad_requests += 1
            return 405, b"only GET and HEAD\n", False
        head_only = method == b"HEAD"
        if target == b"/metrics":
            self.counters.requests += 1
            return 200, self._body(), head_only
        if target == b"/":
            return 200, b"daemon.pyz: the metrics are at /metrics\n", head_only
        return 404, b"not found; the metrics are at /metrics\n", head_only

    def _respond(self, conn: _Conn, status: int, body: bytes, head_only: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        plain = "text/plain; charset=utf-8"
        content_type = CONTENT_TYPE if status == 200 and body.startswith(b"#") else plain
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if status == 405:
            head += "Allow: GET, HEAD\r\n"
        conn.outbuf = memoryview(head.encode() + b"\r\n" + (b"" if head_only else body))
        conn.inbuf = b""
        conn.deadline = time.monotonic() + self.response_timeout
        self._modify(conn, WRITE)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        conn.outbuf = conn.outbuf[sent:]
        if not conn.outbuf:
            self._close(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.counters.timeouts += 1
            self._close(conn)
