"""Benchmark: `daemon.pyz run` stand-alone at default intervals — RSS, CPU, time to first report.

Budgets (README, Budgets): RSS <= 40 MB, CPU <= 0.1 %. Runs dist/daemon.pyz (built first when missing)
with the system python3 when it is 3.11 (the deployed case: no dependencies installed), else with
this interpreter, from a warm extraction root. CPU is measured from the first report to the end of
the window (60 s; --quick 15 s), so start-up cost is the time-to-first-report figure, not CPU.
Human lines go to stderr; the last stdout line is the JSON of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYZ = ROOT / "dist" / "daemon.pyz"


def python_for_pyz() -> str:
    system = "/usr/bin/python3"
    if os.path.exists(system):
        out = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return system
    return sys.executable


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 15 s window instead of 60 s")
    args = parser.parse_args()
    window = 15.0 if args.quick else 60.0

    if not PYZ.exists():
        subprocess.run([str(ROOT / "build" / "shiv.sh")], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable}, stdout=sys.stderr)
    python = python_for_pyz()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        cfg = Path(tmp) / "daemon.yaml"
        cfg.write_text(json.dumps({  # YAML is a superset of JSON
            "daemon": {"work_dir": str(work), "log_file": str(work / "daemon.log"),
                       "pid_file": str(work / "daemon.pid")},
            "agent": {"enabled": False},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_"))}
        env["SHIV_ROOT"] = str(Path(tmp) / "shiv")
        subprocess.run([python, str(PYZ), "version"], env=env, check=True, capture_output=True)  # warm

        reports = work / "reports.jsonl"
        t0 = time.monotonic()
        proc = subprocess.Popen([python, str(PYZ), "-c", str(cfg), "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (reports.exists() and reports.stat().st_size > 0):
                if proc.poll() is not None or time.monotonic() - t0 > 30:
                    sys.exit(f"no report within 30 s (exit code {proc.poll()})")
                time.sleep(0.005)
            first_report = time.monotonic() - t0
            cpu0, w0 = cpu_seconds(proc.pid), time.monotonic()
            peak = 0.0
            while time.monotonic() - w0 < window:
                time.sleep(1.0)
                peak = max(peak, rss_mb(proc.pid))
            cpu_percent = 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - w0)
            rss = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    figures = {"standalone_rss_mb": round(rss, 1), "standalone_cpu_percent": round(cpu_percent, 3),
               "standalone_first_report_s": round(first_report, 3)}
    print(f"daemon.pyz run (stand-alone, {python}), {window:.0f} s window: RSS {rss:.1f} MB "
          f"(peak {peak:.1f}, budget 40), CPU {cpu_percent:.3f} % (budget 0.1), first report after "
          f"{first_report:.3f} s; exit code on SIGTERM {code}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
