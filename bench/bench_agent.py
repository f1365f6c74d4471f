"""Agent supervision figures: kill -9 -> new Agent started, and heartbeat receiving throughput and CPU.

Runs the real supervisor in this process with the real sample Agent (examples/sample_agent.py).
Prints human lines to stderr and, as the last line of stdout, one JSON object:
  agent_restart_ms_p50 / _max        SIGKILL of the Agent -> the new Agent process started (budget 100 ms)
  agent_restart_to_heartbeat_ms_p50  SIGKILL -> the new Agent's first heartbeat (includes its own startup)
  heartbeats_per_s                   valid heartbeat lines handled per second, one client flooding
  heartbeat_cpu_percent              this process's CPU while handling that flood (100 = one core)
  heartbeat_cpu_percent_100hz        CPU while receiving a steady 100 heartbeats per second
Usage: python bench/bench_agent.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon_app import config  # noqa: E402
from daemon_app.agent.supervisor import AgentSupervisor  # noqa: E402
from daemon_app.engine import Engine  # noqa: E402
from daemon_app.hookspecs import hookimpl  # noqa: E402
from daemon_app.plugins import Plugins  # noqa: E402

CLIENT = r"""
import json, socket, sys, time
path, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
line = (json.dumps({"pid": 1, "timestamp": "2026-01-01T00:00:00Z", "version": "1.0.0",
                    "status": "running", "cpu": 1.0, "memory": 1}) + "\n").encode()
s = socket.socket(socket.AF_UNIX)
s.connect(path)
end = time.monotonic() + seconds
if rate <= 0:
    batch = line * 200
    while time.monotonic() < end:
        s.sendall(batch)
else:
    nxt = time.monotonic()
    while nxt < end:
        s.sendall(line)
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))
s.close()
"""


class Stamps:
    """Records when each event type happened (monotonic), for latency figures."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, int]] = []
        self.cond = threading.Condition()

    @hookimpl
    def on_agent_event(self, event: dict[str, Any]) -> None:
        with self.cond:
            self.events.append((event["type"], time.monotonic(), event["pid"]))
            self.cond.notify_all()

    def wait(self, kind: str, count: int, timeout: float = 10.0) -> float:
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(1 for e in self.events if e[0] == kind) >= count, timeout)
            if not ok:
                raise RuntimeError(f"no {count}th {kind} event within {timeout}s")
            return [e[1] for e in self.events if e[0] == kind][count - 1]


def make_supervisor(work: str) -> tuple[AgentSupervisor, Stamps]:
    raw = {
        "daemon": {"work_dir": work, "log_file": "", "pid_file": os.path.join(work, "daemon.pid")},
        "agent": {
            "binary_path": str(ROOT / "examples" / "sample_agent.py"), "args": ["--interval", "0.2"],
            "socket_path": os.path.join(work, "agent.sock"), "work_dir": os.path.join(work, "agent"),
            "stop_timeout": "2s",
            "restart": {"max_retries": 10_000, "backoff_base": "0s", "backoff_max": "0s"},
        },
    }
    cfg = config.validate(raw)
    plugins = Plugins()
    stamps = Stamps()
    plugins.register(stamps, "stamps", version="0", source="bench")
    sup = AgentSupervisor(cfg, Engine(cfg, plugins))
    return sup, stamps


def bench_restarts(sup: AgentSupervisor, stamps: Stamps, crashes: int) -> dict[str, float]:
    started_ms, heartbeat_ms = [], []
    for i in range(crashes):
        if not sup.wait_for_heartbeat(None, 10):
            raise RuntimeError("the Agent sends no heartbeats")
        # RUNNING too: killed between its first heartbeat and the promotion, an Agent never emits
        # "running", and the count of "running" events below would wait for one too many.
        stamps.wait("running", i + 1)
        pid = sup.pid
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        started = stamps.wait("started", i + 2)
        started_ms.append((started - killed) * 1000)
        stamps.wait("running", i + 2)
        heartbeat_ms.append((time.monotonic() - killed) * 1000)
    print(f"restart after kill -9: p50 {statistics.median(started_ms):.2f} ms, max {max(started_ms):.2f} ms "
          f"over {crashes}; to first heartbeat p50 {statistics.median(heartbeat_ms):.1f} ms", file=sys.stderr)
    return {"agent_restart_ms_p50": round(statistics.median(started_ms), 3),
            "agent_restart_ms_max": round(max(started_ms), 3),
            "agent_restart_to_heartbeat_ms_p50": round(statistics.median(heartbeat_ms), 1)}


def run_client(server: Any, path: str, seconds: float, rate: float) -> tuple[int, float, float]:
    """(lines handled, wall seconds, this process's CPU percent) over a window while one client sends.

    The window starts after the client is up, so spawning it is not counted.
    """
    client = subprocess.Popen([sys.executable, "-c", CLIENT, path, str(seconds + 1.0), str(rate)])
    time.sleep(0.5)
    lines_before = server.counters.lines
    cpu_before, wall_before = time.process_time(), time.monotonic()
    time.sleep(seconds)
    lines = server.counters.lines - lines_before
    wall = time.monotonic() - wall_before
    cpu = (time.process_time() - cpu_before) / wall * 100.0
    client.wait()
    return lines, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer crashes, shorter floods")
    args = ap.parse_args()
    crashes, flood_s = (5, 1.0) if args.quick else (20, 3.0)
    work = tempfile.mkdtemp(prefix="bag", dir="/tmp")
    sup, stamps = make_supervisor(work)
    results: dict[str, float] = {}
    try:
        sup.start()
        path = sup.cfg.agent.socket_path
        results.update(bench_restarts(sup, stamps, crashes))
        lines, wall, cpu = run_client(sup._server, path, flood_s, 0)
        results["heartbeats_per_s"] = round(lines / wall)
        results["heartbeat_cpu_percent"] = round(cpu, 1)
        print(f"flood: {lines} heartbeats in {wall:.2f}s = {lines / wall:.0f}/s, daemon CPU {cpu:.1f}%",
              file=sys.stderr)
        lines, wall, cpu = run_client(sup._server, path, flood_s, 100)
        results["heartbeat_cpu_percent_100hz"] = round(cpu, 2)
        print(f"steady 100/s: {lines} heartbeats in {wall:.2f}s, daemon CPU {cpu:.2f}%", file=sys.stderr)
    finally:
        pid = sup.pid
        if sup._thread is not None:
            try:
                sup.stop_agent(timeout=2)
            finally:
                sup.stop(time.monotonic() + 2)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
