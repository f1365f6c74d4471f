"""CPU collector: usage percent from the delta since the previous sample, never a blocking sleep."""

from __future__ import annotations

import psutil

from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import CollectContext, Metrics


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "Model", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


class CpuCollector:
    def __init__(self) -> None:
        self._cores = psutil.cpu_count() or 1
        self._model = _model_name()
        # The first sample is measured against boot (all-zero times): the average since boot.
        self._last: psutil._common.scputimes | None = None

    @hookimpl
    def collect(self, ctx: CollectContext) -> Metrics:
        now = psutil.cpu_times()
        before = self._last if self._last is not None else type(now)(*(0.0 for _ in now))
        usage = _busy_percent(before, now)
        self._last = now
        return Metrics("cpu", {
            "usage_percent": usage,
            "cores": self._cores,
            "model": self._model,
            "user": now.user,
            "system": now.system,
            "idle": now.idle,
        })


def _busy_percent(before: psutil._common.scputimes, after: psutil._common.scputimes) -> float:
    """Share of non-idle time between two samples, as psutil.cpu_percent(interval=None) computes it."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    if total <= 0:
        return 0.0
    return round(max(0.0, min(100.0, 100.0 * (total - idle) / total)), 2)
