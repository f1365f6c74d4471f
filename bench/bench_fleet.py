"""Fleet simulation: 500 simulated daemons in one process, each with its own client certificate,
registering, holding a command stream open and reporting every second to the reference Manager."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import time

from manager_support import ManagerProcess, percentile, sample_report, say, workspace


async def daemon(index: int, address: str, creds: object, report_body: bytes, until: float,
                 latencies: list[float], counts: dict[str, int]) -> None:
    import grpc

    from daemon_app.proto import daemon_pb2 as pb
    from daemon_app.proto import daemon_pb2_grpc as pb_grpc

    node_id = f"sim-{index:04d}"
    async with grpc.aio.secure_channel(address, creds) as channel:
        stub = pb_grpc.DaemonServiceStub(channel)
        info = pb.NodeInfo(node_id=node_id, hostname=node_id)
        await stub.Register(pb.RegisterRequest(node=info), timeout=30)
        stream = stub.Commands(pb.CommandStreamRequest(node_id=node_id))
        await asyncio.sleep(random.random())  # daemons do not start in step
        seq = 0
        try:
            while time.monotonic() < until:
                seq += 1
                report = pb.Report.FromString(report_body)
                report.node_id, report.seq = node_id, seq
                start = time.perf_counter()
                try:
                    await stub.ReportMetrics(pb.ReportBatch(node_id=node_id, reports=[report]), timeout=10)
                    latencies.append((time.perf_counter() - start) * 1000)
                    counts["ok"] += 1
                except grpc.RpcError:
                    counts["failed"] += 1
                spent = time.perf_counter() - start
                await asyncio.sleep(max(0.0, 1.0 - spent) * (0.9 + 0.2 * random.random()))
        finally:
            stream.cancel()


async def fleet(address: str, pki_dir: str, nodes: int, seconds: float, report_body: bytes,
                manager_pid: int) -> dict[str, float]:
    import grpc
    import psutil

    ca = open(os.path.join(pki_dir, "ca.crt"), "rb").read()
    creds = [grpc.ssl_channel_credentials(ca, open(os.path.join(pki_dir, f"sim-{i:04d}.key"), "rb").read(),
                                          open(os.path.join(pki_dir, f"sim-{i:04d}.crt"), "rb").read())
             for i in range(nodes)]
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    proc = psutil.Process(manager_pid)
    warmup = 5.0
    until = time.monotonic() + warmup + seconds
    tasks = [asyncio.create_task(daemon(i, address, creds[i], report_body, until, latencies, counts))
             for i in range(nodes)]
    await asyncio.sleep(warmup)  # registrations and TLS handshakes are not part of the steady state
    cpu0, ok0, lat0, t0 = proc.cpu_times(), counts["ok"], len(latencies), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, ok1, t1 = proc.cpu_times(), counts["ok"], time.monotonic()
    rss = proc.memory_info().rss
    steady = latencies[lat0:]
    await asyncio.gather(*tasks, return_exceptions=True)
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"fleet_reports_per_s": round((ok1 - ok0) / (t1 - t0), 1),
            "fleet_report_ms_p50": round(percentile(steady, 50), 2),
            "fleet_report_ms_p99": round(percentile(steady, 99), 2),
            "fleet_manager_cpu_percent": round(100 * busy / (t1 - t0), 1),
            "fleet_manager_rss_mb": round(rss / 2**20, 1),
            "fleet_failed_calls": counts["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60 s")
    parser.add_argument("--nodes", type=int, default=500)
    args = parser.parse_args()
    seconds = 15.0 if args.quick else 60.0

    from daemon_app.comm import messages
    from daemon_manager import pki

    tmp = workspace()
    try:
        pki_dir = os.path.join(tmp, "pki")
        ca = pki.init(pki_dir)
        for i in range(args.nodes):
            ca.issue_client(f"sim-{i:04d}").write(os.path.join(pki_dir, f"sim-{i:04d}.crt"),
                                                  os.path.join(pki_dir, f"sim-{i:04d}.key"))
        body = messages.report_to_pb(sample_report()).SerializeToString()
        manager = ManagerProcess(os.path.join(tmp, "m.db"), pki_dir)
        say(f"{args.nodes} simulated daemons -> {manager.address}, one {len(body)}-byte report each per "
            f"second, {seconds:.0f} s measured")
        try:
            result = asyncio.run(fleet(manager.address, pki_dir, args.nodes, seconds, body, manager.proc.pid))
        finally:
            manager.stop()
        for key, value in result.items():
            say(f"{key}: {value}")
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
