"""What other parts read of the Manager link: a frozen snapshot (the commit check of a self-update,
the engine's status line); the JSON dict of `daemon status` stays the format at that boundary only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LinkSnapshot:
    """The link's view of the Manager at one moment."""

    state: str
    connected: bool
    registered: bool
    acked_seq: int  # the highest report sequence number the Manager acknowledged
    last_seq: int
    outbox_depth: int

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> LinkSnapshot:
        """From `ManagerLink.status()`, until the link builds the snapshot itself."""
        return cls(state=str(status.get("state") or "?"), connected=bool(status.get("connected")),
                   registered=bool(status.get("registered")), acked_seq=int(status.get("acked_seq") or 0),
                   last_seq=int(status.get("last_seq") or 0),
                   outbox_depth=int(status.get("outbox_depth") or 0))
