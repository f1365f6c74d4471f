"""Graceful shutdown of a real daemon: SIGTERM waits for work in flight, then exits 0."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import wait_until

from .conftest import log_text, plugin, stand_alone, write

SLOW_REPORT = '''
@hookimpl
def report(report):
    open({started!r}, "w").close()
    time.sleep({delay})
    open({finished!r}, "w").close()
'''

SLOW_COLLECT = '''
@hookimpl
def collect(ctx):
    open({started!r}, "w").close()
    time.sleep({delay})
    open({finished!r}, "w").close()
    return Metrics("slow", {{"value": 1}})
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["report", "collect"])
def test_sigterm_during_slow_work_waits_for_it_and_exits_0(ops_dir, daemon_processes, kind):
    started, finished = ops_dir / "started", ops_dir / "finished"
    body = SLOW_REPORT if kind == "report" else SLOW_COLLECT
    plugin(ops_dir, "slow", body.format(started=str(started), finished=str(finished), delay=1.5))
    raw = stand_alone(ops_dir, collectors={"slow": {"timeout": "20s"}}, daemon={"report_timeout": "20s"})
    proc = daemon_processes(write(ops_dir, raw))
    wait_until(started.exists, timeout=20, what=f"the slow {kind} to start")
    proc.signal(signal.SIGTERM)
    assert proc.stop(timeout=30) == 0
    assert finished.exists(), f"the daemon exited before the {kind} in flight finished"
    text = log_text(ops_dir)
    assert "stopping on SIGTERM" in text and "daemon stopped" in text
    assert "abandoning" not in text


@pytest.mark.timeout(60)
def test_work_past_the_shutdown_timeout_is_abandoned_and_the_exit_is_still_clean(ops_dir, daemon_processes):
    started, finished = ops_dir / "started", ops_dir / "finished"
    plugin(ops_dir, "hung", SLOW_REPORT.format(started=str(started), finished=str(finished), delay=600))
    raw = stand_alone(ops_dir, daemon={"report_timeout": "300ms", "shutdown_timeout": "1s"})
    proc = daemon_processes(write(ops_dir, raw))
    wait_until(started.exists, timeout=20, what="the hung report to start")
    wait_until(lambda: "took longer than 0.3s" in log_text(ops_dir), timeout=10)
    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.stop(timeout=30) == 0
    assert time.monotonic() - t0 < 10
    assert not finished.exists()
    text = log_text(ops_dir)
    assert "D5001 reporter hung took longer than 0.3s" in text
    assert "shutdown timeout (1s): abandoning report hung" in text
