"""What each benchmark figure means, the budgets it is held to, and the peer ratios."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    what: str      # the row of the budget table this checks
    limit: float
    unit: str
    source: str    # where the budget is set
    limited_by: str  # what stands between us and the budget when it is missed


@dataclass(frozen=True)
class Ratio:
    ours: tuple[str, ...]  # our figure; the first one measured in the run is used
    theirs: str            # the peer's figure
    meaning: str


_LINK_RSS = ("Python objects of the modules loaded, measured import by import (RSS added, Python "
             "3.11): click, PyYAML, psutil, pluggy and importlib.metadata ~6.8 MB, the engine ~4.5 MB, "
             "asyncio with ssl (OpenSSL's libcrypto is ~4 MB of it) ~4.9 MB, the protobuf messages "
             "~2.7 MB, h2 and grpclib ~2.1 MB, the link with the SQLite outbox ~2.6 MB; the link's share "
             "is ~12 MB over the stand-alone daemon's. malloc_trim and MALLOC_ARENA_MAX were tried: "
             "under 1 MB, not worth it. Before: 49.1 MB on grpc.aio, whose C core alone held 12.3 MB")
_STANDALONE_AGENT_RSS = ("the Python 3.11 interpreter (~10.6 MB) and the modules loaded at start: "
                         "click, PyYAML, psutil, pluggy and importlib.metadata ~6.8 MB, the engine, "
                         "collectors and Agent supervisor ~4.5 MB, the rest Python objects of the "
                         "running services")

BUDGETS: dict[str, Budget] = {
    "idle_cpu_percent": Budget(
        "idle CPU (with Manager and Agent)", 0.1, "%", "README Budgets",
        "the daemon's periodic work (Agent heartbeats every 5 s, TLS file check every 5 s, STATUS line "
        "every 10 s, Agent health every 30 s, collection, report, Manager heartbeat and keepalive "
        "PING every 60 s)"),
    "idle_rss_mb": Budget("idle memory RSS (with Manager and Agent)", 38, "MB", "README Budgets", _LINK_RSS),
    "idle_standalone_agent_rss_mb": Budget(
        "idle memory RSS (stand-alone with Agent)", 26, "MB", "README Budgets", _STANDALONE_AGENT_RSS),
    "idle_threads": Budget(
        "threads at idle (with Manager and Agent)", 6, "", "README Budgets",
        "one per job that blocks: the engine, the Agent supervisor, its heartbeat socket, the control "
        "socket, the Manager link and the statvfs helper (collector workers end between rounds)"),
    "pyz_mb": Budget("size of daemon.pyz", 14.8, "MB", "issue #11 (the grpcio build)",
                     "the dependencies' files: cryptography (for update signatures) is the largest"),
    "standalone_cpu_percent": Budget(
        "idle CPU (stand-alone, no Manager)", 0.1, "%", "README Budgets",
        "collection rounds and the file reporter; the Python interpreter's own wake-ups"),
    "standalone_rss_mb": Budget(
        "idle memory RSS (stand-alone, no Manager)", 40, "MB", "README Budgets",
        "the Python 3.11 interpreter and the modules loaded at start (psutil, pluggy, PyYAML, click)"),
    "collect_ms_p99": Budget(
        "one collection round, all built-ins (p99)", 5, "ms", "README Budgets",
        "psutil's per-call /proc parsing and one statvfs per mount point; on a shared machine, "
        "scheduling delays land in the tail"),
    "report_ms_p99": Budget(
        "one report round trip, loopback (p99)", 10, "ms", "README Budgets",
        "the SQLite outbox commit (fsync) plus a TLS-wrapped gRPC call in Python; the Python "
        "Manager's own handling is part of the round trip"),
    "agent_restart_ms_max": Budget(
        "Agent crash -> new Agent started, first restart (worst sample)", 100, "ms", "README Budgets",
        "fork+exec of the Agent through subprocess in Python; on a busy machine the daemon's "
        "thread waits for a core"),
    "ready_s": Budget(
        "daemon start -> READY, warm pyz", 1.0, "s", "README Budgets",
        "Python interpreter start plus imports from the zipapp (grpcio, cryptography are deferred "
        "where possible); shiv's first-run extraction is excluded by measuring a warm pyz"),
    "outage_reports_lost": Budget(
        "reports lost across a Manager outage", 0, "reports", "README Budgets",
        "the outbox bound: when it is full the oldest reports are dropped (and counted)"),
    "prometheus_rss_delta_mb": Budget(
        "idle RSS added by prometheus.enabled (stand-alone)", 2, "MB", "issue #15",
        "the exporter's modules, its server thread's stack and one rendered body"),
    "self_update_reports_lost": Budget(
        "reports lost across a daemon self-update", 0, "reports", "README Budgets",
        "reports are enqueued in the durable outbox before the restart; a loss means a bug"),
}

# Units and meanings of every figure the suite knows; figures not listed get a unit from their suffix.
FIGURES: dict[str, tuple[str, str]] = {
    "collect_ms_p50": ("ms", "one collection round of all built-in collectors, median"),
    "collect_ms_p99": ("ms", "one collection round of all built-in collectors, 99th percentile"),
    "standalone_rss_mb": ("MB", "RSS of `daemon.pyz run` without Manager or Agent, settled"),
    "standalone_cpu_percent": ("%", "CPU of the stand-alone daemon over a window, % of one core"),
    "standalone_first_report_s": ("s", "start of the stand-alone daemon -> first report written"),
    "report_ms_p50": ("ms", "one report round trip to the Manager over loopback mTLS, median"),
    "report_ms_p99": ("ms", "one report round trip to the Manager over loopback mTLS, p99"),
    "outbox_enqueue_per_s": ("/s", "reports appended to the durable SQLite outbox per second"),
    "outbox_drain_per_s": ("/s", "reports read and acknowledged out of the outbox per second"),
    "fleet_reports_per_s": ("/s", "reports per second the reference Manager takes from many daemons"),
    "fleet_report_ms_p99": ("ms", "report round trip p99 while the fleet reports"),
    "fleet_manager_cpu_percent": ("%", "CPU of the reference Manager while the fleet reports"),
    "fleet_manager_rss_mb": ("MB", "RSS of the reference Manager with the fleet connected"),
    "agent_restart_ms_p50": ("ms", "kill -9 of the Agent -> new Agent process running, median"),
    "agent_restart_ms_max": ("ms", "kill -9 of the Agent -> new Agent process running, worst"),
    "heartbeats_per_s": ("/s", "Agent heartbeat lines the daemon takes per second"),
    "heartbeat_cpu_percent": ("%", "daemon CPU while taking heartbeats"),
    "update_download_s": ("s", "download of an update file"),
    "update_verify_s": ("s", "signature + SHA-256 verification of the update file"),
    "update_swap_s": ("s", "backup + atomic swap of the installed file"),
    "update_total_s": ("s", "a whole update end to end (Updater.run)"),
    "update_package_mb": ("MB", "size of the update file used"),
    "ready_s": ("s", "daemon start -> READY=1 sent to systemd, warm pyz, median"),
    "ready_s_min": ("s", "daemon start -> READY=1, fastest run"),
    "ready_s_max": ("s", "daemon start -> READY=1, slowest run"),
    "imports_s": ("s", "time the daemon spends importing modules at start (python -X importtime)"),
    "python_startup_s": ("s", "a bare Python interpreter's start, for scale"),
    "runs": ("", "daemon starts timed for ready_s"),
    "idle_rss_mb": ("MB", "RSS of daemon.pyz with a Manager and the sample Agent, highest from 60 to 180 s"),
    "idle_pss_mb": ("MB", "PSS (shared pages split) of the same daemon"),
    "idle_cpu_percent": ("%", "CPU of the same daemon over 120 s, % of one core"),
    "idle_threads": ("", "threads of the same daemon (every one named in `daemon status`)"),
    "idle_standalone_agent_rss_mb": ("MB", "RSS of daemon.pyz stand-alone with the sample Agent, highest "
                                            "from 60 to 180 s"),
    "idle_standalone_agent_pss_mb": ("MB", "PSS of the same stand-alone daemon"),
    "idle_standalone_agent_cpu_percent": ("%", "CPU of the same stand-alone daemon over 120 s"),
    "idle_standalone_agent_threads": ("", "threads of the same stand-alone daemon"),
    "idle_standalone_agent_wakeups_per_s": ("/s", "context switches of its threads per second"),
    "pyz_mb": ("MB", "size of dist/daemon.pyz (10^6 bytes)"),
    "idle_wakeups_per_s": ("/s", "context switches of all its threads per second: how often it wakes"),
    "agent_update_s": ("s", "Agent update command -> new Agent version heartbeating"),
    "agent_update_download_s": ("s", "pushed Agent update: download over mutual-TLS HTTPS"),
    "agent_update_verify_s": ("s", "pushed Agent update: size + SHA-256 of the package"),
    "agent_update_swap_s": ("s", "pushed Agent update: stop the Agent, back up, atomic swap"),
    "agent_update_restart_s": ("s", "pushed Agent update: new Agent started -> its version heartbeating"),
    "agent_update_package_mb": ("MB", "size of the Agent package pushed"),
    "config_push_committed_s": ("s", "good Agent config push -> completed, with a 1 s verify window"),
    "config_push_overhead_ms": ("ms", "the same minus the verify window: check, swap, Agent restart, answer"),
    "config_push_rollback_s": ("s", "Agent config that makes the Agent exit at start -> rolled_back"),
    "self_update_rounds": ("", "self-updates timed for self_update_s"),
    "self_update_s": ("s", "daemon self-update command -> new daemon registered"),
    "self_update_reports_lost": ("reports", "reports lost across a self-update"),
    "outage_reports_lost": ("reports", "reports lost across a Manager outage"),
    "outage_drain_s": ("s", "Manager back after an outage -> it holds every report built meanwhile"),
    "outage_reconnect_s": ("s", "Manager back after an outage -> the first report stored again"),
    "outage_reports_queued": ("reports", "reports waiting in the outbox when the Manager came back"),
    "peer_supervisord_restart_ms_p50": ("ms", "supervisord: kill -9 of the Agent -> new pid running, median"),
    "peer_supervisord_restart_ms_max": ("ms", "supervisord: kill -9 of the Agent -> new pid running, worst"),
    "peer_supervisord_rss_mb": ("MB", "RSS of supervisord supervising the Agent"),
    "peer_node_exporter_rss_mb": ("MB", "RSS of node_exporter (cpu, meminfo, diskstats, filesystem, netdev)"),
    "peer_node_exporter_pss_mb": ("MB", "PSS of node_exporter"),
    "peer_node_exporter_cpu_percent": ("%", "node_exporter CPU over a window, scraped once per our "
                                             "collection interval"),
    "peer_node_exporter_scrape_ms_p50": ("ms", "one HTTP GET /metrics of node_exporter, median"),
    "peer_node_exporter_scrape_ms_p99": ("ms", "one HTTP GET /metrics of node_exporter, p99"),
    "prometheus_rss_delta_mb": ("MB", "RSS with prometheus.enabled minus without, two stand-alone daemons "
                                      "measured side by side"),
    "prometheus_rss_mb": ("MB", "RSS of the stand-alone daemon with the exporter on, scraped every 15 s"),
    "prometheus_cpu_percent": ("%", "CPU of that daemon over the window, % of one core"),
    "prometheus_cpu_delta_percent": ("%", "its CPU minus the same daemon's without the exporter"),
    "prometheus_scrape_ms_p50": ("ms", "one GET /metrics of daemon.pyz (new connection), median"),
    "prometheus_scrape_ms_p99": ("ms", "one GET /metrics of daemon.pyz (new connection), p99"),
    "prometheus_body_bytes": ("bytes", "size of the /metrics body"),
    "prometheus_series": ("", "series in the /metrics body"),
    "ready_s_py39": ("s", "start -> READY, stand-alone, Debian 11's python3 3.9 (chroot)"),
    "ready_s_py311": ("s", "start -> READY, stand-alone, this machine's python3 3.11"),
    "ready_s_py313": ("s", "start -> READY, stand-alone, Debian 13's python3 3.13 (chroot)"),
    "idle_rss_mb_py39": ("MB", "idle RSS, stand-alone, Debian 11's python3 3.9 (chroot)"),
    "idle_rss_mb_py311": ("MB", "idle RSS, stand-alone, this machine's python3 3.11"),
    "idle_rss_mb_py313": ("MB", "idle RSS, stand-alone, Debian 13's python3 3.13 (chroot)"),
}

# Which script is expected to produce which figures: a missing script shows as "not measured".
EXPECTED: dict[str, tuple[str, ...]] = {
    "bench_collect": ("collect_ms_p50", "collect_ms_p99"),
    "bench_idle_standalone": ("standalone_rss_mb", "standalone_cpu_percent", "standalone_first_report_s"),
    "bench_report": ("report_ms_p50", "report_ms_p99"),
    "bench_outbox": ("outbox_enqueue_per_s", "outbox_drain_per_s"),
    "bench_fleet": ("fleet_reports_per_s", "fleet_report_ms_p99", "fleet_manager_cpu_percent",
                    "fleet_manager_rss_mb"),
    "bench_agent": ("agent_restart_ms_p50", "agent_restart_ms_max", "heartbeats_per_s",
                    "heartbeat_cpu_percent"),
    "bench_update": ("update_download_s", "update_verify_s", "update_swap_s"),
    "bench_ready": ("ready_s",),
    "bench_idle": ("idle_rss_mb", "idle_pss_mb", "idle_cpu_percent", "idle_threads", "idle_wakeups_per_s",
                   "idle_standalone_agent_rss_mb", "idle_standalone_agent_pss_mb",
                   "idle_standalone_agent_threads", "pyz_mb"),
    "bench_agent_update": ("agent_update_s",),
    "bench_config_push": ("config_push_committed_s", "config_push_overhead_ms", "config_push_rollback_s"),
    "bench_self_update": ("self_update_s", "self_update_reports_lost"),
    "bench_outage": ("outage_reports_lost", "outage_drain_s"),
    "bench_prometheus": ("prometheus_rss_delta_mb", "prometheus_cpu_percent", "prometheus_scrape_ms_p99"),
    "bench_peer_supervisord": ("peer_supervisord_restart_ms_p50",),
    "bench_peer_node_exporter": ("peer_node_exporter_rss_mb", "peer_node_exporter_cpu_percent",
                                 "peer_node_exporter_scrape_ms_p50", "peer_node_exporter_scrape_ms_p99"),
    "bench_interpreters": ("ready_s_py39", "ready_s_py311", "ready_s_py313", "idle_rss_mb_py39",
                           "idle_rss_mb_py311", "idle_rss_mb_py313"),
}

RATIOS: dict[str, Ratio] = {
    "ratio_agent_restart_vs_supervisord": Ratio(
        ("agent_restart_ms_p50",), "peer_supervisord_restart_ms_p50",
        "our Agent restart median / supervisord's (below 1: we restart faster)"),
    "ratio_collect_vs_node_exporter_scrape": Ratio(
        ("collect_ms_p50",), "peer_node_exporter_scrape_ms_p50",
        "our collection round median / one node_exporter scrape median (theirs includes HTTP and "
        "text encoding, ours is the in-process round)"),
    "ratio_idle_rss_vs_node_exporter": Ratio(
        ("idle_rss_mb", "standalone_rss_mb"), "peer_node_exporter_rss_mb",
        "our idle RSS / node_exporter's idle RSS (ours also supervises and reports over gRPC)"),
}

_SUFFIX_UNITS = (("_per_s", "/s"), ("_percent", "%"), ("_mb", "MB"), ("_lost", "reports"),
                 ("_ms", "ms"), ("_s", "s"))


def unit_of(key: str) -> str:
    """The unit of a figure: from FIGURES, else from its name (…_ms_p99 -> ms, …_mb -> MB)."""
    if key in FIGURES:
        return FIGURES[key][0]
    stem = re.sub(r"_(p\d+|max|min|mean)$", "", key)
    for suffix, unit in _SUFFIX_UNITS:
        if stem.endswith(suffix):
            return unit
    return ""


def check(figures: dict[str, float]) -> dict[str, dict[str, object]]:
    """Each budget with the measured value and whether it was met; unmeasured figures: met None."""
    out: dict[str, dict[str, object]] = {}
    for key, budget in BUDGETS.items():
        value = figures.get(key)
        out[key] = {"budget": budget.limit, "unit": budget.unit, "what": budget.what,
                    "source": budget.source, "value": value,
                    "met": None if value is None else bool(value <= budget.limit)}
    return out


def ratios(figures: dict[str, float]) -> dict[str, dict[str, object]]:
    """Each ratio whose two figures were measured in this run."""
    out: dict[str, dict[str, object]] = {}
    for name, ratio in RATIOS.items():
        ours = next((k for k in ratio.ours if figures.get(k) is not None), None)
        theirs = figures.get(ratio.theirs)
        if ours is None or not theirs:
            continue
        out[name] = {"value": round(figures[ours] / theirs, 3), "ours": ours, "theirs": ratio.theirs}
    return out
