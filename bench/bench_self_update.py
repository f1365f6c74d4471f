"""Benchmark: daemon self-update pushed by the Manager, from one built pyz to the next.

Builds the pyz files from this source tree (build/shiv.sh with DAEMON_VERSION), starts the first
with a Manager and the sample Agent, and pushes each next version with `daemon-manager push-update`.
`self_update_s`: the command queued -> the new daemon registered with the Manager (median).
`self_update_reports_lost`: reports the daemon made (its file reporter, <work_dir>/reports.jsonl)
that the Manager never stored, plus gaps in the Manager's seqs, over the whole run (must be 0).
Last stdout line: JSON figures. `--quick`: one update instead of three.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import arg_parser, emit, log, wait_until  # noqa: E402

from tests.helpers import ROOT  # noqa: E402
from tests.live_update import NODE, kill_agent, make_site  # noqa: E402


def build(out: Path, version: str) -> Path:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "DAEMON_VERSION": version}
    subprocess.run([str(ROOT / "build" / "shiv.sh")], check=True, env=env, cwd=ROOT, timeout=300,
                   stdout=subprocess.DEVNULL)
    return out


def max_seq(site) -> int:
    store = site.store()
    try:
        return max((r["seq"] for r in store.reports(NODE, 1)), default=0)
    finally:
        store.close()


def main() -> None:
    args = arg_parser(__doc__ or "").parse_args()
    versions = ["1.0.0", "1.1.0"] if args.quick else ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    with tempfile.TemporaryDirectory(prefix="bench-self-update-") as tmp:
        base = Path(tmp)
        log(f"building {len(versions)} pyz files ...")
        pyz = {v: build(base / f"daemon-{v}.pyz", v) for v in versions}
        site = make_site(base)
        site.install_agent("1.0.0")
        target = site.work / "bin" / "daemon.pyz"
        target.write_bytes(pyz[versions[0]].read_bytes())
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "SHIV_", "DAEMON_", "INVOCATION_ID", "NOTIFY_SOCKET"))}
        env["SHIV_ROOT"] = str(base / "shiv")
        config = site.daemon_config(self_update_deadline="60s")
        proc = subprocess.Popen([sys.executable, str(target), "-c", config, "run"], env=env, cwd="/",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times: list[float] = []
        try:
            wait_until(lambda: (site.node() or {}).get("daemon_version") == versions[0], timeout=60,
                       what="the first daemon registered")
            for version in versions[1:]:
                pkg, rel = site.release(version, "daemon", version, pyz[version].read_bytes())
                cid = site.push_update(pkg, rel)
                done = site.wait_final(cid, timeout=120)
                if done["state"] != "completed":
                    raise SystemExit(f"self-update to {version} ended {done['state']}: {done['result']}")
                node = site.node() or {}
                if node.get("daemon_version") != version or proc.poll() is not None:
                    raise SystemExit(f"after the update the node runs {node.get('daemon_version')}")
                took = node["registered_at"] - done["created_at"]
                times.append(took)
                log(f"{version}: command -> new daemon registered {took:.3f}s, "
                    f"-> committed {done['updated_at'] - done['created_at']:.3f}s")
                # A few reports from the new daemon before the next update.
                last = max_seq(site)
                wait_until(lambda last=last: max_seq(site) >= last + 3, timeout=30,
                           what="reports from the new daemon")
        finally:
            proc.terminate()  # SIGTERM: the outbox is flushed to the Manager before the exit
            proc.wait(60)
            kill_agent(site.work)
        store = site.store()
        stored = store.reports(NODE)
        store.close()
        seqs = [r["seq"] for r in stored]
        gaps = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else 0
        lines = (site.work / "reports.jsonl").read_text().splitlines()
        made = [json.loads(line)["timestamp"] for line in lines]
        missing = set(made) - {r["timestamp"] for r in stored}
        log(f"{len(made)} reports made, {len(stored)} stored by the Manager (seq {min(seqs)}..{max(seqs)}), "
            f"{len(missing)} missing, {gaps} seq gap(s)")
        site.stop()
    emit({"self_update_s": round(statistics.median(times), 3),
          "self_update_reports_lost": len(missing) + gaps, "self_update_rounds": len(times)})


if __name__ == "__main__":
    main()
