"""Benchmark: what `prometheus.enabled: true` costs — idle RSS and CPU, and one scrape.

Two stand-alone `daemon.pyz run` at default intervals, started together and measured over the same
window so machine noise hits both alike: one with the exporter off, one with it on and scraped
every 15 s (a common Prometheus scrape interval). The figures are the enabled daemon's RSS minus
the disabled one's (budget ~2 MB, issue #15), both CPUs, and 200 timed scrapes (a new connection
each, as the exporter closes after one response) with the body's size and series count.
Runs dist/daemon.pyz (built first when missing); `--source` runs `python -m daemon_app` instead.
Human lines go to stderr; the last stdout line is the JSON of figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_idle_standalone import python_for_pyz
from common import PYZ, ROOT, CpuWindow, arg_parser, emit, listening_ports, log, rss_mb, summarize, wait_until

SCRAPE_EVERY = 15.0


def start(tmp: Path, name: str, enabled: bool, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    work = tmp / name
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(json.dumps({  # YAML is a superset of JSON
        "daemon": {"work_dir": str(work), "log_file": str(work / "daemon.log"),
                   "pid_file": str(work / "daemon.pid")},
        "agent": {"enabled": False},
        "prometheus": {"enabled": enabled, "listen": "127.0.0.1:0"},
    }))
    return subprocess.Popen([*argv, "-c", str(cfg), "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--source", action="store_true", help="run this tree, not dist/daemon.pyz")
    args = parser.parse_args()
    warmup, window = (10.0, 30.0) if args.quick else (20.0, 70.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_"))}
    if args.source:
        argv = [sys.executable, "-m", "daemon_app"]
        env["PYTHONPATH"] = str(ROOT)
    else:
        if not PYZ.exists():
            subprocess.run([str(ROOT / "build" / "shiv.sh")], check=True, cwd=ROOT,
                           env={**os.environ, "PYTHON": sys.executable}, stdout=sys.stderr)
        argv = [python_for_pyz(), str(PYZ)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env["SHIV_ROOT"] = str(tmp / "shiv")
        subprocess.run([*argv, "version"], env=env, check=True, capture_output=True)  # warm
        off = start(tmp, "off", False, argv, env)
        on = start(tmp, "on", True, argv, env)
        try:
            port = wait_until(lambda: listening_ports(on.pid), timeout=30, what="the exporter's port")[0]
            url = f"http://127.0.0.1:{port}/metrics"
            wait_until(lambda: scrape(url), timeout=30, what="a first body")
            time.sleep(warmup)
            meters = {name: CpuWindow(p.pid) for name, p in (("off", off), ("on", on))}
            peak = {"off": 0.0, "on": 0.0}
            t0 = time.monotonic()
            next_scrape = t0
            while time.monotonic() - t0 < window:
                if time.monotonic() >= next_scrape:
                    scrape(url)
                    next_scrape += SCRAPE_EVERY
                for name, p in (("off", off), ("on", on)):
                    peak[name] = max(peak[name], rss_mb(p.pid))
                time.sleep(1.0)
            cpu = {name: meter.percent() for name, meter in meters.items()}
            timings = []
            for _ in range(200):
                s = time.perf_counter()
                body = scrape(url)
                timings.append((time.perf_counter() - s) * 1000)
        finally:
            for p in (off, on):
                p.send_signal(signal.SIGTERM)
            for p in (off, on):
                p.wait(30)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    figures = {
        "prometheus_rss_delta_mb": round(peak["on"] - peak["off"], 2),
        "prometheus_rss_mb": round(peak["on"], 2),
        "prometheus_cpu_percent": cpu["on"],
        "prometheus_cpu_delta_percent": round(cpu["on"] - cpu["off"], 3),
        **summarize(timings, "prometheus_scrape_ms"),
        "prometheus_body_bytes": len(body),
        "prometheus_series": series,
    }
    log(f"daemon run stand-alone, {window:.0f} s window, scraped every {SCRAPE_EVERY:.0f} s: RSS "
        f"{peak['on']:.1f} MB with the exporter, {peak['off']:.1f} MB without "
        f"(+{figures['prometheus_rss_delta_mb']} MB); CPU {cpu['on']:.3f} % vs {cpu['off']:.3f} %; "
        f"scrape p50 {figures['prometheus_scrape_ms_p50']} ms, p99 {figures['prometheus_scrape_ms_p99']} ms; "
        f"body {len(body)} bytes, {series} series")
    emit(figures)


if __name__ == "__main__":
    main()
