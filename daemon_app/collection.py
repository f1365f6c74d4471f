"""Runs `collect` hooks with isolation: each collector on its own worker thread.

A collector that raises or overruns its timeout is logged with D5001 and its name, and the round
goes on without it. A collector still stuck from an earlier round is not called again until it
returns (no thread pile-up). A worker lives across rounds that come quickly (starting a thread per
collector per round costs more than the built-in collectors themselves) and ends after
WORKER_IDLE_EXIT seconds without work: at the default 60 s interval the idle daemon holds no
collector threads between rounds (four fewer threads), and the next round starts them again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon_app.config import format_duration
from daemon_app.errors import CollectError
from daemon_app.metrics import CollectContext, Metrics

log = logging.getLogger(__name__)

WORKER_IDLE_EXIT = 5.0  # seconds a collector's worker thread waits for its next call before it ends


@dataclass
class Outcome:
    """What one collector did in one round."""

    name: str
    metrics: list[Metrics] = field(default_factory=list)
    error: str = ""
    started: float = 0.0  # wall clock
    duration: float = 0.0  # seconds

    @property
    def ok(self) -> bool:
        return not self.error


class _Call:
    """One invocation of a collect hook; the worker fills it in and sets `done`."""

    __slots__ = ("ctx", "done", "result", "exc", "started", "finished")

    def __init__(self, ctx: CollectContext) -> None:
        self.ctx = ctx
        self.done = threading.Event()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.started = 0.0
        self.finished = 0.0


class _Worker:
    """Runs one collector's calls, one at a time, on a daemon thread started on demand."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self.current: _Call | None = None
        self._jobs: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _thread against a submit racing an idle exit
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        call = self.current
        return call is not None and not call.done.is_set()

    def submit(self, call: _Call) -> None:
        call.started = time.monotonic()
        self.current = call
        with self._lock:
            self._jobs.put(call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name=f"collect:{self.name}")
                self._thread.start()

    def retire(self) -> None:
        """End the thread once its current call (if any) returns."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)

    def _next(self) -> _Call | None:
        """The next call; None when the thread should end (retired, or idle too long)."""
        while True:
            try:
                return self._jobs.get(timeout=WORKER_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return None

    def _loop(self) -> None:
        while (call := self._next()) is not None:
            try:
                call.result = self.fn(ctx=call.ctx)
            except BaseException as exc:  # reported to the round, never kills the daemon
                call.exc = exc
            finally:
                call.finished = time.monotonic()
                call.done.set()
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None


def _as_list(result: Any) -> list[Metrics]:
    if result is None:
        return []
    items = result if isinstance(result, (list, tuple)) else [result]
    for item in items:
        if not isinstance(item, Metrics):
            raise TypeError(f"collect returned {type(item).__name__}, expected Metrics")
    return list(items)


Call = tuple[str, Callable[..., Any], Any, float]  # name, hook, its collector config, timeout


def enabled_calls(cfg: Any, implementations: Iterable[tuple[str, Callable[..., Any]]]) -> list[Call]:
    """The `collect` implementations whose collector is enabled in `cfg`, ready for `run`."""
    calls = []
    for name, fn in implementations:
        ccfg = cfg.collector(name)
        if ccfg.enabled:
            calls.append((name, fn, ccfg, ccfg.timeout))
    return calls


class CollectorRunner:
    """Calls collector hooks; remembers the last outcome per collector for status and reports."""

    def __init__(self) -> None:
        self.last: dict[str, Outcome] = {}
        self._workers: dict[str, _Worker] = {}

    def _worker(self, name: str, fn: Callable[..., Any]) -> _Worker:
        worker = self._workers.get(name)
        if worker is None or worker.fn != fn:  # a reload may bring a new plugin object
            if worker is not None:
                worker.retire()
            worker = self._workers[name] = _Worker(name, fn)
        return worker

    def run(self, calls: Iterable[tuple[str, Callable[..., Any], Any, float]]) -> list[Outcome]:
        """Start every (name, fn, config, timeout) at once, then wait for each until its deadline."""
        pending: list[tuple[Outcome, _Call | None, float, float]] = []
        for name, fn, cfg, timeout in calls:
            outcome = Outcome(name, started=time.time())
            worker = self._worker(name, fn)
            if worker.busy:
                outcome.error = "still running since an earlier round (it timed out then)"
                pending.append((outcome, None, 0.0, timeout))
                continue
            deadline = time.monotonic() + timeout
            call = _Call(CollectContext(name=name, config=cfg, deadline=deadline))
            worker.submit(call)
            pending.append((outcome, call, deadline, timeout))
        outcomes = []
        for outcome, call, deadline, timeout in pending:
            if call is not None:
                self._settle(outcome, call, deadline, timeout)
            if outcome.error:
                err = CollectError(f"collector {outcome.name}: {outcome.error}")
                log.error(str(err), extra={"code": err.code, "collector": outcome.name})
                if call is not None and call.exc is not None:
                    log.debug("collector %s raised here:", outcome.name, exc_info=call.exc,
                              extra={"collector": outcome.name})
            self.last[outcome.name] = outcome
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _settle(outcome: Outcome, call: _Call, deadline: float, timeout: float) -> None:
        if not call.done.wait(max(0.0, deadline - time.monotonic())):
            outcome.error = f"timed out after {format_duration(timeout)}"
        elif call.exc is not None:
            outcome.error = f"raised {type(call.exc).__name__}: {call.exc}"
        else:
            try:
                outcome.metrics = _as_list(call.result)
            except TypeError as exc:
                outcome.error = str(exc)
        outcome.duration = (call.finished or time.monotonic()) - call.started

    def close(self) -> None:
        """Let every worker thread end (a stuck one ends when its call returns)."""
        for worker in self._workers.values():
            worker.retire()
        self._workers.clear()
