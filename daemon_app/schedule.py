"""The engine's timed work: periodic tasks on monotonic intervals, and the work in flight that
shutdown waits for. Both belong to the engine's thread (WorkTracker may be used from any thread)."""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon_app.errors import ControlError


class EngineStopping(ControlError):
    """The engine is shutting down and takes no new work."""


class WorkTracker:
    """Work in flight (a collection, a report, an update thread): shutdown waits until it is done."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: dict[int, str] = {}
        self._seq = 0
        self.closed = False

    def begin(self, what: str) -> int:
        with self._cond:
            if self.closed:
                raise EngineStopping(f"the daemon is stopping; not starting {what}")
            self._seq += 1
            self._active[self._seq] = what
            return self._seq

    def end(self, token: int) -> None:
        with self._cond:
            self._active.pop(token, None)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def active(self) -> list[str]:
        with self._cond:
            return list(self._active.values())

    def wait_idle(self, deadline: float, tick: Callable[[], None], tick_every: float) -> list[str]:
        """Block until nothing is in flight or the deadline passes; call `tick` now and then."""
        with self._cond:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, tick_every))
                tick()
            return list(self._active.values())


@dataclass(order=True)
class _Task:
    due: float
    seq: int
    name: str = field(compare=False)
    interval: float = field(compare=False)
    fn: Callable[[], None] = field(compare=False)
    jitter: float = field(compare=False, default=0.0)
    base: float = field(compare=False, default=0.0)  # the planned time before jitter
    cancelled: bool = field(compare=False, default=False)


class Scheduler:
    """A heap of periodic tasks run on the engine's thread, each on its own monotonic interval."""

    def __init__(self) -> None:
        self._heap: list[_Task] = []
        self._seq = 0
        self.tasks: dict[str, _Task] = {}

    def every(self, name: str, interval: float, fn: Callable[[], None], *, first: float = 0.0,
              jitter: float = 0.0) -> None:
        """Run `fn` every `interval` s (plus up to `jitter`*interval), the first time after `first` s.

        Re-registering a task keeps its phase: a shorter interval applies at once, a longer one from
        the next run, so a reload does not trigger every task immediately.
        """
        now = time.monotonic()
        old = self.tasks.get(name)
        if old is not None:
            if old.interval == interval and old.jitter == jitter:
                old.fn = fn
                return
            base = min(old.base, now + interval)
            self.cancel(name)
        else:
            base = now + first
        self._seq += 1
        task = _Task(base, self._seq, name, interval, fn, jitter, base)
        self.tasks[name] = task
        heapq.heappush(self._heap, task)

    def cancel(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancelled = True

    def clear(self) -> None:
        for name in list(self.tasks):
            self.cancel(name)

    def next_due(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].due if self._heap else None

    def run_due(self) -> list[_Task]:
        """Pop the tasks that are due and reschedule them; the caller runs them."""
        now = time.monotonic()
        ran = []
        while self._heap and (self._heap[0].cancelled or self._heap[0].due <= now):
            task = heapq.heappop(self._heap)
            if not task.cancelled:
                ran.append(task)
        for task in ran:
            # From the planned time, so intervals do not drift; missed beats are skipped, not caught
            # up; jitter spreads a fleet without accumulating.
            task.base = max(task.base + task.interval, now)
            task.due = task.base + task.interval * task.jitter * random.random()
            heapq.heappush(self._heap, task)
        return ran
