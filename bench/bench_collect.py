"""Benchmark: one collection round of every built-in collector (budget: p99 <= 5 ms).

Runs the round the way the engine does (CollectorRunner: each collector on its worker thread,
bounded by its timeout) 1,000 times (--quick: 200) after a warm-up, and reports the median and p99
wall time of a round. Human lines go to stderr; the last stdout line is the JSON of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from daemon_app import config, plugins  # noqa: E402
from daemon_app.collection import CollectorRunner  # noqa: E402
from daemon_app.metrics import CollectContext  # noqa: E402


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 rounds instead of 1,000")
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (200 if args.quick else 1000)

    with tempfile.TemporaryDirectory() as work:
        cfg = config.validate({"daemon": {"work_dir": work}, "agent": {"enabled": False}})
        loaded = plugins.Plugins()
        loaded.load_builtins(cfg)
        impls = loaded.implementations("collect")
        calls = [(name, fn, cfg.collector(name), cfg.collector(name).timeout) for name, fn in impls]
        runner = CollectorRunner()
        for _ in range(20):
            runner.run(calls)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            outcomes = runner.run(calls)
            times.append((time.perf_counter() - t0) * 1000)
            if not all(o.ok for o in outcomes):
                sys.exit(f"a collector failed: {[o.error for o in outcomes if not o.ok]}")
        runner.close()

        # Each collector alone, called directly: where the time of a round goes.
        for name, fn in impls:
            ctx = CollectContext(name, cfg.collector(name), time.monotonic() + 5)
            alone = []
            for _ in range(min(rounds, 200)):
                t0 = time.perf_counter()
                fn(ctx=ctx)
                alone.append((time.perf_counter() - t0) * 1000)
            print(f"  {name:<8} alone: median {statistics.median(alone):.3f} ms", file=sys.stderr)

    times.sort()
    p50, p99 = round(percentile(times, 0.5), 3), round(percentile(times, 0.99), 3)
    figures = {"collect_ms_p50": p50, "collect_ms_p99": p99}
    print(f"one round of {len(impls)} built-in collectors, {rounds} rounds: p50 {p50} ms, p99 {p99} ms, "
          f"max {times[-1]:.3f} ms (budget p99 <= 5 ms)", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
