"""`prometheus.enabled: true` on a real daemon, checked by tools we did not write: promtool, a real
Prometheus server scraping it every second, and node_exporter side by side.

One daemon serves the module: a sample Agent it supervises, a Manager address nobody answers (so
the link and outbox series are live), collections and reports every 500 ms. The binaries come from
the Debian packages `prometheus` and `prometheus-node-exporter` (.ci/run installs them); each test
skips with that reason when its binary is missing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_app.agent.process import read_pid_file
from tests.helpers import ROOT, DaemonProcess, base_config, short_tmpdir, wait_until, write_config
from tests.prom_support import (
    by_name,
    fetch,
    meminfo_bytes,
    parse_exposition,
    prometheus_query,
    promtool_check,
    start_node_exporter,
    start_prometheus,
)

SAMPLE_AGENT = str(ROOT / "examples" / "sample_agent.py")
FAST = {"interval": "500ms"}


def closed_port() -> int:
    """A loopback port the OS just handed out and nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    def __init__(self, work: Path) -> None:
        self.work = work
        pki = work / "pki"
        subprocess.run([sys.executable, "-m", "daemon_manager", "pki", "init", str(pki), "--node", "n1"],
                       check=True, capture_output=True, cwd=ROOT, timeout=60)
        raw = base_config(
            work,
            daemon={"report_interval": "500ms", "shutdown_timeout": "3s"},
            collectors={name: FAST for name in ("cpu", "memory", "disk", "network")},
            agent={"enabled": True, "binary_path": sys.executable,
                   "args": [SAMPLE_AGENT, "--interval", "0.5"], "stop_timeout": "2s"},
            manager={"address": f"127.0.0.1:{closed_port()}", "reconnect_interval": "1s",
                     "tls": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "n1.crt"),
                             "key_file": str(pki / "n1.key")}},
            prometheus={"enabled": True, "listen": "127.0.0.1:0"},
        )
        self.proc = DaemonProcess(write_config(work / "daemon.yaml", raw))
        self.address = wait_until(self._listen_address, timeout=60, what="the exporter's listen line")
        self.url = f"http://{self.address}/metrics"

    def _listen_address(self) -> str | None:
        if self.proc.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.proc.returncode}: {self.proc.output()}")
        try:
            lines = (self.work / "daemon.log").read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            entry = json.loads(line)
            if "prometheus_listen" in entry:
                return entry["prometheus_listen"]
        return None

    def scrape(self) -> dict:
        return parse_exposition(fetch(self.url))

    def stop(self) -> None:
        self.proc.stop(timeout=30)
        agent = read_pid_file(str(self.work / "agent.pid"))
        if agent is not None:
            try:
                os.killpg(agent[0], signal.SIGKILL)  # the daemon leaves its Agent running by design
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def daemon():
    d = Daemon(Path(short_tmpdir("prom")))
    try:
        # Ready: the Agent runs and at least one report after that rendered it.
        wait_until(lambda: d.scrape().get(("daemon_agent_state", (("state", "RUNNING"),))) == 1,
                   timeout=60, what="daemon_agent_state{state=RUNNING} 1")
        yield d
    finally:
        d.stop()


@pytest.mark.timeout(120)
def test_the_exposition_passes_promtool_like_node_exporters_own(daemon):
    text = fetch(daemon.url)
    code, problems = promtool_check(text)
    # promtool's only complaint is the camelCase it also makes about node_exporter's own
    # node_memory_MemTotal_bytes & co.: those names are what dashboards query, so we keep them.
    camel = [p for p in problems if p.endswith("should be written in 'snake_case' not 'camelCase'")]
    assert problems == camel, problems
    assert all(p.startswith("node_memory_") for p in camel)
    assert code in (0, 3), (code, problems)  # 3: lint warnings only; 1 would be a parse error


@pytest.mark.timeout(180)
def test_a_real_prometheus_scrapes_the_daemon_every_second(daemon, tmp_path):
    prometheus = start_prometheus(tmp_path, daemon.address)
    try:
        port = prometheus.port(timeout=60)

        def memory() -> list:
            return prometheus_query(port, "node_memory_MemAvailable_bytes")

        result = wait_until(memory, timeout=90, interval=0.5, what="MemAvailable in Prometheus")
        expected = meminfo_bytes("MemAvailable")
        scraped = float(result[0]["value"][1])
        assert abs(scraped - expected) <= 0.01 * expected, (scraped, expected)
        assert result[0]["metric"]["job"] == "daemon" and result[0]["metric"]["instance"] == daemon.address

        names = {r["metric"]["__name__"] for r in prometheus_query(port, '{__name__=~"daemon_.+"}')}
        assert {
            "daemon_build_info", "daemon_start_time_seconds", "daemon_reports_built_total",
            "daemon_manager_configured", "daemon_manager_connected", "daemon_manager_registered",
            "daemon_outbox_depth", "daemon_outbox_dropped_total",
            "daemon_agent_state", "daemon_agent_restarts_total", "daemon_collector_success",
            "daemon_collector_last_duration_seconds", "daemon_update_state",
            "daemon_prometheus_series_dropped",
        } <= names, names
        running = prometheus_query(port, 'daemon_agent_state{state="RUNNING"}')
        assert float(running[0]["value"][1]) == 1
        assert float(prometheus_query(port, "daemon_manager_connected")[0]["value"][1]) == 0
        # docs/prometheus.md's busy-CPU query for our cpu="all" sum works as written.
        busy = wait_until(lambda: prometheus_query(
            port, '1 - rate(node_cpu_seconds_total{mode="idle"}[1m]) / ignoring(cpu, mode) daemon_cpu_cores'),
            timeout=30, interval=0.5, what="the busy-CPU query")
        # A share of time, give or take the jitter of values read up to a report before the scrape.
        assert -0.25 <= float(busy[0]["value"][1]) <= 1.25
        # Scraped every second with a body rendered every 500 ms: no failed scrape.
        ups = prometheus_query(port, 'min_over_time(up{job="daemon"}[1m])')
        assert float(ups[0]["value"][1]) == 1
    finally:
        prometheus.stop()


# The series we claim to share with node_exporter, and how close two readings taken up to a
# second or two apart must be. Sizes are exact; what moves (free space, traffic) gets room.
SHARED_EXACT = ("node_memory_MemTotal_bytes", "node_memory_SwapTotal_bytes", "node_filesystem_size_bytes")
SHARED_CLOSE = {  # name: (relative, absolute) tolerance
    "node_memory_MemAvailable_bytes": (0.01, 0),
    "node_memory_Buffers_bytes": (0.05, 4 << 20),
    "node_memory_SwapFree_bytes": (0.01, 1 << 20),
    "node_filesystem_avail_bytes": (0.01, 64 << 20),
    "node_filesystem_free_bytes": (0.01, 64 << 20),
    "node_disk_read_bytes_total": (0.02, 64 << 20),
    "node_disk_written_bytes_total": (0.02, 256 << 20),
    "node_network_receive_bytes_total": (0.02, 4 << 20),
    "node_network_transmit_bytes_total": (0.02, 4 << 20),
    "node_network_receive_packets_total": (0.02, 5000),
    "node_network_transmit_packets_total": (0.02, 5000),
    "node_network_receive_errs_total": (0.0, 10),
    "node_network_transmit_errs_total": (0.0, 10),
    "node_network_receive_drop_total": (0.0, 100),
    "node_network_transmit_drop_total": (0.0, 100),
}


ALWAYS = {"node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes",
          "node_memory_SwapTotal_bytes", "node_network_receive_bytes_total",
          "node_network_transmit_bytes_total"}


def _type_lines(text: str) -> dict[str, str]:
    return {parts[2]: parts[3] for line in text.splitlines()
            if (parts := line.split(" ")) and line.startswith("# TYPE ")}


@pytest.mark.timeout(120)
def test_side_by_side_with_node_exporter_same_names_labels_and_values(daemon, tmp_path):
    exporter = start_node_exporter(tmp_path)
    try:
        port = exporter.port()
        ours_text = fetch(daemon.url)
        theirs_text = fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        exporter.stop()
    ours, theirs = parse_exposition(ours_text), parse_exposition(theirs_text)
    our_types, their_types = _type_lines(ours_text), _type_lines(theirs_text)
    ours_node = {name for name, _ in ours if name.startswith("node_")}
    assert ours_node <= set(SHARED_EXACT) | set(SHARED_CLOSE) | {"node_cpu_seconds_total"}
    # Filesystems and disks depend on the host (a container's / is an overlay, which the disk
    # collector skips); memory, CPU and the network (lo at least) are on every host.
    assert ALWAYS <= ours_node, ALWAYS - ours_node
    compared = 0
    for name in ours_node:
        assert our_types[name] == their_types[name], name
        if name == "node_cpu_seconds_total":
            continue
        mine, other = by_name(ours, name), by_name(theirs, name)
        assert mine, name
        for labels, value in mine.items():
            if labels not in other:
                # node_exporter skips some of what we export (partitions in diskstats, its own
                # mount point exclusions); the label *names* must still be the same.
                assert {k for k, _ in labels} == {k for k, _ in next(iter(other))}, (name, labels)
                continue
            rel, absolute = SHARED_CLOSE.get(name, (0.0, 0))
            assert abs(value - other[labels]) <= max(rel * other[labels], absolute), (name, labels, value,
                                                                                      other[labels])
            compared += 1
    assert compared >= 13
    for name in set(SHARED_EXACT) & ours_node:
        assert set(by_name(ours, name)) & set(by_name(theirs, name)), f"no common series of {name}"
    # CPU: we export the sum of every CPU under cpu="all"; node_exporter one series per CPU.
    cpus = len({dict(labels)["cpu"] for labels in by_name(theirs, "node_cpu_seconds_total")})
    for mode in ("user", "system", "idle"):
        mine = ours[("node_cpu_seconds_total", (("cpu", "all"), ("mode", mode)))]
        total = sum(v for labels, v in by_name(theirs, "node_cpu_seconds_total").items()
                    if dict(labels)["mode"] == mode)
        assert abs(mine - total) <= 0.01 * total + 3.0 * cpus, (mode, mine, total)


@pytest.mark.timeout(60)
def test_a_scrape_only_copies_the_last_body_and_never_collects(daemon):
    started = time.monotonic()
    bodies = {fetch(daemon.url) for _ in range(50)}
    elapsed = time.monotonic() - started
    # A body changes only when a report (every 500 ms) renders a new one: a scrape that collected
    # would give 50 different CPU counters.
    assert len(bodies) <= int(elapsed / 0.5) + 2, (len(bodies), elapsed)


@pytest.mark.timeout(120)
def test_an_attack_on_the_port_does_not_hurt_the_daemon(daemon):
    import psutil

    proc = psutil.Process(daemon.proc.pid)
    threads, rss = proc.num_threads(), proc.memory_info().rss
    reports = daemon.scrape()[("daemon_reports_built_total", ())]
    host, port = daemon.address.rsplit(":", 1)
    socks = []
    try:
        for i in range(300):  # idle, slowloris, and oversized requests, all at once
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.setblocking(False)
            payload = b"GET /metrics HTTP/1.1\r\nX: " if i % 3 == 1 else b"Y" * 65536 if i % 3 == 2 else b""
            try:
                sock.send(payload)
            except OSError:
                pass
            socks.append(sock)
        t0 = time.monotonic()
        assert ("node_memory_MemTotal_bytes", ()) in daemon.scrape()  # still served, at once
        assert time.monotonic() - t0 < 2.0
        assert proc.num_threads() == threads
    finally:
        for sock in socks:
            sock.close()
    # The daemon goes on: reports keep coming, the Agent is still RUNNING, memory did not follow.
    wait_until(lambda: daemon.scrape()[("daemon_reports_built_total", ())] >= reports + 4, timeout=30,
               what="reports after the attack")
    after = daemon.scrape()
    assert after[("daemon_agent_state", (("state", "RUNNING"),))] == 1
    # Each connection was evicted to make room, or answered 431 for its oversized request.
    closed = after[("daemon_prometheus_http_evicted_total", ())] + after[
        ("daemon_prometheus_http_bad_requests_total", ())]
    assert closed >= 300 - 16 and after[("daemon_prometheus_http_bad_requests_total", ())] >= 1
    assert proc.memory_info().rss - rss < 8 * 1024 * 1024
