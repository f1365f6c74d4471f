"""Answering a Manager command from a service (updates, remote config): best effort, never raising."""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StatusSink(Protocol):
    def send_command_status(self, command_id: str, state: str, percent: float = 0.0, message: str = "",
                            result: dict[str, Any] | None = None) -> None: ...


def send_quietly(manager: StatusSink | None, command_id: str, state: str, percent: float, message: str,
                 result: dict[str, Any] | None) -> None:
    """Queue a command's status with the Manager link, if there is one and the command has an id; a
    failure to queue is logged, never raised: reporting must not break the work it reports on."""
    if manager is None or not command_id:
        return
    try:
        manager.send_command_status(command_id, state, percent, message, result)
    except Exception:
        log.exception("cannot queue the status of command %s for the manager", command_id)
