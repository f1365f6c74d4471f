"""Benchmark: an Agent update pushed by the Manager to a running daemon with the sample Agent.

`daemon-manager push-update` of a 50 MB Agent (the sample Agent as a zipapp carrying 50 MB of
payload) over loopback mutual TLS; the time from the command being queued to `completed` (the new
Agent heartbeating its version), split by the status timestamps the Manager stored: download,
verify (size + SHA-256), swap (stop the Agent, back up, atomic swap) and restart (start the new Agent
until its first heartbeat with the new version). Runs dist/daemon.pyz when it exists, else the
source tree. Last stdout line: JSON figures. `--quick`: one round of 10 MB.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import PYZ, arg_parser, emit, log  # noqa: E402

from tests.helpers import ROOT  # noqa: E402
from tests.live_update import kill_agent, make_site, sample_agent  # noqa: E402


def agent_package(version: str, payload_mb: int) -> bytes:
    """The sample Agent as an executable zipapp with `payload_mb` of incompressible ballast: Python
    reads only the zip directory and __main__.py, so a big package still starts at once."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("__main__.py", sample_agent(version).split(b"\n", 1)[1])
        zf.writestr("payload.bin", os.urandom(payload_mb * 1024 * 1024))
    return f"#!{sys.executable}\n".encode() + buf.getvalue()


def start_daemon(config: str, shiv_root: str) -> subprocess.Popen[bytes]:
    if PYZ.exists():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHIV_", "DAEMON_"))}
        env["SHIV_ROOT"] = shiv_root
        cmd = [sys.executable, str(PYZ), "-c", config, "run"]
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "daemon_app", "-c", config, "run"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))


def splits(update: dict) -> dict[str, float]:
    """Phase durations from the statuses the Manager received (their receive times)."""
    st = update["statuses"]

    def first(state: str, after: float = 0.0) -> float:
        return next(s["received_at"] for s in st if s["state"] == state and s["received_at"] >= after)

    dl_start = first("downloading")
    dl_end = first("verifying", dl_start)
    swap_start = first("installing", dl_end)
    restart_start = first("restarting", swap_start)
    end = first("completed", restart_start)
    return {"download": dl_end - dl_start, "verify": swap_start - dl_end, "swap": restart_start - swap_start,
            "restart": end - restart_start, "total": end - update["created_at"]}


def main() -> None:
    args = arg_parser(__doc__ or "").parse_args()
    size_mb, rounds = (10, 1) if args.quick else (50, 3)
    log(f"Agent update of a {size_mb} MB package, {rounds} round(s), daemon from "
        f"{PYZ if PYZ.exists() else 'the source tree'}")
    with tempfile.TemporaryDirectory(prefix="bench-agent-update-") as tmp:
        site = make_site(Path(tmp))
        site.install_agent("1.0.0")
        proc = start_daemon(site.daemon_config(verify_timeout="60s"), str(Path(tmp) / "shiv"))
        results: dict[str, list[float]] = {}
        try:
            deadline = time.monotonic() + 60
            while site.agent_version() != "1.0.0":
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the daemon did not register with Agent 1.0.0")
                time.sleep(0.1)
            for n in range(rounds):
                version = f"{n + 2}.0.0"
                pkg, rel = site.release(f"r{n}", "agent", version, agent_package(version, size_mb))
                cid = site.push_update(pkg, rel)
                done = site.wait_final(cid, timeout=300)
                if done["state"] != "completed":
                    raise SystemExit(f"update {version} ended {done['state']}: {done['result']}")
                parts = splits(done)
                for key, value in parts.items():
                    results.setdefault(key, []).append(value)
                log(f"round {n}: {version} " + " ".join(f"{k} {v:.3f}s" for k, v in parts.items()))
        finally:
            proc.terminate()
            proc.wait(30)
            kill_agent(site.work)
            site.stop()
    figures = {f"agent_update_{k}_s": round(statistics.median(v), 3) for k, v in results.items()
               if k != "total"}
    figures["agent_update_s"] = round(statistics.median(results["total"]), 3)
    figures["agent_update_package_mb"] = size_mb
    emit(figures)


if __name__ == "__main__":
    main()
