"""Hostile Manager commands and edge configurations against a real supervisor and real Agents."""

from __future__ import annotations

import logging

import pytest

from daemon_app.errors import AgentStartError
from tests.helpers import wait_until


@pytest.mark.parametrize("action", [["restart"], {"stop": True}, None, 7, "STOP", "stop\n", "s" * 100_000])
def test_an_action_that_is_not_one_of_ours_is_refused_and_the_agent_keeps_running(harness, action, caplog):
    caplog.set_level(logging.ERROR)
    sup, rec = harness.supervisor()
    engine = sup.host
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(sup.pid)
    assert engine.dispatch_command({"type": "agent", "action": action, "id": "h1"}) is True
    assert any(r.getMessage().startswith("D3001 agent command h1: unknown action") for r in caplog.records)
    # Nothing was posted to the supervisor: a real command after it still runs, on the same Agent.
    future = sup.handle_command({"type": "agent", "action": "restart", "id": "h2"})
    assert future is not None and future.result(10) is None
    wait_until(lambda: sup.pid not in (0, pid) and sup.state == "RUNNING", 10, what="restarted")
    harness.track(sup.pid)
    assert rec.types().count("exited") == 1 and rec.of("restarting")[0]["reason"] == "requested"


def test_a_command_before_supervision_started_fails_at_once_with_d3001(harness):
    sup, rec = harness.supervisor(start=False)
    future = sup.handle_command({"type": "agent", "action": "start", "id": "early"})
    assert future is not None
    with pytest.raises(AgentStartError, match="D3001 agent: supervision is not running"):
        future.result(1)
    assert sup.state == "STOPPED" and sup.pid == 0 and rec.types() == []


def test_a_binary_that_cannot_be_executed_reaches_fatal_even_when_any_run_counts_as_stable(harness):
    # stable_after 0 makes every run stable; a start that failed did not run, so it must still count.
    sup, rec = harness.supervisor(binary_path=f"{harness.dir}/no-such-agent",
                                  restart={"max_retries": 3, "backoff_base": "0s", "backoff_max": "0s",
                                           "stable_after": "0s"})
    fatal = rec.wait_for("fatal", 1, timeout=10)
    assert fatal["restart_count"] == 3 and sup.state == "FATAL"
    assert rec.types().count("exited") == 4 and rec.types().count("started") == 0


def test_a_reload_to_a_socket_that_cannot_be_made_keeps_heartbeats_on_the_old_one(harness, caplog):
    caplog.set_level(logging.ERROR)
    sup, rec = harness.supervisor()
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(sup.pid)
    old_socket = sup.cfg.agent.socket_path
    squatter = f"{harness.dir}/not-a-socket"
    with open(squatter, "w") as fh:
        fh.write("mine")
    sup.reload(harness.config(socket_path=squatter))
    assert any(r.getMessage().endswith(f"; heartbeats stay on {old_socket}") and r.code == "D3001"
               for r in caplog.records)
    assert sup._server is not None and sup._server.path == old_socket
    assert sup.wait_for_heartbeat(None, 10) and sup.pid == pid  # the Agent still reaches us
    with open(squatter) as fh:
        assert fh.read() == "mine"
    assert "unhealthy" not in rec.types()


def test_a_thread_given_the_dead_supervisors_ident_cannot_run_its_steps(harness):
    import threading

    sup, rec = harness.supervisor()
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    harness.track(sup.pid)
    sup.stop_agent()
    dead = sup._thread
    sup._quit = True  # the supervisor's loop ends (as it would on an error)
    sup._waker.wake()
    dead.join(10)
    outcome: list[object] = []

    def caller() -> None:
        if threading.get_ident() != dead.ident:
            return
        try:
            sup.start_agent()
            outcome.append("ran")
        except AgentStartError as exc:
            outcome.append(exc)

    for _ in range(200):  # glibc hands a joined thread's stack, hence its ident, to the next one
        thread = threading.Thread(target=caller)
        thread.start()
        thread.join(10)
        if outcome:
            break
    if not outcome:
        pytest.skip("no new thread was given the dead supervisor's ident")
    assert isinstance(outcome[0], AgentStartError) and "supervision stopped" in str(outcome[0])
    assert sup.state == "STOPPED" and sup.pid == 0 and rec.types().count("started") == 1


def test_hundreds_of_immediate_retries_of_a_missing_binary_unwind_through_the_loop(harness):
    # backoff_base 0 retries at once; each retry must go back through the supervisor's loop, not
    # nest inside the failed start (about 3 stack levels each reached Python's limit near 300).
    sup, rec = harness.supervisor(binary_path=f"{harness.dir}/no-such-agent",
                                  restart={"max_retries": 600, "backoff_base": "0s", "backoff_max": "0s",
                                           "stable_after": "10s"})
    fatal = rec.wait_for("fatal", 1, timeout=60)
    assert fatal["restart_count"] == 600 and sup.state == "FATAL"
    assert rec.types().count("exited") == 601 and rec.types().count("started") == 0
