"""Network collector: per-interface counters from /proc/net/dev, filtered by `interfaces`."""

from __future__ import annotations

import psutil

from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import CollectContext, Metrics


class NetworkCollector:
    @hookimpl
    def collect(self, ctx: CollectContext) -> Metrics:
        wanted = set(ctx.config.interfaces)
        rows = []
        for name, c in sorted(psutil.net_io_counters(pernic=True, nowrap=True).items()):
            if wanted and name not in wanted:
                continue
            rows.append({
                "interface": name,
                "bytes_sent": c.bytes_sent,
                "bytes_recv": c.bytes_recv,
                "packets_sent": c.packets_sent,
                "packets_recv": c.packets_recv,
                "errin": c.errin,
                "errout": c.errout,
                "dropin": c.dropin,
                "dropout": c.dropout,
            })
        return Metrics("network", {"interfaces": rows})
