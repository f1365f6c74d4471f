"""Agent supervisor (placeholder until the Agent supervision issue lands)."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class AgentSupervisor:
    """Engine Service. Interface the engine relies on: start(), stop(deadline), reload(cfg),
    status() -> dict, agent_status() -> dict (seed §4.2 for reports)."""

    name = "agent"

    def __init__(self, cfg: Any, engine: Any) -> None:
        self.cfg = cfg
        self.engine = engine

    def start(self) -> None:
        log.warning("agent supervision is not implemented yet; %s is not started", self.cfg.agent.binary_path)

    def stop(self, deadline: float) -> None:
        return None

    def reload(self, cfg: Any) -> None:
        self.cfg = cfg

    def status(self) -> dict[str, Any]:
        return self.agent_status()

    def agent_status(self) -> dict[str, Any]:
        return {"pid": 0, "state": "STOPPED", "version": "", "start_time": None, "cpu_percent": 0.0,
                "memory_bytes": 0, "restart_count": 0, "last_restart": None, "last_exit": None,
                "checked_at": time.time()}
