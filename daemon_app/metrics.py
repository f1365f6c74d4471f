"""The data a collector returns (seed §3.2.1 Metrics) and the context it is called with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon_app.compat import UTC


def rfc3339(ts: float | None = None) -> str:
    """Unix time -> '2026-11-29T05:07:19.123456Z' (UTC, RFC 3339)."""
    when = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Metrics:
    """One named group of values, as in the seed: name, timestamp, values."""

    name: str
    values: dict[str, Any]
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "timestamp": rfc3339(self.timestamp), "values": self.values}


@dataclass
class CollectContext:
    """What a `collect` hook is told: who it is, its config section, and when it must be done."""

    name: str
    config: Any
    deadline: float
