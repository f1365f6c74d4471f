"""Every thread the daemon runs, with the reason it exists: `daemon status` lists them.

A thread whose name is not below is a bug to fix here (give it a name and a reason), and shows as
"unlisted". `os_threads` counts the kernel's view (/proc/self/task), which also holds threads that
native code starts without telling Python; at idle the two counts are equal.
"""

from __future__ import annotations

import os
import threading
from typing import Any

# name, or name prefix ending in ":" / "-", -> why the thread exists; "(ends)" marks short-lived ones.
REASONS: dict[str, str] = {
    "MainThread": "the engine: schedule, collection rounds, signals, reload, shutdown",
    "agent-supervisor": "starts the Agent, waits for its exit (pidfd), restarts it with backoff",
    "agent-heartbeat": "reads the Agent's heartbeat lines on its Unix socket",
    "control": "answers status, update and rollback on the control socket",
    "control-client": "(ends) one request on the control socket",
    "manager-link": "the Manager link's asyncio loop: register, heartbeats, reports, commands, keepalive",
    "manager-link-resolve": "(ends) one DNS lookup of the Manager's host name",
    "collect:": "runs one collector, so a hung one holds up only itself; ends after 5 s without work",
    "prometheus": "serves /metrics from the latest report (prometheus.enabled)",
    "disk-statvfs": "statvfs of each mount under a timeout, so a hung mount never blocks collection",
    "report:": "(ends) one report hook call, bounded by daemon.report_timeout",
    "update-": "(ends) one update or rollback job",
    "remote-config": "(ends) one Agent config push: check, swap, restart, verify, commit or roll back",
    "plugin-events": "hands Agent events to on_agent_event plugins, so a slow one never holds up "
                     "supervision; ends after 30 s without events",
}


def reason(name: str) -> str:
    if name in REASONS:
        return REASONS[name]
    for prefix, why in REASONS.items():
        if prefix.endswith((":", "-")) and name.startswith(prefix):
            return why
    return "unlisted"


def snapshot() -> dict[str, Any]:
    """{"count", "os_threads", "threads": [{"name", "reason"}]} for `daemon status`."""
    live = sorted(t.name for t in threading.enumerate())
    try:
        os_threads = len(os.listdir("/proc/self/task"))
    except OSError:
        os_threads = None
    return {"count": len(live), "os_threads": os_threads,
            "threads": [{"name": name, "reason": reason(name)} for name in live]}
