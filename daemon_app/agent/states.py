"""The Agent's state and the one place it changes (as supervisord's `Subprocess.change_state`).

`change_state` checks that the transition is one the supervisor makes, sets the state, wakes the
threads waiting on it, and emits the state's event (`started`, `running`, ...), so no caller can
forget either or emit one twice. The other events (`restarting`, `unhealthy`, `updated`, ...) say
why, and are emitted by whoever knows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from daemon_app.agent.snapshot import AgentState

STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL = AgentState

# Where each state may go. A start from a stopped, FATAL, backed-off or just-exited Agent either
# spawns it (STARTING) or finds it cannot be executed (EXITED, again from EXITED when a restart fails
# too). An Agent already running when the daemon starts is adopted (STOPPED -> RUNNING).
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    STOPPED: frozenset({STARTING, RUNNING, EXITED}),
    STARTING: frozenset({RUNNING, STOPPING, EXITED}),
    RUNNING: frozenset({STOPPING, EXITED}),
    STOPPING: frozenset({STOPPED, EXITED}),
    EXITED: frozenset({STARTING, BACKOFF, FATAL, EXITED}),
    BACKOFF: frozenset({STARTING, EXITED, STOPPED}),
    FATAL: frozenset({STARTING, EXITED, STOPPED}),
}

# The event each state is entered with (docs/agent-protocol.md); STOPPING has none: its cause is
# the event that follows (`unhealthy` before it, `stopped` or `exited` after it).
EVENTS: dict[AgentState, str | None] = {
    STOPPED: "stopped", STARTING: "started", RUNNING: "running", BACKOFF: "backoff", STOPPING: None,
    EXITED: "exited", FATAL: "fatal",
}

Emit = Callable[..., Any]


class StateError(RuntimeError):
    """A transition the supervisor never makes: a bug in the supervisor, not in the Agent."""


class AgentStates:
    """The current state. Read from any thread; changed only by the supervisor's thread."""

    def __init__(self, cond: threading.Condition, emit: Emit) -> None:
        self.state = STOPPED
        self._cond = cond  # notified on every change (waiters: stop_agent, restart_agent)
        self._emit = emit  # emit(event_type, **fields), called after the state is set

    def change_state(self, new: AgentState, *, event: str | None = None, **fields: Any) -> None:
        """Enter `new` and emit its event (`event` names another one, e.g. "adopted")."""
        old = self.state
        if new not in TRANSITIONS[old]:
            raise StateError(f"agent: no transition from {old} to {new}")
        with self._cond:
            self.state = new
            self._cond.notify_all()
        kind = event or EVENTS[new]
        if kind is not None:
            self._emit(kind, **fields)

    def assert_in(self, *states: AgentState) -> None:
        """Raise StateError unless the state is one of `states` (supervisord's `_assertInState`)."""
        if self.state not in states:
            raise StateError(f"agent: in state {self.state}, expected one of "
                             f"{', '.join(str(s) for s in states)}")
