"""Report round trip on loopback: the `report` hook -> outbox -> gRPC/mTLS -> Manager stored -> ack."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from manager_support import ManagerProcess, make_link, percentile, sample_report, say, wait, workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 reports instead of 1000")
    args = parser.parse_args()
    count = 200 if args.quick else 1000

    from daemon_app.comm import messages
    from daemon_manager import pki

    tmp = workspace()
    try:
        pki.init(os.path.join(tmp, "pki"), ["n1"])
        manager = ManagerProcess(os.path.join(tmp, "m.db"), os.path.join(tmp, "pki"))
        link = make_link(os.path.join(tmp, "work"), manager.address, os.path.join(tmp, "pki"), "n1")
        link.start()
        wait(lambda: link.status()["registered"], 20, "registration")
        report = sample_report()
        body_bytes = len(messages.report_to_pb(report).SerializeToString())
        say(f"report size {body_bytes} bytes; {count} round trips to {manager.address}")
        box = link.outbox
        times = []
        for _ in range(count + 20):
            start = time.perf_counter()
            link.report(report)
            while box.depth:
                time.sleep(0.00005)
            times.append((time.perf_counter() - start) * 1000)
        times = times[20:]  # warm-up
        link.stop(time.monotonic() + 5)
        manager.stop()
        result = {"report_ms_p50": round(percentile(times, 50), 3),
                  "report_ms_p99": round(percentile(times, 99), 3), "report_bytes": body_bytes}
        say(f"round trip p50 {result['report_ms_p50']} ms, p99 {result['report_ms_p99']} ms "
            "(budget p99 <= 10 ms)")
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
