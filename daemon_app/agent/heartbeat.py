"""Heartbeat receiver: JSON lines from the Agent on a Unix socket (seed §3.3.3), hostile input bounded.

One thread runs a selector over non-blocking sockets. Every peer is checked with SO_PEERCRED; every
line is size-limited; a malformed line is counted and its connection dropped; connections are
capped, and when the cap is reached the least recently active connection that is not the Agent's
is evicted, so a flood can neither grow memory without bound nor lock the real Agent out.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon_app.compat import fromisoformat
from daemon_app.errors import AgentStartError
from daemon_app.wakeup import WakePipe

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
MAX_CONNECTIONS = 64
_READ_CHUNK = 64 * 1024
_CRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """Kernel-verified identity of the connecting process (SO_PEERCRED, taken at connect time)."""

    pid: int
    uid: int
    gid: int


@dataclass
class Heartbeat:
    """One validated heartbeat line."""

    pid: int
    timestamp: str
    version: str
    status: str
    cpu: float
    memory: int
    peer: Peer
    received: float = field(default_factory=time.monotonic)


class InvalidHeartbeat(ValueError):
    """A line that is not a heartbeat; the message says what is wrong (it goes to the debug log)."""


def parse_heartbeat(line: bytes, peer: Peer) -> Heartbeat:
    """Validate one line. Required: pid (int), timestamp (RFC 3339 string), version, status (strings).

    Optional: cpu (number, percent), memory (int, bytes). Unknown keys are ignored so Agents may add
    fields without breaking older daemons.
    """
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidHeartbeat(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidHeartbeat(f"must be a JSON object, got {type(obj).__name__}")
    pid = obj.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidHeartbeat(f"pid must be a positive integer, got {pid!r}")
    for key in ("timestamp", "version", "status"):
        value = obj.get(key)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise InvalidHeartbeat(f"{key} must be a non-empty string (<= 256 chars), got {value!r}")
    try:
        fromisoformat(obj["timestamp"])
    except ValueError:
        raise InvalidHeartbeat(f"timestamp must be RFC 3339, got {obj['timestamp']!r}") from None
    cpu = obj.get("cpu", 0.0)
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu < 0:
        raise InvalidHeartbeat(f"cpu must be a non-negative number, got {cpu!r}")
    memory = obj.get("memory", 0)
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise InvalidHeartbeat(f"memory must be a non-negative integer (bytes), got {memory!r}")
    return Heartbeat(pid, obj["timestamp"], obj["version"], obj["status"], float(cpu), memory, peer)


@dataclass
class _Conn:
    sock: socket.socket
    peer: Peer
    agent: bool  # the supervised Agent (or a descendant) at connect time: never evicted
    buf: bytearray = field(default_factory=bytearray)
    last_active: float = field(default_factory=time.monotonic)


@dataclass
class Counters:
    accepted: int = 0
    rejected: int = 0  # peer credentials not allowed
    evicted: int = 0  # closed to make room at the connection cap
    refused: int = 0  # new connections turned away at the cap (every open one was the Agent's)
    invalid: int = 0  # malformed, oversized or ill-typed lines (each closes its connection)
    lines: int = 0  # valid heartbeat lines, whoever sent them


class HeartbeatServer:
    """Listens on `path`; calls `on_heartbeat(hb)` from its own thread for every valid line.

    `is_agent(peer_pid)` tells which connections belong to the supervised Agent (never evicted).
    """

    def __init__(self, path: str, mode: int, group: str, on_heartbeat: Callable[[Heartbeat], None],
                 is_agent: Callable[[int], bool], *, max_connections: int = MAX_CONNECTIONS,
                 max_line: int = MAX_LINE) -> None:
        self.path = path
        self.mode = mode
        self.group = group
        self.on_heartbeat = on_heartbeat
        self.is_agent = is_agent
        self.max_connections = max_connections
        self.max_line = max_line
        self.counters = Counters()
        self._gid: int | None = None
        self._members: frozenset[str] = frozenset()
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] = (0, 0)  # (dev, inode) of our socket file, to unlink only ours
        self._conns: dict[int, _Conn] = {}
        self._sel: selectors.DefaultSelector | None = None
        self._waker: WakePipe | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (mode and group set before the socket appears at `path`) and start the thread."""
        self._resolve_group()
        self._listener = self._bind()
        self._sel = selectors.DefaultSelector()
        self._waker = WakePipe()
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._waker, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="agent-heartbeat", daemon=True)
        self._thread.start()
        log.info("agent heartbeat socket listening on %s (mode %04o%s)", self.path, self.mode,
                 f", group {self.group}" if self.group else "")

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._waker is not None:
            self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        if self._listener is not None:
            # Unlink only our own socket: a newer daemon may already have bound a fresh one there.
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.path)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _resolve_group(self) -> None:
        self._gid, self._members = None, frozenset()
        if not self.group:
            return
        try:
            entry = grp.getgrnam(self.group)
        except KeyError:
            raise AgentStartError(f"agent: socket_group {self.group!r} does not exist") from None
        self._gid, self._members = entry.gr_gid, frozenset(entry.gr_mem)

    def _bind(self) -> socket.socket:
        """Bind in a private 0700 directory, fix mode and group, then rename into place.

        The socket is never reachable with looser permissions (no window), and the process-wide
        umask is left alone (other threads may be creating files at the same moment).
        """
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        if os.path.lexists(self.path) and not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise AgentStartError(f"agent: {self.path} exists and is not a socket; not replacing it")
        private = tempfile.mkdtemp(prefix=".hb", dir=parent)
        tmp_path = os.path.join(private, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp_path)
            os.chmod(tmp_path, self.mode)
            if self._gid is not None:
                os.chown(tmp_path, -1, self._gid)
            os.replace(tmp_path, self.path)
            st = os.lstat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise AgentStartError(f"agent: cannot listen on {self.path}: {exc}") from exc
        finally:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
            os.rmdir(private)
        return sock

    # --- the selector loop ---------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sel is not None
        while not self._stopping:
            try:
                events = self._sel.select()
            except OSError:  # pragma: no cover - the selector was closed under us
                return
            for key, _ in events:
                try:
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        return
                    else:
                        self._read(key.data)
                except Exception:  # never let one bad peer kill the receiver
                    log.exception("agent heartbeat receiver error")

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        # Bounded per wake-up so the listener cannot starve reads from established connections.
        for _ in range(self.max_connections):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off to the next wake-up
                log.warning("agent heartbeat accept failed: %s", exc)
                return
            pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
            peer = Peer(pid, uid, gid)
            if not self._allowed(peer):
                self.counters.rejected += 1
                log.warning("agent heartbeat socket: rejected peer pid %d uid %d gid %d", pid, uid, gid)
                sock.close()
                continue
            if len(self._conns) >= self.max_connections and not self._evict_one():
                self.counters.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            self._conns[sock.fileno()] = conn = _Conn(sock, peer, self.is_agent(pid))
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.counters.accepted += 1

    def _allowed(self, peer: Peer) -> bool:
        if peer.uid in (0, os.getuid()):
            return True
        if self._gid is None:
            return False
        if peer.gid == self._gid:
            return True
        try:
            return pwd.getpwuid(peer.uid).pw_name in self._members
        except KeyError:
            return False

    def _evict_one(self) -> bool:
        """Close the least recently active connection that is not the Agent's; False if none."""
        candidates = [c for c in self._conns.values() if not c.agent]
        if not candidates:
            return False
        self._close(min(candidates, key=lambda c: c.last_active))
        self.counters.evicted += 1
        return True

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        if self._sel is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        conn.buf += data
        start = 0
        while True:
            end = conn.buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(conn.buf[start:end]).strip()
            start = end + 1
            if not line:
                continue
            if len(line) > self.max_line:
                self._invalid(conn, f"line longer than {self.max_line} bytes")
                self._close(conn)
                return
            if not self._handle_line(line, conn):
                self._close(conn)
                return
        del conn.buf[:start]
        if len(conn.buf) > self.max_line:
            self._invalid(conn, f"line longer than {self.max_line} bytes")
            self._close(conn)

    def _handle_line(self, line: bytes, conn: _Conn) -> bool:
        try:
            hb = parse_heartbeat(line, conn.peer)
        except InvalidHeartbeat as exc:
            self._invalid(conn, str(exc))
            return False
        self.counters.lines += 1
        self.on_heartbeat(hb)
        return True

    def _invalid(self, conn: _Conn, why: str) -> None:
        self.counters.invalid += 1
        # Debug only: a hostile peer must not be able to flood the daemon's log.
        log.debug("agent heartbeat from pid %d dropped: %s", conn.peer.pid, why)
