"""The `prometheus` built-in: a `report` hook that renders /metrics and a server that only copies it.

It is a plugin like any third-party one: it sees each report through the `report` hook and the
daemon's own state through the control socket's `status` command, the public, stable interface
`daemon status` uses; it holds no reference into the engine. All work happens on the report's
thread, once per `daemon.report_interval`: the daemon's status is read, the body rendered, and the
bytes swapped in. A scrape copies those bytes and nothing else, so it costs well under a millisecond
and cannot make the host do work. The server starts with the first report (nothing is bound by `collect
--once` or `plugins list`) and a failed bind is retried at each report, so the port is taken as
soon as whoever held it (node_exporter during a migration) lets it go.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from daemon_app import __version__, control
from daemon_app.buildinfo import build_id
from daemon_app.config import parse_listen
from daemon_app.hookspecs import hookimpl
from daemon_app.prometheus.exposition import COUNTER, GAUGE, Exposition
from daemon_app.prometheus.generic import add_plugin_series
from daemon_app.prometheus.health import add_build_info, add_health_series
from daemon_app.prometheus.node import BUILTIN_GROUPS, add_node_series
from daemon_app.prometheus.server import MetricsServer

log = logging.getLogger(__name__)

PLUGIN_NAME = "prometheus"
STATUS_TIMEOUT = 2.0
# The exporter's own series are added past max_series, so a flood of plugin values cannot hide them.
_OWN_SERIES = 8

StatusSource = Callable[[], Any]  # the status document; anything else is counted and skipped


def control_status(socket_path: str) -> StatusSource:
    """The running daemon's `status` document, asked over its control socket."""
    def fetch() -> Any:
        return control.request(socket_path, "status", timeout=STATUS_TIMEOUT)
    return fetch


class PrometheusExporter:
    """The plugin object: `report` renders the body; `server` (started at the first report) serves it."""

    def __init__(self, listen: str, max_series: int, status: StatusSource) -> None:
        self.host, self.port = parse_listen(listen)
        self.max_series = max_series
        self._status = status
        self._build_id = build_id()
        self._body = b""
        self._lock = threading.Lock()
        self.server: MetricsServer | None = None
        self.status_errors = 0
        self._problems: dict[str, str] = {}

    def body(self) -> bytes:
        """The latest rendered exposition (what a scrape gets)."""
        return self._body

    @hookimpl
    def report(self, report: dict[str, Any]) -> None:
        with self._lock:
            self._body = self.render(report)
            if self.server is None:
                self._start_server()

    def render(self, report: Mapping[str, Any]) -> bytes:
        out = Exposition(self.max_series)
        add_build_info(out, __version__, self._build_id)
        status = self._read_status()
        if status is not None:
            add_health_series(out, status)
        metrics = report.get("metrics")
        metrics = metrics if isinstance(metrics, Mapping) else {}
        add_node_series(out, metrics)
        add_plugin_series(out, metrics, BUILTIN_GROUPS)
        self._add_own_series(out)
        return out.render()

    def _add_own_series(self, out: Exposition) -> None:
        out.max_series += _OWN_SERIES
        out.add("daemon_prometheus_series_dropped", GAUGE,
                "Series left out of this body (prometheus.max_series, bad names, duplicates).", out.dropped)
        out.add("daemon_prometheus_status_errors_total", COUNTER,
                "Times the daemon's status could not be read for a body.", self.status_errors)
        server = self.server
        if server is not None:
            c = server.counters
            for name, value, help_text in (
                ("daemon_prometheus_http_requests_total", c.requests, "GET /metrics answered."),
                ("daemon_prometheus_http_evicted_total", c.evicted,
                 "Connections closed to make room: too many open."),
                ("daemon_prometheus_http_timeouts_total", c.timeouts,
                 "Connections dropped for sending or reading too slowly."),
                ("daemon_prometheus_http_bad_requests_total", c.bad_requests,
                 "Requests answered 400, 405 or 431."),
            ):
                out.add(name, COUNTER, help_text, value)

    def _read_status(self) -> Mapping[str, Any] | None:
        try:
            status = self._status()
            if not isinstance(status, Mapping):
                raise TypeError(f"status is {type(status).__name__}, not an object")
        except Exception as exc:  # the daemon_* series wait for the next report; node_* still go out
            self.status_errors += 1
            self._problem("status", f"prometheus: cannot read the daemon's status: {type(exc).__name__}: "
                          f"{exc}; the daemon_* series wait for the next report")
            return None
        self._problem("status", "")
        return status

    def _start_server(self) -> None:
        server = MetricsServer(self.host, self.port, self.body)
        try:
            server.start()
        except OSError as exc:
            self._problem("listen", f"D1002 prometheus.listen: cannot listen on {self.host}:{self.port}: "
                          f"{exc.strerror or exc}; trying again at the next report", code="D1002")
            return
        self.server = server
        host, port = server.address
        shown = f"[{host}]" if ":" in host else host
        log.info("prometheus: serving http://%s:%d/metrics", shown, port,
                 extra={"prometheus_listen": f"{shown}:{port}"})

    def _problem(self, what: str, message: str, code: str = "") -> None:
        """Log a problem when it first appears (not at every report while it lasts); "" clears it."""
        if message and message != self._problems.get(what):
            log.error(message, extra={"code": code} if code else {})
        self._problems[what] = message

    def close(self) -> None:
        with self._lock:
            if self.server is not None:
                self.server.stop()
                self.server = None


def from_config(cfg: Any) -> PrometheusExporter:
    """The exporter `plugins.load_builtins` registers when `prometheus.enabled` is true."""
    return PrometheusExporter(cfg.prometheus.listen, cfg.prometheus.max_series,
                              control_status(cfg.daemon.control_socket))
