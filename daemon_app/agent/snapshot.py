"""What other parts read of the Agent supervisor: its state as an enum and a frozen snapshot.

Health and commit decisions (the update's heartbeat check, the engine's status line) read these
typed fields; the JSON dicts of `daemon status` and reports (`agent_status()`) stay the format at
those boundaries only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class AgentState(str, enum.Enum):  # noqa: UP042 (enum.StrEnum is Python 3.11+; the pyz runs on 3.9)
    """supervisord's process states, the names operators already know."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"

    def __str__(self) -> str:  # "RUNNING" in logs and f-strings on every Python, not "AgentState.RUNNING"
        return self.value

    @property
    def live(self) -> bool:
        """A process is up (it may not have proven itself healthy yet)."""
        return self in (AgentState.STARTING, AgentState.RUNNING)


@dataclass(frozen=True)
class LastExit:
    """How the previous Agent process ended: exit code or signal (both None when unknown)."""

    code: int | None
    signal: int | None
    at: str = ""

    def describe(self) -> str:
        if self.signal:
            return f"signal {self.signal}"
        if self.code is not None:
            return f"code {self.code}"
        return "unknown status"


@dataclass(frozen=True)
class AgentSnapshot:
    """The supervisor's view of the Agent at one moment."""

    pid: int
    state: AgentState
    version: str
    heartbeats_received: int
    restart_count: int
    last_exit: LastExit | None

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> AgentSnapshot:
        """From `AgentSupervisor.agent_status()`, the one place that builds both."""
        last = status.get("last_exit")
        last_exit = None
        if isinstance(last, Mapping):
            last_exit = LastExit(code=last.get("code"), signal=last.get("signal"),
                                 at=str(last.get("at") or ""))
        return cls(pid=int(status.get("pid") or 0), state=AgentState(status["state"]),
                   version=str(status.get("version") or ""),
                   heartbeats_received=int(status.get("heartbeats_received") or 0),
                   restart_count=int(status.get("restart_count") or 0), last_exit=last_exit)
