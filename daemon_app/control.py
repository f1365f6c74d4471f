"""Local control socket: JSON-lines requests from the CLI (`daemon status`, `reload`, ...) to the daemon.

Protocol, one JSON object per line each way, several requests per connection allowed:
    -> {"cmd": "status", "args": {}}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": "what went wrong", "code": "D1004"}
The socket is created with mode 0600 (umask at bind, so there is no moment it is wider) and every
peer's credentials are checked (SO_PEERCRED): only the daemon's own user or root may talk to it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon_app import fsutil
from daemon_app.errors import ConfigValidateError, ControlError, DaemonError
from daemon_app.socketloop import ACCEPT_PAUSE, STOP_TIMEOUT, Connection, SocketLoop

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
MAX_CLIENTS = 8
IDLE_TIMEOUT = 30.0
_UCRED = struct.Struct("3i")  # pid, uid, gid

Handler = Callable[[dict[str, Any]], Any]
EngineCall = Callable[[Callable[[], Any], float], Any]


class NotRunning(ControlError):
    """No daemon answers on the control socket."""


@dataclass
class Command:
    fn: Handler
    on_engine_thread: bool
    timeout: float


class ControlServer(SocketLoop[Connection]):
    """Serves the control socket: a `SocketLoop` thread accepts, a short-lived thread per connection.

    Commands registered with `on_engine_thread=True` (the default) run on the engine's thread via
    `engine_call(fn, timeout)`, so they never race the loop; read-only ones (status) run here. A
    connection has its own thread, not a place in the loop, because a command may wait seconds
    for the engine; `stop()` ends those threads too.
    """

    def __init__(self, path: str, engine_call: EngineCall) -> None:
        super().__init__("control", log, socket_file=path, accept_batch=MAX_CLIENTS)
        self.path = path
        self._engine_call = engine_call
        self.commands: dict[str, Command] = {}
        # True while the daemon's services are still starting: they register their commands as
        # they start, so a command not known yet may be known in a moment (said so, not "unknown").
        self.starting = False
        # Connections handed to their threads, at most MAX_CLIENTS: the loop adds, each thread
        # removes its own, stop() shuts down and joins what is left.
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._clients_lock = threading.Lock()

    @property
    def connections(self) -> int:
        """Open client connections (each served by its own thread, not watched by the loop)."""
        with self._clients_lock:
            return len(self._clients)

    def register(self, name: str, fn: Handler, *, on_engine_thread: bool = True,
                 timeout: float = 30.0) -> None:
        """Add a command: `fn(args) -> JSON-able result`; raise DaemonError to answer with its code."""
        self.commands[name] = Command(fn, on_engine_thread, timeout)

    # --- lifecycle ------------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        """Bind. The caller holds the instance lock, so a socket left here is stale."""
        size = len(os.fsencode(self.path))
        if size > 107:
            raise ConfigValidateError([f"daemon.control_socket: {self.path!r} is {size} bytes; a Unix "
                                       "socket path must be at most 107"])
        try:
            # Whoever can write the socket's directory can put their own socket in its place.
            fsutil.private_dir(os.path.dirname(os.path.abspath(self.path)), 0o750, tighten=False)
        except OSError as exc:
            raise ConfigValidateError([f"daemon.control_socket: {exc}"]) from None
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # umask, not chmod after bind: the socket never exists with wider permissions.
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ConfigValidateError([f"daemon.control_socket: cannot bind {self.path}: "
                                       f"{exc.strerror or exc}"]) from exc
        finally:
            os.umask(old)
        sock.listen(16)
        log.debug("control socket listening on %s", self.path)
        return sock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigValidateError([f"daemon.control_socket: {self.path} exists and is not a socket; "
                                       "remove it or choose another path"])
        os.unlink(self.path)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the socket, then end the connection threads: a client waiting for its next request
        is woken by a shutdown of its connection; one inside a command gets until `timeout`."""
        deadline = time.monotonic() + timeout
        super().stop(timeout)
        with self._clients_lock:
            threads = list(self._clients.values())
            for conn in self._clients:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the peer is gone already
        for thread in threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # --- serving --------------------------------------------------------------------------------

    def _accept_failed(self, exc: OSError) -> None:
        log.error("D1004 control socket accept failed: %s; pausing %gs", exc, ACCEPT_PAUSE,
                  extra={"code": "D1004"})

    def _admit(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._client, args=(conn,), name="control-client", daemon=True)
        with self._clients_lock:
            busy = len(self._clients) >= MAX_CLIENTS
            if not busy:
                self._clients[conn] = thread
        if busy:
            conn.settimeout(1.0)
            try:
                self._reply(conn, _error(ControlError("busy: too many control connections")))
            except OSError:
                pass
            conn.close()
            return
        try:
            thread.start()
        except BaseException:
            with self._clients_lock:
                del self._clients[conn]
            raise  # the loop closes the connection and logs why

    def _client(self, conn: socket.socket) -> None:
        try:
            uid = self._peer_uid(conn)
            if uid not in (0, os.getuid()):
                log.warning("D1004 control: refused a connection from uid %d", uid, extra={"code": "D1004"})
                self._refuse(conn, _error(ControlError(f"permission denied for uid {uid}")))
                return
            conn.settimeout(IDLE_TIMEOUT)
            with conn.makefile("rb") as reader:
                while True:
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE:
                        self._reply(conn, _error(ControlError(f"request longer than {MAX_LINE} bytes")))
                        return
                    if line.strip():
                        self._reply(conn, self.execute(line))
        except OSError:
            return  # the client went away, idled out or was shut down by stop(); nothing to answer
        finally:
            with self._clients_lock:  # out of the table before closing: stop() shuts down only live ones
                self._clients.pop(conn, None)
            conn.close()

    @staticmethod
    def _peer_uid(conn: socket.socket) -> int:
        _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return uid

    @staticmethod
    def _reply(conn: socket.socket, response: dict[str, Any]) -> None:
        conn.sendall(json.dumps(response, default=str).encode() + b"\n")

    @classmethod
    def _refuse(cls, conn: socket.socket, response: dict[str, Any]) -> None:
        """Answer, then wait (briefly) for the client to finish: closing at once could break its
        request with EPIPE before it reads why it was refused."""
        cls._reply(conn, response)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass

    def execute(self, line: bytes) -> dict[str, Any]:
        """One request line -> one response object (never raises)."""
        try:
            request = json.loads(line)
        except ValueError as exc:
            return _error(ControlError(f"request is not JSON: {exc}"))
        except RecursionError:  # not a ValueError: unanswered, it would end the client's thread
            return _error(ControlError("request is not JSON the daemon takes: nested too deep"))
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error(ControlError('request must be an object like {"cmd": "status", "args": {}}'))
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return _error(ControlError("args must be an object"))
        command = self.commands.get(request["cmd"])
        if command is None and self.starting:
            return _error(ControlError(f"{request['cmd'][:60]!r}: the daemon is still starting (its services "
                                       "add their commands as they start); try again in a moment"))
        if command is None:
            known = ", ".join(sorted(self.commands))
            return _error(ControlError(f"unknown command {request['cmd'][:60]!r}; "
                                       f"this daemon knows: {known}"))
        try:
            if command.on_engine_thread:
                result = self._engine_call(lambda: command.fn(args), command.timeout)
            else:
                result = command.fn(args)
        except DaemonError as exc:
            return _error(exc)
        except TimeoutError:
            return _error(ControlError(f"{request['cmd']}: no answer from the engine within "
                                       f"{command.timeout:g}s"))
        except Exception as exc:
            log.exception("D1004 control command %s failed", request["cmd"], extra={"code": "D1004"})
            return _error(ControlError(f"{request['cmd']} failed: {type(exc).__name__}: {exc}"))
        return {"ok": True, "result": result}


def _error(exc: DaemonError) -> dict[str, Any]:
    return {"ok": False, "error": exc.message, "code": exc.code}


def request(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """Send one command to the daemon at `path` and return its result.

    Raises NotRunning when nobody listens there, ControlError (or the daemon's own code) otherwise.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"the daemon is not running (no control socket answers at {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as root or as the daemon's user") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
            line = sock.makefile("rb").readline(16 * 1024 * 1024)
        except TimeoutError:
            raise ControlError(f"{cmd}: the daemon did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"{cmd}: connection to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not line:
        raise ControlError(f"{cmd}: the daemon closed the connection without answering")
    response = json.loads(line)
    if not response.get("ok"):
        raise ControlError(response.get("error", "request failed"), code=response.get("code") or None)
    return response.get("result")
