"""Peer benchmark: Prometheus node_exporter with a collector set like ours — RSS, CPU, scrape time."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import time

from common import (
    CpuWindow,
    arg_parser,
    emit,
    listening_ports,
    log,
    percentile,
    pss_mb,
    rss_mb,
    wait_until,
)

BINARY = "/usr/bin/prometheus-node-exporter"
PACKAGE = "prometheus-node-exporter"
# The collectors that match our built-ins: cpu, memory, disk (I/O and filesystems), network.
COLLECTORS = ("cpu", "meminfo", "diskstats", "filesystem", "netdev")
# Our collectors' default interval: node_exporter is scraped as often while its CPU is measured,
# so both programs do the same amount of collecting in the window.
DEFAULT_SCRAPE_INTERVAL_S = 60.0


class Unavailable(Exception):
    """node_exporter is not installed and could not be installed here."""


def ensure_node_exporter() -> str:
    """The binary path, installing the Debian package when we are root and it is missing."""
    if os.path.exists(BINARY):
        return BINARY
    if os.geteuid() != 0:
        raise Unavailable(f"{BINARY} is missing and we are not root to apt-get install {PACKAGE}")
    if not shutil.which("apt-get"):
        raise Unavailable(f"{BINARY} is missing and there is no apt-get to install {PACKAGE}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", PACKAGE]
    for attempt in ("install", "update then install"):
        log(f"{BINARY} missing: apt-get {attempt} {PACKAGE} ...")
        if attempt != "install":
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode == 0 and os.path.exists(BINARY):
            return BINARY
    tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
    raise Unavailable(f"could not apt-get install {PACKAGE}: {tail}")


def version_of(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    # "node_exporter, version 1.5.0 (branch: ..., revision: ...)" -> "node_exporter 1.5.0"
    found = re.search(r"version (\S+)", out.stdout or out.stderr)
    return f"node_exporter {found.group(1)}" if found else "node_exporter"


def scrape(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"GET /metrics answered {resp.status}")
    return len(body)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--scrapes", type=int, default=0, help="timed scrapes (default 200, quick 50)")
    parser.add_argument("--window", type=float, default=0.0,
                        help="CPU window seconds (default 60, quick 20)")
    parser.add_argument("--scrape-interval", type=float, default=DEFAULT_SCRAPE_INTERVAL_S,
                        help="seconds between scrapes inside the CPU window")
    args = parser.parse_args()
    scrapes = args.scrapes or (50 if args.quick else 200)
    window = args.window or (20.0 if args.quick else 60.0)
    try:
        binary = ensure_node_exporter()
    except Unavailable as exc:
        log(str(exc))
        emit({"_peer": {"available": False, "note": str(exc)}})
        return
    version = version_of(binary)
    cmd = [binary, "--web.listen-address=127.0.0.1:0", "--collector.disable-defaults",
           *(f"--collector.{name}" for name in COLLECTORS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # Port 0 lets the kernel choose; the port is then read back from the process's sockets.
        port = wait_until(lambda: listening_ports(proc.pid) or proc.poll() is not None, timeout=20,
                          what="node_exporter to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"node_exporter exited with {proc.returncode}: {' '.join(cmd)}")
        port = port[0]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        size = scrape(conn)
        log(f"{version} (pid {proc.pid}) on 127.0.0.1:{port}, collectors {','.join(COLLECTORS)}; "
            f"/metrics is {size} bytes")

        log(f"CPU over {window:.0f} s, one scrape every {args.scrape_interval:.0f} s ...")
        meter = CpuWindow(proc.pid)
        end = time.monotonic() + window
        next_scrape = time.monotonic()
        while (now := time.monotonic()) < end:
            if now >= next_scrape:
                scrape(conn)
                next_scrape += args.scrape_interval
            time.sleep(max(0.0, min(next_scrape, end) - time.monotonic()))
        cpu = meter.percent()
        rss, pss = rss_mb(proc.pid), pss_mb(proc.pid)
        log(f"idle: CPU {cpu} %, RSS {rss} MB, PSS {pss} MB")

        times_ms = []
        for _ in range(scrapes):
            t0 = time.perf_counter()
            scrape(conn)
            times_ms.append((time.perf_counter() - t0) * 1000)
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    p50, p99 = percentile(times_ms, 50), percentile(times_ms, 99)
    log(f"scrape ms over {scrapes}: p50 {p50:.2f}, p99 {p99:.2f}, max {max(times_ms):.2f}")
    emit({
        "peer_node_exporter_rss_mb": rss,
        "peer_node_exporter_pss_mb": pss,
        "peer_node_exporter_cpu_percent": cpu,
        "peer_node_exporter_scrape_ms_p50": round(p50, 3),
        "peer_node_exporter_scrape_ms_p99": round(p99, 3),
        "_peer": {"available": True, "version": version,
                  "note": f"collectors {','.join(COLLECTORS)}; CPU over {window:.0f} s scraped every "
                          f"{args.scrape_interval:.0f} s; {scrapes} timed scrapes on one keep-alive "
                          "connection"},
    })


if __name__ == "__main__":
    main()
