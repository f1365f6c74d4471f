"""Time from `daemon run` start to READY=1 on a NOTIFY_SOCKET (stand-alone, no Agent), and how
much of it is imports (python -X importtime).

    python bench/bench_ready.py [--quick] [--runs N] [--pyz dist/daemon.pyz]

Human lines go to stderr; the last stdout line is JSON: ready_s (median), ready_s_min/max,
imports_s (sum of every module's own import time in one run), python_startup_s (bare interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
_IMPORT_RE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def config(work: Path) -> str:
    raw = {"daemon": {"work_dir": str(work), "log_file": str(work / "daemon.log"),
                      "pid_file": str(work / "daemon.pid"), "log_level": "info"},
           "agent": {"enabled": False}}
    path = work / "daemon.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def command(cfg: str, pyz: str | None, *python_flags: str) -> list[str]:
    target = [pyz] if pyz else ["-m", "daemon_app"]
    return [sys.executable, *python_flags, *target, "-c", cfg, "run"]


def one_run(pyz: str | None, *python_flags: str) -> tuple[float, str]:
    """Seconds to READY=1, and the daemon's stderr (import times when -X importtime)."""
    work = Path(tempfile.mkdtemp(prefix="bready", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(work / "notify.sock"))
        sock.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(work / "notify.sock"),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cfg = config(work)
        t0 = time.monotonic()
        proc = subprocess.Popen(command(cfg, pyz, *python_flags), env=env, cwd=str(ROOT),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while b"READY=1" not in sock.recv(4096).split(b"\n"):
            pass
        elapsed = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise SystemExit(f"daemon exited {proc.returncode}: {err[-2000:]}")
        return elapsed, err
    finally:
        sock.close()
        shutil.rmtree(work, ignore_errors=True)


def import_summary(stderr: str) -> tuple[float, list[tuple[str, float]]]:
    """Total own import time, and the heaviest top-level imports (cumulative)."""
    total_us = 0
    top: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        m = _IMPORT_RE.match(line)
        if not m:
            continue
        total_us += int(m.group(1))
        if len(m.group(3)) == 1:  # one space: imported directly, not by another module
            top.append((m.group(4), int(m.group(2)) / 1e6))
    top.sort(key=lambda item: -item[1])
    return total_us / 1e6, top[:8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs instead of 10")
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--pyz", help="run this daemon.pyz instead of the source tree")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 10)

    one_run(args.pyz)  # warm-up: page cache, .pyc files, a pyz's SHIV_ROOT
    times = []
    for i in range(runs):
        elapsed, _ = one_run(args.pyz)
        times.append(elapsed)
        print(f"run {i + 1}/{runs}: READY=1 after {elapsed * 1000:.0f} ms", file=sys.stderr)
    _, importtime = one_run(args.pyz, "-X", "importtime")
    imports_s, top = import_summary(importtime)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    startup = time.monotonic() - t0

    median = statistics.median(times)
    print(f"ready: median {median * 1000:.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"
          f"; imports {imports_s * 1000:.0f} ms; bare python startup {startup * 1000:.0f} ms",
          file=sys.stderr)
    for name, seconds in top:
        print(f"  import {name:<28} {seconds * 1000:7.1f} ms cumulative", file=sys.stderr)
    print(json.dumps({"ready_s": round(median, 4), "ready_s_min": round(min(times), 4),
                      "ready_s_max": round(max(times), 4), "imports_s": round(imports_s, 4),
                      "python_startup_s": round(startup, 4), "runs": runs}))


if __name__ == "__main__":
    main()
