"""One thread serving one listening socket: its select loop, accept, deadlines, stop and teardown.

The daemon's three socket servers are subclasses that bind their listener and speak their protocol;
this base owns what each of them used to repeat:

- the thread (named, a daemon thread), its selector, and the `WakePipe` that stops it: `stop()`
  is the only call that crosses into a loop from another thread, and the wake pipe its only signal;
- accept, at most `accept_batch` per wake-up so a flood of connects cannot starve established
  connections; when accept fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS), the
  listener leaves the selector for ACCEPT_PAUSE, since the pending connection keeps it readable
  and polling again at once would spin a core;
- the connections it watches, by descriptor, each closed once; a protocol error on one connection
  (an exception from `_ready`) is logged and closes that connection, never the loop;
- one wake-up for the earliest deadline the protocol names (partial lines, timeouts), and no
  timeout at all when there is none: idle, the thread sleeps in the selector and costs nothing;
- `stop()`: safe before `start()`, twice, and from several threads; it joins the thread, closes
  every connection and the listener, and unlinks a Unix socket's file only while it is still the
  one this server bound (a newer daemon may have bound a fresh one at the same path).

Subclasses: `agent/heartbeat.py` (Agent heartbeat lines), `prometheus/server.py` (HTTP /metrics)
and `control.py`, whose commands may wait seconds for the engine thread: the loop only accepts,
and each connection gets its own short-lived thread, which `ControlServer.stop()` ends too.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
import time
from typing import Generic, Protocol, TypeVar

from daemon_app.wakeup import WakePipe

ACCEPT_PAUSE = 0.5  # seconds without accepting after accept() failed for want of descriptors
STOP_TIMEOUT = 5.0
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
# accept() failures that concern one connection only (it was reset before we took it): take the next.
_SKIP_ONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_LISTENER = object()  # selector data of the listening socket
_WAKE = object()  # ... and of the wake pipe


class Connection(Protocol):
    """What the loop needs of a subclass's per-connection record: the connected socket."""

    sock: socket.socket


C = TypeVar("C", bound=Connection)


class SocketLoop(Generic[C]):
    """The loop thread of one listening socket; subclasses supply the protocol.

    `_listen()` binds and returns the listening socket (called by `start()`). Protocol hooks,
    all called on the loop thread:
      `_admit(sock)`         a new connection: `_watch(conn)` it, hand it off, or close it
      `_ready(conn, events)` a watched connection is readable (READ) or writable (WRITE)
      `_deadline()`          monotonic time of the next timeout to act on, None when there is none
      `_expire(now)`         after every wake-up: close connections whose time is up
      `_accept_failed(exc)`  accept() failed for want of resources (log it, count it)
    """

    def __init__(self, thread_name: str, logger: logging.Logger, *, socket_file: str | None = None,
                 accept_batch: int = 64) -> None:
        self.thread_name = thread_name
        self.socket_file = socket_file  # a Unix socket's path: unlinked at stop while it is ours
        self.accept_batch = accept_batch
        self._log = logger
        self._conns: dict[int, C] = {}
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._waker: WakePipe | None = None
        self._thread: threading.Thread | None = None
        self._bound: tuple[int, int] | None = None  # (dev, inode) of socket_file as we bound it
        self._accept_resume: float | None = None  # set while accepting is paused
        self._lifecycle = threading.Lock()

    @property
    def connections(self) -> int:
        """Connections watched by the loop now."""
        return len(self._conns)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (the subclass's `_listen`) and start the thread; RuntimeError if already serving."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError(f"{self.thread_name}: already serving")
            listener = self._listen()
            try:
                listener.setblocking(False)
                if self.socket_file is not None:
                    st = os.lstat(self.socket_file)
                    self._bound = (st.st_dev, st.st_ino)
                self._sel = selectors.DefaultSelector()
                self._waker = WakePipe()
                self._listener = listener
                self._sel.register(listener, READ, _LISTENER)
                self._sel.register(self._waker, READ, _WAKE)
                self._accept_resume = None
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()
            except BaseException:
                self._thread = None
                self._listener = listener
                self._teardown()
                raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the thread, close every connection and the listener, unlink our socket file.

        Safe before start and when called again; waits at most `timeout` s for the thread.
        """
        with self._lifecycle:
            thread = self._thread
            if self._waker is not None:
                self._waker.wake()
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    self._log.warning("%s: the socket thread did not stop within %gs; closing under it",
                                      self.thread_name, timeout)
            self._thread = None
            self._teardown()

    def _teardown(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._conns.clear()
        if self._listener is not None:
            self._unlink_socket_file()
            self._listener.close()
            self._listener = None
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def _unlink_socket_file(self) -> None:
        bound, self._bound = self._bound, None
        if bound is None or self.socket_file is None:
            return
        try:
            st = os.lstat(self.socket_file)
            if (st.st_dev, st.st_ino) == bound:
                os.unlink(self.socket_file)
        except OSError:
            pass  # gone already, or not ours to remove

    # --- connections, for the protocol ----------------------------------------------------------

    def _watch(self, conn: C, events: int = READ) -> None:
        """Serve `conn` from the loop: `_ready(conn, events)` when it is readable/writable."""
        assert self._sel is not None
        self._sel.register(conn.sock, events, conn)
        self._conns[conn.sock.fileno()] = conn

    def _modify(self, conn: C, events: int) -> None:
        assert self._sel is not None
        self._sel.modify(conn.sock, events, conn)

    def _close(self, conn: C) -> None:
        """Stop watching `conn` and close its socket; a second call does nothing."""
        fd = conn.sock.fileno()
        if fd < 0:
            return
        if self._conns.get(fd) is conn:
            del self._conns[fd]
            if self._sel is not None:
                try:
                    self._sel.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
        conn.sock.close()

    # --- the protocol's hooks --------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        """A new listening socket, bound at `socket_file` when that is set."""
        raise NotImplementedError

    def _admit(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _ready(self, conn: C, events: int) -> None:
        raise NotImplementedError

    def _deadline(self) -> float | None:
        return None

    def _expire(self, now: float) -> None:
        return None

    def _accept_failed(self, exc: OSError) -> None:
        self._log.warning("%s: cannot accept (%s); pausing %gs", self.thread_name, exc, ACCEPT_PAUSE)

    # --- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        while True:
            try:
                events = sel.select(self._timeout())
            except (OSError, ValueError):  # closed under us: stop() gave up waiting for this thread
                return
            for key, mask in events:
                if key.data is _WAKE:
                    return
                if key.data is _LISTENER:
                    self._accept()
                else:
                    self._dispatch(key.data, mask)
            self._expire(time.monotonic())
            self._resume_accepting()

    def _timeout(self) -> float | None:
        due = self._deadline()
        if self._accept_resume is not None:
            due = self._accept_resume if due is None else min(due, self._accept_resume)
        return None if due is None else max(0.0, due - time.monotonic())

    def _dispatch(self, conn: C, mask: int) -> None:
        if self._conns.get(conn.sock.fileno()) is not conn:
            return  # closed earlier in this round (evicted, expired)
        try:
            self._ready(conn, mask)
        except Exception:  # one peer's trouble never ends the loop
            self._log.exception("%s: connection handler failed", self.thread_name)
            self._close(conn)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(self.accept_batch):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _SKIP_ONE:
                    continue
                self._pause_accepting(exc)
                return
            try:
                self._admit(sock)
            except Exception:
                self._log.exception("%s: a new connection failed", self.thread_name)
                if self._conns.get(sock.fileno()) is None:
                    sock.close()  # never leak the descriptor of a half-admitted peer

    def _pause_accepting(self, exc: OSError) -> None:
        assert self._listener is not None and self._sel is not None
        self._accept_failed(exc)
        self._sel.unregister(self._listener)
        self._accept_resume = time.monotonic() + ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        if self._accept_resume is not None and time.monotonic() >= self._accept_resume:
            assert self._listener is not None and self._sel is not None
            self._accept_resume = None
            self._sel.register(self._listener, READ, _LISTENER)
