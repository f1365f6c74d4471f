"""Benchmark: a Manager outage while the daemon reports every second — nothing may be lost.

Starts the reference Manager and dist/daemon.pyz (`--source`: `python -m daemon_app` from this
tree) reporting at a 1 s interval (reconnect back-off 1 s, at most 5 s, so that the drain time is
not mostly back-off), kills the Manager with SIGKILL for 60 s (--quick 20 s), starts it again on
the same port and database, and measures:
  outage_reports_lost   reports in the file reporter's reports.jsonl (every report the daemon
                        built) that the Manager does not hold after recovery and a clean daemon
                        stop; must be 0
  outage_drain_s        Manager back -> the Manager holds every report built before it came back
  outage_reconnect_s    Manager back -> the first report stored again (reconnect + first batch)
  outage_reports_queued reports built but not held by the Manager when it came back
Human lines go to stderr; the last stdout line is the JSON of figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from bench_idle import daemon_command
from common import arg_parser, emit, free_port, log, wait_until
from manager_support import ManagerProcess


def file_reports(work: Path) -> list[str]:
    """Timestamps of every report the file reporter wrote, in order (a torn last line is skipped)."""
    path = work / "reports.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line)["timestamp"])
        except ValueError:
            continue
    return out


def stored(db: Path) -> dict[str, tuple[int, int]]:
    """timestamp -> (seq, outbox_dropped) of every report the Manager holds."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {ts: (seq, dropped) for ts, seq, dropped in
                con.execute("SELECT timestamp, seq, outbox_dropped FROM reports")}
    except sqlite3.OperationalError:  # the Manager has not made its tables yet
        return {}
    finally:
        con.close()


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--source", action="store_true", help="run `python -m daemon_app` from this tree")
    args = parser.parse_args()
    outage = 20.0 if args.quick else 60.0

    from daemon_manager import pki

    tmp = Path(tempfile.mkdtemp(prefix="boutage", dir="/tmp"))  # short: AF_UNIX paths
    work, db, listen = tmp / "work", tmp / "manager.db", f"127.0.0.1:{free_port()}"
    manager = proc = None
    try:
        pki_dir = tmp / "pki"
        pki.init(pki_dir, ["outage"])
        manager = ManagerProcess(str(db), str(pki_dir), listen)
        cfg = tmp / "daemon.yaml"
        cfg.write_text(json.dumps({  # YAML is a superset of JSON
            "daemon": {"work_dir": str(work), "log_file": str(work / "daemon.log"),
                       "pid_file": str(work / "daemon.pid"), "control_socket": str(tmp / "ctl.sock"),
                       "report_interval": "1s"},
            "manager": {"address": listen, "reconnect_interval": "1s", "reconnect_max": "5s",
                        "tls": {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / "outage.crt"),
                                "key_file": str(pki_dir / "outage.key")}},
            "agent": {"enabled": False},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_", "NOTIFY_"))}
        env["SHIV_ROOT"] = str(tmp / "shiv")
        cmd = daemon_command(args.source, cfg, env)
        proc = subprocess.Popen(cmd, env=env, cwd=str(tmp), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def alive() -> None:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode}; see {work}/daemon.log")

        wait_until(lambda: alive() or len(stored(db)) >= 3, timeout=60, interval=0.1, what="3 reports stored")
        manager.proc.kill()  # a crash, not a clean stop
        manager.proc.wait(10)
        manager = None
        down_at = time.monotonic()
        before = len(stored(db))
        log(f"manager killed with {before} report(s) stored; away for {outage:.0f} s")
        while time.monotonic() - down_at < outage:
            alive()
            time.sleep(min(1.0, outage - (time.monotonic() - down_at)))

        built, held = file_reports(work), stored(db)
        queued = sum(1 for ts in built if ts not in held)
        manager = ManagerProcess(str(db), str(pki_dir), listen)
        up_at = time.monotonic()
        wait_until(lambda: len(stored(db)) > before, timeout=60, interval=0.02, what="the first report after")
        reconnect = time.monotonic() - up_at
        wait_until(lambda: set(built) <= stored(db).keys(), timeout=120, interval=0.02,
                   what="every report built during the outage")
        drain = time.monotonic() - up_at
        log(f"manager back: first report stored after {reconnect:.2f} s, the {queued} report(s) waiting "
            f"for it drained after {drain:.2f} s")

        time.sleep(3.0)  # a few reports over the recovered link, then a clean stop (flushes the outbox)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        built, held = file_reports(work), stored(db)
        lost = [ts for ts in built if ts not in held]
        seqs = sorted(seq for seq, _ in held.values())
        gaps = [s for s in range(seqs[0], seqs[-1] + 1) if s not in set(seqs)] if seqs else []
        dropped = max((d for _, d in held.values()), default=0)
        log(f"daemon exit code {code}; {len(built)} report(s) built, {len(held)} held by the manager, "
            f"{len(lost)} lost, seq gaps {gaps[:10]}, outbox drops reported {dropped}")
        figures = {"outage_reports_lost": len(lost), "outage_drain_s": round(drain, 3),
                   "outage_reconnect_s": round(reconnect, 3), "outage_reports_queued": queued}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if manager is not None:
            manager.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    emit(figures)


if __name__ == "__main__":
    main()
