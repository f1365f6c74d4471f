"""Hostile input at two edges (issue #10), measured: config bombs refused by `daemon config check`
(wall time and peak RSS of the child), and a heartbeat receiver under a deep-nesting + endless-line
attack (bytes it took before hanging up, CPU and RSS growth of the receiving process).

    python bench/bench_edges.py

Human lines go to stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon_app.agent.heartbeat import HeartbeatServer  # noqa: E402

LEVELS = "abcdefghi"
CHECK = """
import sys, time
t0 = time.monotonic()
from daemon_app.cli import main
t1 = time.monotonic()
try:
    main(["-c", sys.argv[1], "config", "check"])
except SystemExit as exc:
    code = exc.code
t2 = time.monotonic()
hwm = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(code, round(t2 - t1, 4), hwm, file=sys.stderr)
"""


def laughs(use: str) -> str:
    lines = ["anchors:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip(LEVELS[:-1], LEVELS[1:], strict=True):
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n" + use + "\n"


BOMBS = {
    "log_level_alias_bomb": laughs("daemon:\n  log_level: *i"),
    "agent_args_alias_bomb": laughs("agent:\n  args: *i"),
    "labels_10MB": "daemon:\n  labels:\n" + "".join(f"    key{i}: value-{i}\n" for i in range(400_000)),
    "labels_near_size_cap": "daemon:\n  labels:\n" + "".join(f"    k{i}: v{i}\n" for i in range(7_000)),
    "flow_list_at_size_cap": "agent:\n  args: [" + "a," * 60_000 + "]\n",
    "shipped_reference": (ROOT / "configs" / "daemon.yaml").read_text(),
}


def config_bombs(work: Path) -> dict[str, dict[str, float]]:
    out = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DAEMON_CONFIG", None)
    for name, text in BOMBS.items():
        path = work / f"{name}.yaml"
        path.write_text(text)
        result = subprocess.run([sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True,
                                env=env, cwd=ROOT, timeout=120)
        code, seconds, hwm_kb = result.stderr.splitlines()[-1].split()
        out[name] = {"exit": int(code) if code != "None" else 0, "check_s": float(seconds),
                     "peak_rss_mb": round(int(hwm_kb) / 1024, 1), "file_kb": round(len(text) / 1024, 1)}
        print(f"config {name:24} {out[name]}", file=sys.stderr)
    return out


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("VmRSS:")))


def heartbeat_attack(work: Path) -> dict[str, float]:
    server = HeartbeatServer(str(work / "hb.sock"), 0o600, "", lambda hb: None, lambda pid: False)
    server.start()
    try:
        before_rss, before_cpu = rss_kb(), resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        taken = 0
        for _ in range(50):  # 50 attackers: 60,000 '[' and then up to 200 MiB without a newline
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(server.path)
            chunk, sent = b"[" * 60000, 0
            try:
                while sent < 200 * 1024 * 1024:
                    sent += s.send(chunk)
                    chunk = b"z" * 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            taken += sent
            s.close()
        elapsed = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before_cpu.ru_utime + before_cpu.ru_stime)
        out = {"attackers": 50, "bytes_taken_per_attacker_kb": round(taken / 50 / 1024, 1),
               "elapsed_s": round(elapsed, 3), "cpu_s_both_sides": round(cpu, 3),
               "rss_growth_mb": round((rss_kb() - before_rss) / 1024, 2),
               "invalid": server.counters.invalid}
    finally:
        server.stop()
    print(f"heartbeat deep+endless attack {out}", file=sys.stderr)
    return out


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bedge", dir="/tmp"))
    try:
        result = {"config": config_bombs(work), "heartbeat": heartbeat_attack(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
