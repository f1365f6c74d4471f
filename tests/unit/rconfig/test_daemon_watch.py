"""The daemon-settings verify rule (daemon_watch.py), each clause on its own: the peers are small
implementations of the typed seams (host.py protocols) whose state the test changes mid-window, over a
real validated Config. End to end (real daemon, real Agent) in tests/integration/rconfig."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from daemon_app import config
from daemon_app.agent.snapshot import AgentSnapshot, AgentState, LastExit
from daemon_app.comm.snapshot import LinkSnapshot
from daemon_app.rconfig.daemon_watch import DaemonWatch, Expect

WINDOW = 1.5


class Host:
    def __init__(self, report_interval: str = "100ms") -> None:
        self.cfg = config.validate({"daemon": {"report_interval": report_interval},
                                    "remote_config": {"verify_timeout": f"{WINDOW}s"}})
        self.reports_built = 0


class Agent:
    def __init__(self) -> None:
        self.snap = AgentSnapshot(pid=4242, state=AgentState.RUNNING, version="1", heartbeats_received=9,
                                  restart_count=0, last_exit=None)

    def snapshot(self) -> AgentSnapshot:
        return self.snap


class Link:
    def __init__(self) -> None:
        self.snap = LinkSnapshot(state="ready", connected=True, registered=True, acked_seq=1, last_seq=1,
                                 outbox_depth=0)

    def snapshot(self) -> LinkSnapshot:
        return self.snap


class Node:
    """The peers as the engine's getters return them; `swap` replaces one, as a service restart does."""

    def __init__(self, **host_args: Any) -> None:
        self.host, self.agent, self.link, self.updates = Host(**host_args), Agent(), Link(), object()
        self.watch = DaemonWatch(self.host, agent=lambda: self.agent, link=lambda: self.link,
                                 updates=lambda: self.updates)

    def after(self, seconds: float, change) -> None:
        threading.Timer(seconds, change).start()


@pytest.mark.timeout(30)
def test_steady_peers_and_a_report_built_are_healthy_after_the_whole_window():
    n = Node()
    expect = n.watch.expectations()
    assert expect == Expect(agent_up=True, registered=True, agent_pid=4242)
    n.after(0.2, lambda: setattr(n.host, "reports_built", 1))
    began = time.monotonic()
    verdict = n.watch.verify(expect)
    assert verdict.healthy, verdict.why
    assert time.monotonic() - began >= WINDOW


@pytest.mark.timeout(30)
def test_no_report_built_while_one_was_due_fails_naming_the_interval():
    n = Node()
    verdict = n.watch.verify(n.watch.expectations())
    assert not verdict.healthy
    assert verdict.why == "no report was built within 1.5s (daemon.report_interval 0.1s)"


@pytest.mark.timeout(30)
def test_a_report_not_due_within_the_window_is_not_required():
    n = Node(report_interval="1s")  # 1 s + 10 % jitter + 1 s of slack > 1.5 s
    assert n.watch.verify(n.watch.expectations()).healthy


@pytest.mark.timeout(30)
def test_a_link_registered_before_and_not_at_the_end_fails():
    n = Node()
    n.after(0.1, lambda: setattr(n.host, "reports_built", 1))
    n.after(0.2, lambda: setattr(n.link, "snap", replace(n.link.snap, registered=False, state="connecting")))
    verdict = n.watch.verify(n.watch.expectations())
    assert not verdict.healthy
    assert verdict.why == "the Manager link was not registered after 1.5s (state connecting)"


@pytest.mark.timeout(30)
def test_a_link_not_registered_before_the_push_is_not_required_after_it():
    n = Node()
    n.link.snap = replace(n.link.snap, registered=False)
    n.after(0.1, lambda: setattr(n.host, "reports_built", 1))
    assert n.watch.verify(n.watch.expectations()).healthy


@pytest.mark.timeout(30)
@pytest.mark.parametrize("peer, name", [("link", "Manager link"), ("agent", "Agent supervisor"),
                                        ("updates", "update service")])
def test_a_service_replaced_or_turned_off_mid_window_fails_at_once(peer, name):
    n = Node()
    expect = n.watch.expectations()
    n.after(0.2, lambda: setattr(n, peer, None))
    began = time.monotonic()
    verdict = n.watch.verify(expect)
    assert not verdict.healthy and verdict.why == f"the daemon's {name} stopped or restarted within 1.5s"
    assert time.monotonic() - began < WINDOW, "a failure must end the window at once"


@pytest.mark.timeout(30)
def test_the_agent_being_stopped_by_the_daemon_is_a_failed_health_check():
    n = Node()
    expect = n.watch.expectations()
    n.after(0.2, lambda: setattr(n.agent, "snap", replace(n.agent.snap, state=AgentState.STOPPING)))
    verdict = n.watch.verify(expect)
    assert verdict.why == "the daemon stopped the Agent (pid 4242) after a failed health check within 1.5s"


@pytest.mark.timeout(30)
def test_the_agent_replaced_by_another_process_fails_with_how_it_ended():
    n = Node()
    expect = n.watch.expectations()
    n.after(0.2, lambda: setattr(n.agent, "snap", replace(n.agent.snap, pid=4343,
                                                          last_exit=LastExit(code=3, signal=None))))
    verdict = n.watch.verify(expect)
    assert verdict.why == "the Agent (pid 4242) went down (exit with code 3) within 1.5s"


@pytest.mark.timeout(30)
def test_after_a_rollback_the_first_agent_up_is_watched_and_must_come_up():
    n = Node()
    n.host.reports_built = 1
    n.after(0.05, lambda: setattr(n.host, "reports_built", 2))
    n.agent.snap = replace(n.agent.snap, pid=0, state=AgentState.BACKOFF)
    verdict = n.watch.verify(Expect(agent_up=True, registered=True))  # no pid: the first one up
    assert verdict.why == "no Agent was up within 1.5s (state BACKOFF)"
    n.after(0.05, lambda: setattr(n.host, "reports_built", 3))
    n.after(0.2, lambda: setattr(n.agent, "snap", replace(n.agent.snap, pid=77, state=AgentState.STARTING)))
    assert n.watch.verify(Expect(agent_up=True, registered=True)).healthy
