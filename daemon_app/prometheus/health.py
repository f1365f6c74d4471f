"""The daemon's own health as daemon_* series, from the `daemon status` document.

The input is what the control socket's `status` command answers (its top-level keys are stable;
docs/operations.md). Every field is type-checked: a section that is missing or shows an error
costs its own series, never the scrape.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from daemon_app.prometheus.exposition import COUNTER, GAUGE, Exposition

# The names supervisor.py and update/flow.py use (tests check they still agree); copied, not
# imported, so a scrape body does not pull the updater's crypto into memory.
AGENT_STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
UPDATE_STATES = ("none", "starting", "downloading", "verifying", "installing", "restarting", "watching",
                 "completed", "rolled_back", "failed")


def _num(section: Mapping[str, Any], key: str) -> int | float | None:
    value = section.get(key)
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (int, float)) else None


def _section(status: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = status.get(key)
    return value if isinstance(value, Mapping) else None


def unix_time(rfc3339: Any) -> float | None:
    """'2026-12-01T15:57:03.123456Z' (as metrics.rfc3339 writes it) -> Unix time; None otherwise."""
    if not isinstance(rfc3339, str) or len(rfc3339) > 40:
        return None
    try:
        when = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc).timestamp()  # noqa: UP017 (datetime.UTC is 3.11+)


def add_build_info(out: Exposition, version: str, build_id: str) -> None:
    python = ".".join(str(n) for n in sys.version_info[:3])
    out.add("daemon_build_info", GAUGE, "Always 1; the labels say which daemon build runs.", 1,
            {"version": version, "build_id": build_id, "python": python})


def add_health_series(out: Exposition, status: Mapping[str, Any]) -> None:
    """Add daemon_* series for what `status` shows: start time, reports, Manager link and outbox,
    Agent, collectors, update."""
    started = unix_time(status.get("started_at"))
    if started is not None:
        out.add("daemon_start_time_seconds", GAUGE, "When the daemon started, in Unix time.", started)
    reports = _num(status, "reports_built")
    if reports is not None:
        out.add("daemon_reports_built_total", COUNTER, "Reports built since the daemon started.", reports)
    last = unix_time(status.get("last_report"))
    if last is not None:
        out.add("daemon_last_report_timestamp_seconds", GAUGE, "When the last report was built.", last)
    _manager(out, _section(status, "manager"))
    _agent(out, _section(status, "agent"))
    _collectors(out, _section(status, "collectors") or {})
    _update(out, _section(status, "update"))


def _manager(out: Exposition, manager: Mapping[str, Any] | None) -> None:
    out.add("daemon_manager_configured", GAUGE, "1 when manager.address is set, 0 when stand-alone.",
            manager is not None)
    if manager is None:
        return
    for key, name, help_text in (
        ("connected", "daemon_manager_connected", "1 while the gRPC connection to the Manager is up."),
        ("registered", "daemon_manager_registered", "1 once the Manager accepted this node."),
        ("outbox_depth", "daemon_outbox_depth", "Reports waiting in the durable outbox."),
        ("outbox_bytes", "daemon_outbox_bytes", "Bytes the outbox holds."),
        ("outbox_max_bytes", "daemon_outbox_max_bytes", "manager.outbox.max_bytes."),
    ):
        value = _num(manager, key)
        if value is not None:
            out.add(name, GAUGE, help_text, value)
    dropped = _num(manager, "dropped")
    if dropped is not None:
        out.add("daemon_outbox_dropped_total", COUNTER,
                "Reports the full outbox dropped (oldest first) since it was created.", dropped)
    contact = unix_time(manager.get("last_contact"))
    if contact is not None:
        out.add("daemon_manager_last_contact_timestamp_seconds", GAUGE,
                "When the Manager last answered, in Unix time.", contact)


def _agent(out: Exposition, agent: Mapping[str, Any] | None) -> None:
    if agent is None:
        return
    state = agent.get("state")
    if isinstance(state, str):
        for name in AGENT_STATES:
            out.add("daemon_agent_state", GAUGE, "1 for the Agent's current supervisor state, 0 for "
                    "the others.", state == name, {"state": name})
    restarts = _num(agent, "restarts_total")
    if restarts is None:
        restarts = _num(agent, "restart_count")
    if restarts is not None:
        out.add("daemon_agent_restarts_total", COUNTER, "Agent restarts since the daemon started.", restarts)
    for key, name, kind, help_text in (
        ("heartbeats_received", "daemon_agent_heartbeats_total", COUNTER, "Valid heartbeats received."),
        ("heartbeats_invalid", "daemon_agent_heartbeats_invalid_total", COUNTER,
         "Malformed heartbeat lines (each closed its connection)."),
        ("memory_bytes", "daemon_agent_memory_bytes", GAUGE, "RSS of the Agent's process tree."),
        ("cpu_percent", "daemon_agent_cpu_percent", GAUGE,
         "CPU of the Agent's process tree, percent of one core."),
    ):
        value = _num(agent, key)
        if value is not None:
            out.add(name, kind, help_text, value)


def _collectors(out: Exposition, collectors: Mapping[str, Any]) -> None:
    for name, entry in collectors.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            continue
        labels = {"collector": name}
        duration = _num(entry, "duration_ms")
        if duration is not None:
            out.add("daemon_collector_last_duration_seconds", GAUGE,
                    "How long the collector's last run took.", round(duration / 1000.0, 6), labels)
        ok = entry.get("ok")
        if isinstance(ok, bool):
            out.add("daemon_collector_success", GAUGE, "1 when the collector's last run succeeded.", ok,
                    labels)
        ran = unix_time(entry.get("last_run"))
        if ran is not None:
            out.add("daemon_collector_last_run_timestamp_seconds", GAUGE,
                    "When the collector last started, in Unix time.", ran, labels)


def _update(out: Exposition, update: Mapping[str, Any] | None) -> None:
    state = update.get("state") if update is not None else "none"
    for name in UPDATE_STATES:
        out.add("daemon_update_state", GAUGE,
                "1 for the state of the latest update or rollback (none: no job since start).",
                state == name, {"state": name})
