"""A mailbox: work handed to the one thread that owns some state, with a future for a caller that waits.

The engine's loop and the Agent supervisor's loop each own one; nothing else posts work across
threads. `post` never blocks and is safe in a signal handler (SimpleQueue.put is reentrant). The
owner drains the mailbox in its own loop: `take` waits for one letter (the engine sleeps there),
`run_pending` runs what is queued without waiting (the supervisor sleeps in its selector and is
woken by the `wake` callable given to the mailbox).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Letter = Callable[[], Any]


class _Request:
    """A letter whose sender waits on its result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def __call__(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:
            self.future.set_exception(exc)


class Mailbox:
    """Letters (callables) for one owner thread, run in the order they were posted."""

    def __init__(self, closed_error: Callable[[], BaseException],
                 wake: Callable[[], None] | None = None) -> None:
        self._letters: queue.SimpleQueue[Letter] = queue.SimpleQueue()
        self._closed_error = closed_error  # what a sender gets once the owner stopped taking letters
        self._wake = wake
        self._owner: threading.Thread | None = None
        self.closed = False

    def bind(self) -> None:
        """The calling thread becomes the owner: its own `call`s run at once instead of deadlocking."""
        self._owner = threading.current_thread()
        self.closed = False

    @property
    def on_owner(self) -> bool:
        # The Thread object, not its ident: a thread started after the owner died may be given
        # the same ident, and must not run the owner's work inline as if it were the owner.
        return threading.current_thread() is self._owner

    # --- senders, any thread ---------------------------------------------------------------------

    def post(self, letter: Letter) -> None:
        """Queue `letter` for the owner and return at once (signal-safe)."""
        self._letters.put(letter)
        if self._wake is not None:
            self._wake()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue `fn` for the owner; the future holds its result or its exception."""
        request = _Request(fn)
        if self.closed:
            request.future.set_exception(self._closed_error())
        else:
            self.post(request)
        return request.future

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` on the owner's thread and return its result (or raise its exception)."""
        if self.on_owner:
            return fn()
        return self.submit(fn).result(timeout)

    # --- the owner -------------------------------------------------------------------------------

    def take(self, timeout: float | None) -> Letter | None:
        """Wait up to `timeout` s (None: for ever) for the next letter; None when none came."""
        try:
            # No blocking get when nothing may be waited for: on CPython 3.9.2 (Debian 11) a
            # get() with a timeout of 0 was seen to sleep for good.
            if timeout is not None and timeout <= 0:
                return self._letters.get_nowait()
            return self._letters.get(timeout=timeout)
        except queue.Empty:
            return None

    def run_pending(self, run: Callable[[Letter], None] | None = None) -> None:
        """Run every letter queued now, without waiting; `run` wraps each (error isolation)."""
        while True:
            letter = self.take(0)
            if letter is None:
                return
            (run or _run_logged)(letter)

    def close(self) -> None:
        """The owner takes no more letters: senders waiting on queued ones get `closed_error`
        instead of waiting for their timeout, and later `submit`s fail at once."""
        self.closed = True
        while True:
            letter = self.take(0)
            if letter is None:
                return
            if isinstance(letter, _Request) and letter.future.set_running_or_notify_cancel():
                letter.future.set_exception(self._closed_error())


def _run_logged(letter: Letter) -> None:
    try:
        letter()
    except Exception:
        log.exception("task %s failed", getattr(letter, "__name__", letter))
