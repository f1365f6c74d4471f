"""daemon.pyz plugin: the system load averages over 1, 5 and 15 minutes (metric `loadavg`)."""

from __future__ import annotations

import os

from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import CollectContext, Metrics

__version__ = "1.0.0"


@hookimpl
def collect(ctx: CollectContext) -> Metrics:
    """Called every `collectors.loadavg.interval` (default 60s); must return before `ctx.deadline`."""
    load1, load5, load15 = os.getloadavg()
    return Metrics("loadavg", {"load1": load1, "load5": load5, "load15": load15})
