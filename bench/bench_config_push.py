"""Benchmark: an Agent config pushed by a Manager to a running daemon with the sample Agent.

The contract suite's Manager pushes `agent_config` commands over loopback mutual TLS to a daemon
run from the source tree (remote config is newer than a dist/daemon.pyz may be) whose Agent is the
sample Agent heartbeating every 0.2 s. Figures: push -> `completed` for a good config, which by
the contract includes the whole `remote_config.verify_timeout` window (1 s here), and that time
minus the window (check, swap, Agent restart, answer); push -> `rolled_back` for a config that
makes the Agent exit at start (two exits, restore, verify). Last stdout line: JSON figures.
`--quick`: 3 good pushes instead of 10.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import arg_parser, emit, log  # noqa: E402

from daemon_app.proto import daemon_pb2 as pb  # noqa: E402
from daemon_manager import pki  # noqa: E402
from tests.contract.independent_manager import IndependentManager  # noqa: E402
from tests.helpers import DaemonProcess, wait_until, write_config  # noqa: E402
from tests.integration.rconfig.conftest import node_config  # noqa: E402
from tests.live_update import kill_agent  # noqa: E402

VERIFY_S = 1.0
TERMINAL = ("completed", "rolled_back", "failed", "rejected")


def push(manager: IndependentManager, cid: str, content: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    manager.push(pb.Command(id=cid, agent_config=pb.AgentConfigCommand(content=content)))

    def ended() -> str:
        with manager.lock:
            ends = [s.state for s in manager.statuses if s.command_id == cid and s.state in TERMINAL]
        return ends[0] if ends else ""

    state = wait_until(ended, timeout=60, interval=0.002, what=f"the end of {cid}")
    return state, time.perf_counter() - started


def main() -> None:
    args = arg_parser(__doc__ or "").parse_args()
    rounds = 3 if args.quick else 10
    tmp = Path(tempfile.mkdtemp(prefix="bcp", dir="/tmp"))
    pki.init(tmp / "pki", ["node-a"])
    manager = IndependentManager(tmp / "pki")
    work = tmp / "w"
    cfg = node_config(work, tmp, manager.address, tmp / "pki",
                      remote_config={"verify_timeout": f"{VERIFY_S}s"})
    work.mkdir(parents=True, exist_ok=True)
    daemon = DaemonProcess(write_config(work / "daemon.yaml", cfg))
    try:
        wait_until(lambda: manager.streams_opened >= 1 and manager.heartbeat_count() >= 2, timeout=60,
                   what="the daemon connected")
        good = []
        for i in range(rounds):
            state, took = push(manager, f"good-{i}", f"level: info\nround: {i}\n".encode())
            assert state == "completed", state
            good.append(took)
            log(f"good push {i}: {took:.3f} s")
        state, rollback = push(manager, "crash", b"exit-at-start: 2\n")
        assert state == "rolled_back", state
        log(f"crashing push rolled back in {rollback:.3f} s")
    finally:
        daemon.kill()
        kill_agent(work)  # the daemon leaves its Agent running on exit, by design
        manager.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    median = statistics.median(good)
    emit({"config_push_committed_s": round(median, 3),
          "config_push_overhead_ms": round((median - VERIFY_S) * 1000, 1),
          "config_push_rollback_s": round(rollback, 3)})


if __name__ == "__main__":
    main()
