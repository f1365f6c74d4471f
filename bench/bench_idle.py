"""Benchmark: idle footprint of `daemon.pyz run` supervising the sample Agent, default intervals: first
with a real Manager, then stand-alone; and the size of the pyz.

Budgets (README, Budgets): idle RSS <= 38 MB with Manager + Agent, <= 26 MB stand-alone with Agent,
idle CPU <= 0.1 %, at most 6 threads, a pyz under 14.8 MB. Starts the reference Manager
(`python -m daemon_manager serve`, dev PKI) and dist/daemon.pyz (built when missing; `--source`
runs `python -m daemon_app` from this tree instead) supervising examples/sample_agent.py, as
deploy/daemon.service runs it: with that unit's Environment= settings, a NOTIFY_SOCKET (STATUS
lines every 10 s) and its watchdog (WatchdogSec=60s: a ping every 30 s). After the
warm-up (60 s; --quick 20 s) it measures, over a window (120 s; --quick 30 s), CPU and wake-ups
(voluntary + involuntary context switches of every thread), and RSS and PSS of the daemon process
only (not the Agent) every 5 s: the figures are the highest seen, since a single sample may fall
between two of the periodic rounds (reports, heartbeats) that touch more memory. Per-thread
wake-ups and CPU (schedstat) go to stderr.
Human lines go to stderr; the last stdout line is the JSON of figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_idle_standalone import python_for_pyz
from common import PYZ, ROOT, CpuWindow, arg_parser, children, emit, log, pss_mb, rss_mb, wait_until
from manager_support import ManagerProcess

SAMPLE_AGENT = ROOT / "examples" / "sample_agent.py"
UNIT = ROOT / "deploy" / "daemon.service"


def unit_settings() -> tuple[dict[str, str], int]:
    """The Environment= variables of deploy/daemon.service (but SHIV_ROOT) and its WatchdogSec in µs."""
    env: dict[str, str] = {}
    watchdog_usec = 0
    for line in UNIT.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key == "Environment":
            name, _, val = value.strip('"').partition("=")
            if name != "SHIV_ROOT":
                env[name] = val
        elif key == "WatchdogSec":
            watchdog_usec = int(float(value.rstrip("s")) * 1_000_000)
    return env, watchdog_usec


class NotifySocket:
    """Stands in for systemd's notify socket: takes every datagram so the daemon never blocks on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def threads(pid: int) -> dict[int, tuple[str, int, int]]:
    """tid -> (thread name, context switches (voluntary + involuntary), nanoseconds on a CPU) so far."""
    out = {}
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            text = Path(task.path, "status").read_text()
            on_cpu_ns = int(Path(task.path, "schedstat").read_text().split()[0])
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        out[int(task.name)] = (fields["Name"].strip(), int(fields["voluntary_ctxt_switches"])
                               + int(fields["nonvoluntary_ctxt_switches"]), on_cpu_ns)
    return out


def write_config(tmp: Path, address: str, pki: Path) -> Path:
    """Every interval at its default: this is the idle daemon as deployed. address "": stand-alone."""
    work = tmp / "work"
    cfg = {
        "daemon": {"work_dir": str(work), "log_file": str(work / "daemon.log"),
                   "pid_file": str(work / "daemon.pid"), "control_socket": str(tmp / "ctl.sock")},
        "manager": {"address": address, "tls": {"ca_file": str(pki / "ca.crt"),
                                                "cert_file": str(pki / "idle.crt"),
                                                "key_file": str(pki / "idle.key")}},
        "agent": {"enabled": True, "binary_path": str(SAMPLE_AGENT), "socket_path": str(tmp / "agent.sock"),
                  "work_dir": str(tmp / "agent"), "config_file": str(tmp / "agent.yaml")},
        "update": {"download_dir": str(work / "downloads"), "backup_dir": str(work / "backups"),
                   "public_key_file": str(work / "keys" / "update.pub")},
    }
    path = tmp / "daemon.yaml"
    path.write_text(json.dumps(cfg))  # YAML is a superset of JSON
    return path


def daemon_command(source: bool, cfg: Path, env: dict[str, str]) -> list[str]:
    if source:
        env["PYTHONPATH"] = str(ROOT)
        return [sys.executable, "-m", "daemon_app", "-c", str(cfg), "run"]
    if not PYZ.exists():
        subprocess.run([str(ROOT / "build" / "shiv.sh")], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable}, stdout=sys.stderr)
    python = python_for_pyz()
    subprocess.run([python, str(PYZ), "version"], env=env, check=True, capture_output=True)  # extract once
    return [python, str(PYZ), "-c", str(cfg), "run"]


def measure(args: Any, with_manager: bool, warmup: float, window: float) -> dict[str, float]:
    """One idle daemon with the sample Agent (and a Manager when `with_manager`): its figures."""
    from daemon_manager import pki
    from daemon_manager.store import Store

    label = "with Manager and Agent" if with_manager else "stand-alone with Agent"
    tmp = Path(tempfile.mkdtemp(prefix="bidle", dir="/tmp"))  # short: AF_UNIX paths
    manager = proc = notify = None
    agent_pids: list[int] = []
    try:
        pki.init(tmp / "pki", ["idle"])
        if with_manager:
            manager = ManagerProcess(str(tmp / "manager.db"), str(tmp / "pki"))
        cfg = write_config(tmp, manager.address if manager else "", tmp / "pki")
        unit_env, watchdog_usec = unit_settings()
        notify = NotifySocket(tmp / "notify.sock")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "DAEMON_", "NOTIFY_", "WATCHDOG_", "MALLOC_", "GRPC_"))}
        env.update(unit_env, SHIV_ROOT=str(tmp / "shiv"), NOTIFY_SOCKET=str(notify.path),
                   WATCHDOG_USEC=str(watchdog_usec))
        log(f"{label}: environment from {UNIT.relative_to(ROOT)}: {unit_env}, WATCHDOG_USEC={watchdog_usec}")
        cmd = daemon_command(args.source, cfg, env)
        log(f"daemon: {' '.join(cmd)}; manager {manager.address if manager else 'none'}")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=str(tmp), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        store = Store(str(tmp / "manager.db")) if manager else None
        daemon = proc

        def ready() -> bool:
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode}; see {tmp}/work/daemon.log")
            if store is None:  # stand-alone: its first report is in the file reporter's output
                return (tmp / "work" / "reports.jsonl").exists()
            nodes = store.nodes()
            return bool(nodes) and bool(store.reports(nodes[0]["node_id"], last=1))

        wait_until(ready, timeout=120, interval=0.05, what="registration and a first report")
        log(f"first report {'stored' if store else 'written'} {time.monotonic() - t0:.2f} s after start")
        agent_pids = wait_until(lambda: children(daemon.pid), timeout=30, what="the Agent")

        time.sleep(max(0.0, warmup - (time.monotonic() - t0)))
        rss_at_warmup = rss = rss_mb(proc.pid)
        pss = pss_mb(proc.pid)
        before = threads(proc.pid)
        meter = CpuWindow(proc.pid)
        w0 = time.monotonic()
        while time.monotonic() - w0 < window:
            time.sleep(min(5.0, window - (time.monotonic() - w0)))
            rss, pss = max(rss, rss_mb(proc.pid)), max(pss, pss_mb(proc.pid))
        cpu = meter.percent()
        elapsed = time.monotonic() - w0
        after = threads(proc.pid)
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode} during the window")
        total = total_ns = 0
        for tid, (name, count, ns) in sorted(after.items()):
            _, count0, ns0 = before.get(tid, (name, 0, 0))
            total += count - count0
            total_ns += ns - ns0
            log(f"  thread {tid:>7} {name:<16} {(count - count0) / elapsed:7.2f} wake-ups/s "
                f"{(ns - ns0) / 1e7 / elapsed:7.4f} % CPU")
        gone = set(before) - set(after)
        if gone:
            log(f"  {len(gone)} thread(s) ended inside the window (not counted)")
        sent = b"\n".join(notify.messages)
        log(f"  threads together: {total_ns / 1e7 / elapsed:.4f} % CPU (schedstat); notify socket got "
            f"READY=1 {sent.count(b'READY=1')}x, STATUS= {sent.count(b'STATUS=')}x, "
            f"WATCHDOG=1 {sent.count(b'WATCHDOG=1')}x since start")
        log(f"{label}, from {warmup:.0f} s to {warmup + elapsed:.0f} s: RSS at most {rss:.1f} MB "
            f"({rss_at_warmup:.1f} MB at {warmup:.0f} s), PSS at most {pss:.1f} MB, {len(after)} threads, "
            f"CPU {cpu:.3f} %, {total / elapsed:.2f} wake-ups/s")
        return {"rss_mb": round(rss, 1), "pss_mb": round(pss, 1), "cpu_percent": cpu,
                "threads": len(after), "wakeups_per_s": round(total / elapsed, 2)}
    finally:
        if proc is not None and proc.poll() is None:
            agent_pids = agent_pids or children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        for pid in agent_pids:  # the Agent outlives the daemon on purpose: stop it by its pid
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if manager is not None:
            manager.stop()
        if notify is not None:
            notify.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--source", action="store_true", help="run `python -m daemon_app` from this tree")
    args = parser.parse_args()
    warmup, window = (20.0, 30.0) if args.quick else (60.0, 120.0)
    figures: dict[str, float] = {}
    for key, value in measure(args, True, warmup, window).items():
        figures[f"idle_{key}"] = value
    for key, value in measure(args, False, warmup, window).items():
        figures[f"idle_standalone_agent_{key}"] = value
    if PYZ.exists() and not args.source:
        figures["pyz_mb"] = round(PYZ.stat().st_size / 1e6, 2)
    emit(figures)


if __name__ == "__main__":
    main()
