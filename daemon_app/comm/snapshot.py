"""What other parts read of the Manager link: a frozen snapshot, built by `ManagerLink.snapshot()`
(the commit check of a self-update, the engine's status line); the JSON dict of `daemon status` is
the format at that boundary only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkSnapshot:
    """The link's view of the Manager at one moment."""

    state: str
    connected: bool
    registered: bool
    acked_seq: int  # the highest report sequence number the Manager acknowledged
    last_seq: int
    outbox_depth: int
