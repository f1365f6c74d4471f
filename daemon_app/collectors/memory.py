"""Memory collector: virtual memory and swap, as /proc/meminfo reports them."""

from __future__ import annotations

import psutil

from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import CollectContext, Metrics


class MemoryCollector:
    @hookimpl
    def collect(self, ctx: CollectContext) -> Metrics:
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return Metrics("memory", {
            "total": vm.total,
            "available": vm.available,
            "used": vm.used,
            "used_percent": vm.percent,
            "cached": getattr(vm, "cached", 0),
            "buffers": getattr(vm, "buffers", 0),
            "swap_total": swap.total,
            "swap_used": swap.used,
        })
