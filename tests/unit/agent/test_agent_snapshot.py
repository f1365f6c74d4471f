"""The typed seams other parts read of the Agent: AgentState, AgentSnapshot (LinkSnapshot: the link's
own tests)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from daemon_app.agent import supervisor
from daemon_app.agent.snapshot import AgentSnapshot, AgentState, LastExit


def test_agent_states_are_supervisords_names_and_print_as_them():
    assert [s.value for s in AgentState] == ["STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING",
                                             "EXITED", "FATAL"]
    assert (supervisor.STOPPED, supervisor.RUNNING, supervisor.FATAL) == ("STOPPED", "RUNNING", "FATAL")
    assert f"{AgentState.RUNNING}" == str(AgentState.RUNNING) == "RUNNING"
    assert json.dumps({"state": AgentState.BACKOFF}) == '{"state": "BACKOFF"}'
    assert [s for s in AgentState if s.live] == [AgentState.STARTING, AgentState.RUNNING]


def test_agent_snapshot_from_status_is_typed_and_frozen():
    status = {"pid": 42, "state": "RUNNING", "version": "1.2.3", "heartbeats_received": 7, "restart_count": 1,
              "last_exit": {"code": None, "signal": 9, "at": "2026-12-01T00:00:00Z", "stderr_tail": []},
              "cpu_percent": 0.5}
    snap = AgentSnapshot.from_status(status)
    last = LastExit(None, 9, "2026-12-01T00:00:00Z")
    assert snap == AgentSnapshot(42, AgentState.RUNNING, "1.2.3", 7, 1, last)
    assert snap.state.live and snap.last_exit is not None and snap.last_exit.describe() == "signal 9"
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.pid = 1  # type: ignore[misc]
    fresh = AgentSnapshot.from_status({"pid": 0, "state": "STOPPED", "version": "", "heartbeats_received": 0,
                                       "restart_count": 0, "last_exit": None})
    assert fresh.last_exit is None and not fresh.state.live


def test_an_unknown_agent_state_is_refused_not_guessed():
    with pytest.raises(ValueError):
        AgentSnapshot.from_status({"pid": 1, "state": "ZOMBIE"})
