"""Who may send heartbeats: the Agent and its descendants (real processes), and the health verdict's words."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from daemon_app.agent import health
from tests.helpers import wait_until

SLEEP = "import time; time.sleep(30)"


def test_the_agent_and_its_descendants_belong_to_it_others_do_not():
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); "
            "time.sleep(30)")
    agent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    stranger = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        child = wait_until(lambda: psutil.Process(agent.pid).children(), 10, what="the Agent's child")[0].pid
        lineage = health.AgentLineage()
        assert not lineage.includes(agent.pid)  # no Agent yet
        lineage.follow(agent.pid)
        assert lineage.includes(agent.pid) and lineage.includes(child)
        assert not lineage.includes(stranger.pid) and not lineage.includes(os.getpid())
        assert not lineage.includes(0) and not lineage.includes(-1)
        lineage.follow(stranger.pid)  # a new Agent: what was learnt of the old one is forgotten
        assert lineage.includes(stranger.pid) and not lineage.includes(child)
        lineage.follow(0)
        assert not lineage.includes(stranger.pid)
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        stranger.kill()
        agent.wait()
        stranger.wait()


def test_a_peer_cycling_through_pids_cannot_grow_the_cache_without_bound():
    lineage = health.AgentLineage()
    lineage.follow(os.getpid())
    gone = 4_000_000  # above any pid_max: psutil finds no such process
    for n in range(3 * health.AgentLineage.MAX_CACHED):
        assert not lineage.includes(gone + n)
    assert len(lineage._known) <= health.AgentLineage.MAX_CACHED + 1
    assert lineage.includes(os.getpid())


def test_unhealthy_details_name_the_limit_that_was_passed():
    proc = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        hc = health.HealthChecker(proc.pid, heartbeat_timeout=5.0, cpu_threshold=50.0, memory_threshold=1024,
                                  threshold_duration=3.0)
        hc.sampler.last = health.Sample(75.25, 4096, 1)
        assert hc.explain(health.CPU_THRESHOLD) == "cpu 75.2% > 50.0% for 3s"
        assert hc.explain(health.MEMORY_THRESHOLD) == "rss 4096 > 1024 bytes for 3s"
        assert hc.explain(health.HEARTBEAT_TIMEOUT) == "no heartbeat for 5s"
        assert hc.explain(health.DEAD) == "process gone"
    finally:
        proc.kill()
        proc.wait()
