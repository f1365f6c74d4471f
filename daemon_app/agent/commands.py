"""Manager commands of type "agent": {"type": "agent", "action": start|stop|restart|reset, "id"}.

Parsing only: which action a command asks for, or why it is refused. The supervisor runs it.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon_app.errors import DaemonError

log = logging.getLogger(__name__)


class AgentAction(str, enum.Enum):  # noqa: UP042 (enum.StrEnum is Python 3.11+; the pyz runs on 3.9)
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    RESET = "reset"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class AgentCommand:
    id: Any  # the Manager's command id, only ever logged
    action: AgentAction


def parse_agent_command(command: Mapping[str, Any]) -> AgentCommand | None:
    """The command's action; None (logged with D3001) when it names no known action."""
    action = command.get("action")
    # A hostile or broken Manager may send any JSON value: only a known string is an action.
    if isinstance(action, str) and action in AgentAction._value2member_map_:
        return AgentCommand(command.get("id"), AgentAction(action))
    log.error("D3001 agent command %s: unknown action %.60r (expected start, stop, restart, reset)",
              command.get("id"), action, extra={"code": "D3001"})
    return None


def log_failure(command: AgentCommand, future: concurrent.futures.Future[Any]) -> None:
    """Once the action ran: log why it failed, with its D-code (the link answers the Manager)."""
    exc = future.exception()
    if exc is not None:
        code = exc.code if isinstance(exc, DaemonError) else "D3001"
        log.error("agent command %s (%s) failed: %s", command.id, command.action, exc, extra={"code": code})
