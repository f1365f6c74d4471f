"""`make demo`: a tour of dist/daemon.pyz on this machine, stand-alone.

Steps: check the reference config, show one collection round, install the example plugin, then
run the daemon stand-alone for a few short rounds, stop it with SIGTERM and show what it reported.
Each step prints as it goes; the demo exits non-zero when a step fails. Everything lives in the
git-ignored .demo/ folder, removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYZ = ROOT / "dist" / "daemon.pyz"
DEMO = ROOT / ".demo"


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def python_for_pyz() -> str:
    """The system python3 when it is 3.11 (as on a real host: none of our dependencies), else ours."""
    system = shutil.which("python3", path="/usr/bin")
    if system:
        ok = subprocess.run([system, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 11))"])
        if ok.returncode == 0:
            return system
    return sys.executable


def main() -> int:
    if not PYZ.exists():
        print(f"{PYZ} is missing: run `make pyz` first", file=sys.stderr)
        return 1
    shutil.rmtree(DEMO, ignore_errors=True)
    work = DEMO / "work"
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_"))}
    env["SHIV_ROOT"] = str(DEMO / "shiv")
    python = python_for_pyz()
    config = DEMO / "daemon.yaml"
    config.write_text(
        f"daemon:\n  work_dir: {work}\n  log_file: {work}/daemon.log\n  pid_file: {work}/daemon.pid\n"
        "  report_interval: 1s\n"
        "agent:\n  enabled: false\n"
        "collectors:\n"
        + "".join(f"  {name}: {{interval: 500ms}}\n" for name in ("cpu", "memory", "disk", "network"))
    )

    def pyz(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [python, str(PYZ), "-c", str(config), *args]
        print("$", " ".join(["python3", "dist/daemon.pyz", "-c", ".demo/daemon.yaml", *args]), flush=True)
        result = subprocess.run(cmd, env=env, text=True, capture_output=True)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if check and result.returncode != 0:
            raise SystemExit(f"demo: step failed with exit code {result.returncode}")
        return result

    try:
        step(f"the pyz runs on {python} (no dependencies installed there)")
        pyz("version")
        step("the reference configuration passes, and so does this demo's")
        subprocess.run([python, str(PYZ), "-c", str(ROOT / "configs" / "daemon.yaml"), "config", "check"],
                       env=env, check=True)
        pyz("config", "check")
        step("one collection round of the built-in collectors")
        pyz("collect", "--once", "--format", "table")
        step("install the example plugin into the plugin directory (pip --target) and list plugins")
        source = DEMO / "daemon-plugin-loadavg"
        shutil.copytree(ROOT / "plugins" / "daemon-plugin-loadavg", source)
        result = pyz("plugins", "install", "--pip-arg=--quiet", str(source), check=False)
        if result.returncode != 0:
            print("(pip could not install the plugin here; the demo goes on without it)")
        pyz("plugins", "list")
        step("run stand-alone: collect every 500ms, report every 1s, then SIGTERM")
        t0 = time.monotonic()
        proc = subprocess.Popen([python, str(PYZ), "-c", str(config), "run"], env=env)
        reports = work / "reports.jsonl"
        while not reports.exists() or len(reports.read_text().splitlines()) < 3:
            if proc.poll() is not None or time.monotonic() - t0 > 30:
                proc.kill()
                raise SystemExit("demo: the daemon did not write three reports within 30 s")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        print(f"stopped with exit code {code} after {time.monotonic() - t0:.1f} s")
        for line in reports.read_text().splitlines():
            report = json.loads(line)
            metrics = report["metrics"]
            mem = metrics.get("memory", {}).get("values", {})
            print(f"  report {report['timestamp']}: {', '.join(sorted(metrics))}; "
                  f"memory used {mem.get('used_percent')} %")
        if code != 0:
            raise SystemExit("demo: the daemon did not stop cleanly")
        step("demo finished: every step passed")
        return 0
    finally:
        shutil.rmtree(DEMO, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
