"""Notice a service thread that died, and say which service it was with the service's D-code.

A daemon that keeps running without its Manager link, saying nothing, is the worst way to fail
(a link thread that died on an ImportError did exactly that). The engine therefore treats the
long-lived threads of its services as part of them: a service's threads are the Thread objects
it holds as attributes (AgentSupervisor._thread, ManagerLink._thread, ...), so no service needs
to register anything. `ThreadDeaths` catches what a dying thread raised (threading.excepthook)
and wakes the engine; `dead_threads` finds the ones that ended without raising. The engine
decides what follows (engine.Engine._check_services): fail the start, restart, or report.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from daemon_app.errors import (
    AgentStartError,
    DaemonError,
    ManagerConnectError,
    UpdateApplyError,
)

log = logging.getLogger(__name__)

# The D-code a service's failure carries, by Service.name.
ERRORS: dict[str, type[DaemonError]] = {
    "agent": AgentStartError,  # D3001
    "manager": ManagerConnectError,  # D2001
    "update": UpdateApplyError,  # D4003
}


def service_error(name: str, what: str) -> DaemonError:
    """`what` (e.g. "cannot start: ImportError: ...") as the D-coded error of service `name`."""
    return ERRORS.get(name, DaemonError)(f"{name} {what}")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def held_threads(service: Any) -> list[threading.Thread]:
    """The started threads a service holds as attributes."""
    return [value for value in vars(service).values()
            if isinstance(value, threading.Thread) and value.ident is not None]


def dead_threads(service: Any) -> list[threading.Thread]:
    return [thread for thread in held_threads(service) if not thread.is_alive()]


class ThreadDeaths:
    """Records what each thread that died of an exception raised, and calls `on_death` (the
    engine's wake-up) so that a dead service is noticed at once, not on the next periodic check."""

    def __init__(self, on_death: Callable[[], None]) -> None:
        self._on_death = on_death
        self._lock = threading.Lock()
        self._why: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()
        self._previous: Any = None

    def install(self) -> None:
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def uninstall(self) -> None:
        if threading.excepthook == self._hook:
            threading.excepthook = self._previous

    def why(self, thread: threading.Thread) -> str:
        """What `thread` died of: its exception, or that it ended without one."""
        with self._lock:
            return self._why.get(thread, f"thread {thread.name} ended")

    def _hook(self, args: Any) -> None:
        if args.exc_type is SystemExit:
            return
        thread = args.thread
        with self._lock:
            if thread is not None:
                self._why[thread] = f"thread {thread.name} died: {args.exc_type.__name__}: {args.exc_value}"
        log.error("thread %s died", getattr(thread, "name", "?"),
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        try:
            self._on_death()
        except Exception:  # the engine is going away; the periodic check is moot then
            pass
