"""A self-pipe that wakes a thread blocked in select/poll: one for every loop that must be stoppable."""

from __future__ import annotations

import os
import threading


class WakePipe:
    """`wake()` from any thread makes `fileno()` readable until `drain()`; `close()` is idempotent."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # wake() and close() from different threads: without the lock a wake-up could be written to
        # whatever file next got the closed pipe's descriptor number. Reentrant, because wake() may
        # run in a signal handler that interrupted a wake() on the same thread.
        self._lock = threading.RLock()

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        with self._lock:
            if self._w >= 0:
                try:
                    os.write(self._w, b"x")
                except OSError:
                    pass  # a wake-up is already pending (pipe full)

    def drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        with self._lock:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r, self._w = -1, -1
