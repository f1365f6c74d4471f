"""Manager link (placeholder until the Manager link issue lands)."""

from __future__ import annotations

from typing import Any

from daemon_app.hookspecs import hookimpl


class ManagerLink:
    """Engine Service and `report` plugin. Interface: start(), stop(deadline), reload(cfg),
    status() -> dict; its `report` hook puts each report in the durable outbox."""

    name = "manager"

    def __init__(self, cfg: Any, engine: Any) -> None:
        self.cfg = cfg
        self.engine = engine

    def start(self) -> None:
        raise NotImplementedError("the Manager link is not implemented yet")

    def stop(self, deadline: float) -> None:
        return None

    def reload(self, cfg: Any) -> None:
        self.cfg = cfg

    def status(self) -> dict[str, Any]:
        return {}

    @hookimpl
    def report(self, report: dict[str, Any]) -> None:
        return None
