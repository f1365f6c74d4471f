"""Heartbeat receiver: JSON lines from the Agent on a Unix socket (seed §3.3.3), hostile input bounded.

One `SocketLoop` thread serves non-blocking sockets. Every peer is checked with SO_PEERCRED; every
line is size-limited (a connection never holds more than MAX_LINE bytes, in any code path) and
depth-limited before it reaches the JSON parser; any failure while reading or parsing a line is
counted as invalid and drops its connection; a partial line held longer than PARTIAL_LINE_TIMEOUT
drops its connection too (slow senders cannot hold the slots); connections are capped, and when
the cap is reached the least recently active connection that is not the Agent's is evicted, so a
flood can neither grow memory without bound nor lock the real Agent out.
"""

from __future__ import annotations

import grp
import json
import logging
import math
import os
import pwd
import re
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon_app.compat import fromisoformat
from daemon_app.errors import AgentHealthError, AgentStartError
from daemon_app.socketloop import ACCEPT_PAUSE, SocketLoop

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # bytes in one line, its newline included
MAX_DEPTH = 32  # nesting of JSON arrays/objects in one line; a heartbeat needs 2
PARTIAL_LINE_TIMEOUT = 5.0  # seconds a connection may hold an unfinished line
MAX_CONNECTIONS = 64
MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT
MAX_MEMORY = 1 << 62  # bytes; anything larger is not a real RSS
MAX_CPU = 1e6  # percent (100 = one core)
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


class InvalidHeartbeat(AgentHealthError, ValueError):
    """D3003: a line that is not a heartbeat; the message says what is wrong (it goes to the debug log)."""


_TOKENS = re.compile(rb'[\[\]{}"\\]')


def json_depth(line: bytes) -> int:
    """The deepest nesting of arrays/objects in `line`, brackets inside strings not counted.

    One linear pass, no recursion: it must be safe on exactly the input that would crash a
    recursive parser (and on strings full of escaped quotes, which make a regex backtrack).
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return 0  # cannot be too deep: every ordinary heartbeat skips the scan
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _TOKENS.finditer(line):
        pos = match.start()
        if pos == escaped_at:
            continue
        char = line[pos]
        if in_string:
            if char == 0x5C:  # backslash: the next byte is escaped
                escaped_at = pos + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _excerpt(value: object, limit: int = 40) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "<huge integer>"
    return text if len(text) <= limit else text[:limit] + "..."


def parse_heartbeat(line: bytes, peer: Peer) -> Heartbeat:
    """Validate one line. Required: pid (int), timestamp (RFC 3339 string), version, status (strings).

    Optional: cpu (number, percent), memory (int, bytes). Unknown keys are ignored so Agents may add
    fields without breaking older daemons. Any input either parses or raises InvalidHeartbeat (D3003).
    """
    if len(line) > MAX_LINE:
        raise InvalidHeartbeat(f"line longer than {MAX_LINE} bytes")
    if json_depth(line) > MAX_DEPTH:
        raise InvalidHeartbeat(f"nested deeper than {MAX_DEPTH} levels")
    try:
        # NaN/Infinity are not JSON, and 1e999 would become inf: both refused here.
        obj = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
    except Exception as exc:  # any parser failure is the peer's, never the receiver's
        raise InvalidHeartbeat(f"not JSON: {type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise InvalidHeartbeat(f"must be a JSON object, got {type(obj).__name__}")
    pid = obj.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        raise InvalidHeartbeat(f"pid must be an integer from 1 to {MAX_PID}, got {_excerpt(pid)}")
    for key in ("timestamp", "version", "status"):
        value = obj.get(key)
        # Printable only: these strings reach `daemon status` on an operator's terminal.
        if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
            raise InvalidHeartbeat(f"{key} must be a non-empty printable string (<= 256 chars), got "
                                   f"{_excerpt(value)}")
    try:
        fromisoformat(obj["timestamp"])
    except ValueError:
        raise InvalidHeartbeat(f"timestamp must be RFC 3339, got {_excerpt(obj['timestamp'])}") from None
    cpu = obj.get("cpu", 0.0)
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 <= cpu <= MAX_CPU:
        raise InvalidHeartbeat(f"cpu must be a number from 0 to {MAX_CPU:g}, got {_excerpt(cpu)}")
    memory = obj.get("memory", 0)
    if isinstance(memory, bool) or not isinstance(memory, int) or not 0 <= memory <= MAX_MEMORY:
        raise InvalidHeartbeat(f"memory must be an integer from 0 to 2**62 (bytes), got {_excerpt(memory)}")
    return Heartbeat(pid, obj["timestamp"], obj["version"], obj["status"], float(cpu), memory, peer)


@dataclass
class _Conn:
    sock: socket.socket
    peer: Peer
    agent: bool  # the supervised Agent (or a descendant) at connect time: never evicted
    buf: bytearray = field(default_factory=bytearray)
    last_active: float = field(default_factory=time.monotonic)
    partial_since: float | None = None  # when the unfinished line in `buf` began arriving


@dataclass
class Counters:
    accepted: int = 0
    rejected: int = 0  # peer credentials not allowed
    evicted: int = 0  # closed to make room at the connection cap
    refused: int = 0  # new connections turned away at the cap (every open one was the Agent's)
    invalid: int = 0  # malformed, oversized, too deep or ill-typed lines (each closes its connection)
    stalled: int = 0  # closed while holding a partial line for longer than the partial-line timeout
    accept_errors: int = 0  # accept() failed (out of descriptors); accepting paused briefly each time
    lines: int = 0  # valid heartbeat lines, whoever sent them


class HeartbeatServer(SocketLoop[_Conn]):
    """Listens on `path`; calls `on_heartbeat(hb)` from its own thread for every valid line.

    `is_agent(peer_pid)` tells which connections belong to the supervised Agent (never evicted).
    The thread, accept (paused when out of descriptors), stop and teardown are `SocketLoop`'s.
    """

    def __init__(self, path: str, mode: int, group: str, on_heartbeat: Callable[[Heartbeat], None],
                 is_agent: Callable[[int], bool], *, max_connections: int = MAX_CONNECTIONS,
                 max_line: int = MAX_LINE, partial_timeout: float = PARTIAL_LINE_TIMEOUT) -> None:
        # Accepts per wake-up bounded by the cap, so the listener cannot starve established peers.
        super().__init__("agent-heartbeat", log, socket_file=path, accept_batch=max_connections)
        self.path = path
        self.mode = mode
        self.group = group
        self.on_heartbeat = on_heartbeat
        self.is_agent = is_agent
        self.max_connections = max_connections
        self.max_line = max_line
        self.partial_timeout = partial_timeout
        self.counters = Counters()
        self._gid: int | None = None
        self._members: frozenset[str] = frozenset()

    # --- lifecycle -----------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        """Bind (mode and group set before the socket appears at `path`)."""
        self._resolve_group()
        sock = self._bind()
        log.info("agent heartbeat socket listening on %s (mode %04o%s)", self.path, self.mode,
                 f", group {self.group}" if self.group else "")
        return sock

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
            sock.listen(128)
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

    # --- the protocol ----------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        """When the oldest partial line goes stale (None: no connection holds one)."""
        due = [c.partial_since + self.partial_timeout for c in self._conns.values()
               if c.partial_since is not None]
        return min(due) if due else None

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.partial_since is not None
                     and now - c.partial_since >= self.partial_timeout]:
            self.counters.stalled += 1
            log.debug("agent heartbeat from pid %d dropped: partial line held for %gs", conn.peer.pid,
                      self.partial_timeout)
            self._close(conn)

    def _accept_failed(self, exc: OSError) -> None:
        log.warning("D3001 agent heartbeat socket cannot accept (%s); pausing %gs", exc, ACCEPT_PAUSE,
                    extra={"code": "D3001"})
        self.counters.accept_errors += 1

    def _admit(self, sock: socket.socket) -> None:
        pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
        peer = Peer(pid, uid, gid)
        if not self._allowed(peer):
            self.counters.rejected += 1
            log.warning("agent heartbeat socket: rejected peer pid %d uid %d gid %d", pid, uid, gid)
            sock.close()
            return
        if len(self._conns) >= self.max_connections and not self._evict_one():
            self.counters.refused += 1
            sock.close()
            return
        sock.setblocking(False)
        self._watch(_Conn(sock, peer, self.is_agent(pid)))
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

    def _ready(self, conn: _Conn, events: int) -> None:
        """Any failure while reading or parsing is the peer's line being invalid: count it, hang up."""
        try:
            self._read(conn)
        except Exception as exc:
            self._invalid(conn, f"{type(exc).__name__}: {str(exc)[:200]}")
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        # Never read more than fits under the cap: the buffer cannot outgrow max_line in any path.
        room = self.max_line - len(conn.buf)
        try:
            data = conn.sock.recv(room)
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
            if not self._handle_line(line, conn):
                self._close(conn)
                return
        del conn.buf[:start]
        if len(conn.buf) >= self.max_line:  # full and still no newline: the line is too long
            self._invalid(conn, f"line longer than {self.max_line} bytes")
            self._close(conn)
            return
        if not conn.buf:
            conn.partial_since = None
        elif start or conn.partial_since is None:
            conn.partial_since = conn.last_active  # a new partial line starts its clock now

    def _handle_line(self, line: bytes, conn: _Conn) -> bool:
        try:
            hb = parse_heartbeat(line, conn.peer)
        except InvalidHeartbeat as exc:
            self._invalid(conn, str(exc))
            return False
        self.counters.lines += 1
        try:
            self.on_heartbeat(hb)
        except Exception:  # our own consumer failed: the line was fine, keep the connection
            log.exception("agent heartbeat handler failed")
        return True

    def _invalid(self, conn: _Conn, why: str) -> None:
        self.counters.invalid += 1
        # Debug only: a hostile peer must not be able to flood the daemon's log.
        log.debug("agent heartbeat from pid %d dropped: %s", conn.peer.pid, why)
