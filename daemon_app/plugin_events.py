"""Delivers Agent events to `on_agent_event` plugins on their own thread, never the supervisor's.

The supervisor posts an event and goes on at once: a plugin that sleeps or hangs delays only other
plugins' events, never a restart. The queue is bounded; when it is full the oldest event is dropped
and counted (`status()`, shown by `daemon status` under "plugin_events"), and the first drop of a
run of drops is logged with D5001 and the name of the plugin holding the thread.
The thread starts with the first event and ends after `IDLE_EXIT` seconds without one, so an idle
daemon carries no thread for it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
IDLE_EXIT = 30.0

# deliver(event, busy) calls every plugin in turn; busy(name) says which one holds the thread.
Busy = Callable[[str], None]
Deliver = Callable[[dict[str, Any], Busy], None]


class EventDispatcher:
    """A bounded drop-oldest queue of events and the one thread that hands them to the plugins."""

    def __init__(self, deliver: Deliver, maxlen: int = QUEUE_SIZE, *, idle_exit: float = IDLE_EXIT) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._deliver = deliver
        self.maxlen = maxlen
        self._idle_exit = idle_exit
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy_with = ""  # the plugin being called right now, "" between calls
        self._busy_since = 0.0
        self._in_hand = False  # an event taken off the queue and not yet delivered to every plugin
        self._dropping = False  # inside a run of drops: logged once at its start
        self.posted = 0
        self.delivered = 0
        self.dropped = 0

    def post(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks (beyond a short lock) and never raises."""
        with self._cond:
            self.posted += 1
            if len(self._queue) >= self.maxlen:
                self._queue.popleft()
                self.dropped += 1
                if not self._dropping:
                    self._dropping = True
                    holder = self._busy_with or "?"
                    held = time.monotonic() - self._busy_since if self._busy_with else 0.0
                    log.error("D5001 plugin events: queue full (%d); dropping the oldest until it drains "
                              "(plugin %s has been handling one event for %.1fs)", self.maxlen, holder, held,
                              extra={"code": "D5001", "plugin": holder, "hook": "on_agent_event"})
            self._queue.append(event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="plugin-events", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every event posted so far was handed to every plugin; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_hand:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def status(self) -> dict[str, Any]:
        with self._cond:
            busy = self._busy_with
            return {"queued": len(self._queue), "posted": self.posted, "delivered": self.delivered,
                    "dropped": self.dropped, "busy_with": busy or None,
                    "busy_for_s": round(time.monotonic() - self._busy_since, 1) if busy else None}

    def _busy(self, name: str) -> None:
        with self._cond:
            self._busy_with = name
            self._busy_since = time.monotonic()

    def _run(self) -> None:
        try:
            while self._next():
                pass
        finally:
            with self._cond:  # however it ended, the next post starts a new thread
                if self._thread is threading.current_thread():
                    self._thread = None
                self._in_hand = False
                self._cond.notify_all()

    def _next(self) -> bool:
        """Deliver one event; False when the queue stayed empty for `idle_exit` seconds."""
        with self._cond:
            if not self._queue:
                self._cond.wait(self._idle_exit)
            if not self._queue:
                self._thread = None  # under the lock: a post from now on starts a new thread
                return False
            event = self._queue.popleft()
            self._in_hand = True
            if not self._queue:
                self._dropping = False
        try:
            self._deliver(event, self._busy)
        except BaseException:  # deliver isolates each plugin; this is the last line of defence
            log.exception("D5001 plugin events: delivering %s failed", event.get("type"),
                          extra={"code": "D5001", "hook": "on_agent_event"})
        finally:
            with self._cond:
                self._busy_with = ""
                self._in_hand = False
                self.delivered += 1
                self._cond.notify_all()
        return True
