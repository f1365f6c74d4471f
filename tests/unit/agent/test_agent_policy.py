"""Restart backoff (seed §3.3.1) and threshold tracking (seed §3.3.2) as pure functions of time."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from daemon_app import config
from daemon_app.agent import health
from daemon_app.agent.supervisor import backoff_delay
from tests.helpers import wait_until


def test_backoff_schedule_matches_the_seed_with_default_timings():
    cfg = config.validate({})
    r = cfg.agent.restart
    delays = [backoff_delay(n, r.backoff_base, r.backoff_max) for n in range(8)]
    assert delays == [0.0, 10.0, 10.0, 30.0, 30.0, 60.0, 60.0, 60.0]
    assert r.stable_after == 300.0 and cfg.agent.stop_timeout == 30.0


@pytest.mark.parametrize(("base", "maximum", "expected"), [
    (1.0, 2.0, [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]),  # 3·base capped by max
    (0.0, 0.0, [0.0] * 6),
    (5.0, 100.0, [0.0, 5.0, 5.0, 15.0, 15.0, 100.0]),
])
def test_backoff_derives_from_base_and_max(base, maximum, expected):
    assert [backoff_delay(n, base, maximum) for n in range(6)] == expected


def test_threshold_must_hold_for_the_whole_duration():
    t = health.ThresholdTracker(50.0, 10.0)
    assert not t.update(80.0, 100.0)
    assert not t.update(90.0, 109.9)
    assert t.update(90.0, 110.0)


def test_a_dip_below_the_threshold_starts_the_duration_over():
    t = health.ThresholdTracker(50.0, 10.0)
    t.update(80.0, 0.0)
    t.update(40.0, 5.0)
    assert not t.update(80.0, 12.0)
    assert t.update(80.0, 22.0)


def test_threshold_zero_disables_the_check():
    t = health.ThresholdTracker(0.0, 0.0)
    assert not t.update(1e9, 0.0) and not t.update(1e9, 100.0)


def test_health_checker_heartbeat_timeout_and_dead():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        hc = health.HealthChecker(proc.pid, heartbeat_timeout=5.0, cpu_threshold=0.0, memory_threshold=0,
                                  threshold_duration=0.0)
        assert hc.check(last_heartbeat=100.0, now=104.0) is None
        assert hc.check(last_heartbeat=100.0, now=105.5) == health.HEARTBEAT_TIMEOUT
        hc.configure(heartbeat_timeout=60.0, cpu_threshold=0.0, memory_threshold=1, threshold_duration=0.0)
        assert hc.check(last_heartbeat=100.0, now=105.5) == health.MEMORY_THRESHOLD
    finally:
        proc.kill()
        proc.wait()
    assert hc.check(last_heartbeat=100.0, now=100.0) == health.DEAD


def test_resource_sampler_covers_the_process_tree():
    # The leader starts a child from its main thread and one from another thread; the second one
    # has a child of its own: 4 processes at 3 levels.
    sleeper = "import time; time.sleep(30)"
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleeper!r}]); "
              "time.sleep(30)")
    code = (f"import subprocess, sys, threading, time; "
            f"subprocess.Popen([sys.executable, '-c', {sleeper!r}]); "
            f"threading.Thread(target=subprocess.Popen, args=([sys.executable, '-c', {parent!r}],)).start(); "
            "time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        sampler = health.ResourceSampler(proc.pid)
        sample = wait_until(lambda: (s := sampler.sample()) and s.processes == 4 and s, 10,
                            what="4 processes")
        assert sample.memory_bytes > 4 * 4 * 1024 * 1024  # four Python interpreters
        assert sorted(p.pid for p in health.descendants(psutil.Process(proc.pid))) == \
            sorted(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        assert sample.cpu_percent >= 0.0
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
