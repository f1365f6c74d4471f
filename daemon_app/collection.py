"""Runs `collect` hooks with isolation: each in its own thread, bounded by its timeout.

A collector that raises or overruns is logged with D5001 and its name, and the round goes on
without it. A collector still stuck from an earlier round is not started again (no thread pile-up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon_app.errors import CollectError
from daemon_app.metrics import CollectContext, Metrics

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    name: str
    metrics: list[Metrics] = field(default_factory=list)
    error: str = ""
    started: float = 0.0  # wall clock
    duration: float = 0.0  # seconds

    @property
    def ok(self) -> bool:
        return not self.error


class _Call:
    def __init__(self, fn: Callable[..., Any], ctx: CollectContext) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.started = time.monotonic()
        self.finished = 0.0
        self.thread = threading.Thread(target=self._run, args=(fn, ctx), daemon=True,
                                       name=f"collect:{ctx.name}")

    def _run(self, fn: Callable[..., Any], ctx: CollectContext) -> None:
        try:
            self.result = fn(ctx=ctx)
        except BaseException as exc:  # reported to the round, never kills the daemon
            self.exc = exc
        finally:
            self.finished = time.monotonic()
            self.done.set()


def _as_list(name: str, result: Any) -> list[Metrics]:
    if result is None:
        return []
    items = result if isinstance(result, list | tuple) else [result]
    for item in items:
        if not isinstance(item, Metrics):
            raise TypeError(f"collect returned {type(item).__name__}, expected Metrics")
    return list(items)


class CollectorRunner:
    """Calls collector hooks; remembers the last outcome per collector for status and reports."""

    def __init__(self) -> None:
        self.last: dict[str, Outcome] = {}
        self._stuck: dict[str, _Call] = {}

    def run(self, calls: Iterable[tuple[str, Callable[..., Any], Any, float]]) -> list[Outcome]:
        """Start every (name, fn, config, timeout) at once, then wait for each until its deadline."""
        started: list[tuple[str, _Call | None, float, float, str]] = []
        for name, fn, cfg, timeout in calls:
            t0 = time.monotonic()
            stuck = self._stuck.get(name)
            if stuck is not None and not stuck.done.is_set():
                started.append((name, None, t0, time.time(), "still running since an earlier round"))
                continue
            self._stuck.pop(name, None)
            call = _Call(fn, CollectContext(name=name, config=cfg, deadline=t0 + timeout))
            call.thread.start()
            started.append((name, call, t0 + timeout, time.time(), ""))
        outcomes = []
        for name, call, deadline, wall, early_error in started:
            outcome = Outcome(name, started=wall)
            if call is None:
                outcome.error = early_error
            elif not call.done.wait(max(0.0, deadline - time.monotonic())):
                self._stuck[name] = call
                outcome.error = "timed out"
            elif call.exc is not None:
                outcome.error = f"{type(call.exc).__name__}: {call.exc}"
            else:
                try:
                    outcome.metrics = _as_list(name, call.result)
                except TypeError as exc:
                    outcome.error = str(exc)
            if call is not None:
                outcome.duration = (call.finished or time.monotonic()) - call.started
            if outcome.error:
                err = CollectError(f"collector {name}: {outcome.error}")
                log.error(str(err), extra={"code": err.code, "collector": name})
            self.last[name] = outcome
            outcomes.append(outcome)
        return outcomes
