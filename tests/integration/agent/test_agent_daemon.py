"""The real daemon (`python -m daemon_app run`) with a real Agent: SIGTERM leaves the Agent running, the
next daemon adopts it; events reach a loose plugin in the plugin directory, in order."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from daemon_app.agent.process import start_ticks
from tests.helpers import base_config, deep_merge, wait_until, write_config
from tests.integration.agent.conftest import FAST_AGENT, alive

pytestmark = pytest.mark.timeout(90)

EVENTS_PLUGIN = '''
"""Appends every Agent event to <work_dir>/events.jsonl."""
import json
import os

from daemon_app.hookspecs import hookimpl

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "events.jsonl")


@hookimpl
def on_agent_event(event):
    with open(PATH, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\\n")
'''


def read_events(work: str) -> list[dict]:
    try:
        with open(os.path.join(work, "events.jsonl"), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def agents_on(socket_path: str) -> list[int]:
    """Every live process whose environment points at this test's heartbeat socket."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("AGENT_SOCKET") == socket_path and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_sigterm_leaves_the_agent_running_and_the_next_daemon_adopts_it(harness, daemon_processes):
    work = harness.dir
    os.makedirs(os.path.join(work, "plugins"))
    with open(os.path.join(work, "plugins", "events_log.py"), "w") as fh:
        fh.write(EVENTS_PLUGIN)
    agent = deep_merge(FAST_AGENT, {"socket_path": os.path.join(work, "agent.sock"),
                                    "work_dir": os.path.join(work, "agent")})
    cfg_path = write_config(os.path.join(work, "daemon.yaml"),
                            base_config(work, agent=agent, daemon={"report_interval": "1h"}))
    socket_path = agent["socket_path"]
    try:
        check_adoption(harness, daemon_processes, work, cfg_path, socket_path)
    finally:
        for pid in agents_on(socket_path):  # whatever happened, leave no Agent behind
            harness.track(pid)


def check_adoption(harness, daemon_processes, work: str, cfg_path: str, socket_path: str) -> None:
    first = daemon_processes(cfg_path)
    wait_until(lambda: "running" in [e["type"] for e in read_events(work)], 20, what="Agent RUNNING")
    with open(os.path.join(work, "agent.pid")) as fh:
        record = json.load(fh)
    pid = harness.track(record["pid"])
    assert record["start_ticks"] == start_ticks(pid)
    assert [e["type"] for e in read_events(work)] == ["started", "running"]

    assert first.stop(timeout=30) == 0
    assert alive(pid), "stopping the daemon must not stop the Agent"
    assert os.path.exists(os.path.join(work, "agent.pid"))

    second = daemon_processes(cfg_path)
    wait_until(lambda: len(read_events(work)) >= 3, 20, what="the second daemon's first event")
    adopted = read_events(work)[2]
    assert adopted["type"] == "adopted" and adopted["pid"] == pid and adopted["state"] == "RUNNING"
    assert agents_on(socket_path) == [pid], "a second Agent appeared"

    # The adopted Agent keeps being supervised: a crash is seen at once and it is replaced.
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: [e["type"] for e in read_events(work)][-1:] == ["running"]
               and len(read_events(work)) >= 7, 20, what="the replacement Agent RUNNING")
    types = [e["type"] for e in read_events(work)]
    assert types == ["started", "running", "adopted", "exited", "restarting", "started", "running"]
    exited = read_events(work)[3]
    assert exited["pid"] == pid and exited["exit_known"] is False
    new_pid = harness.track(read_events(work)[5]["pid"])
    assert agents_on(socket_path) == [new_pid]
    assert second.stop(timeout=30) == 0
    assert alive(new_pid)
