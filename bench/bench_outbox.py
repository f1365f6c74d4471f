"""Outbox rates: enqueue (the `report` hook's cost) and drain to a real Manager after an outage."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from manager_support import ManagerProcess, make_link, sample_report, say, wait, workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 reports instead of 10,000")
    args = parser.parse_args()
    count = 2000 if args.quick else 10_000

    from daemon_app.comm import messages
    from daemon_app.comm.outbox import Outbox
    from daemon_manager import pki

    tmp = workspace()
    try:
        pki.init(os.path.join(tmp, "pki"), ["n1"])
        body = messages.report_to_pb(sample_report()).SerializeToString()
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        box = Outbox(os.path.join(work, "outbox.db"), 64 * 1024 * 1024)
        start = time.perf_counter()
        for _ in range(count):
            box.enqueue(body)
        enqueue_s = time.perf_counter() - start
        box.close()
        say(f"enqueued {count} reports of {len(body)} bytes in {enqueue_s:.2f}s")

        manager = ManagerProcess(os.path.join(tmp, "m.db"), os.path.join(tmp, "pki"))
        link = make_link(work, manager.address, os.path.join(tmp, "pki"), "n1",
                         outbox={"batch_size": 100, "drain_interval": "0ms"})
        start = time.perf_counter()
        link.start()
        wait(lambda: link.outbox.depth == 0, 300, "the outbox to drain")
        drain_s = time.perf_counter() - start
        link.stop(time.monotonic() + 5)
        manager.stop()
        say(f"drained {count} reports to the Manager in {drain_s:.2f}s (batches of 100, no pause)")
        print(json.dumps({"outbox_enqueue_per_s": round(count / enqueue_s),
                          "outbox_drain_per_s": round(count / drain_s), "outbox_report_bytes": len(body)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
