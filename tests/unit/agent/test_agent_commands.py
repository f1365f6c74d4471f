"""Manager "agent" commands: a known action is parsed, anything else is refused with D3001 and no crash."""

from __future__ import annotations

import concurrent.futures
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon_app.agent.commands import AgentAction, AgentCommand, log_failure, parse_agent_command
from daemon_app.errors import AgentStopError

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                    max_leaves=10)


@pytest.mark.parametrize("action", ["start", "stop", "restart", "reset"])
def test_each_known_action_is_parsed(action):
    assert parse_agent_command({"type": "agent", "id": "c1", "action": action}) == \
        AgentCommand("c1", AgentAction(action))


@pytest.mark.parametrize("action", [None, "", "Start", "dance", ["start"], {"start": 1}, 1, True,
                                    "x" * 10_000])
def test_anything_else_is_refused_with_d3001(action, caplog):
    caplog.set_level(logging.ERROR)
    assert parse_agent_command({"type": "agent", "id": "c2", "action": action}) is None
    (record,) = caplog.records
    assert record.getMessage().startswith("D3001 agent command c2: unknown action ")
    assert record.code == "D3001" and len(record.getMessage()) < 200  # a huge value is not logged whole


@given(action=JSON)
def test_any_json_value_as_action_parses_or_is_refused_never_raises(action):
    parsed = parse_agent_command({"id": "p", "action": action})
    assert parsed is None or parsed.action.value == action


def test_a_failed_action_is_logged_with_its_own_d_code(caplog):
    caplog.set_level(logging.ERROR)
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(AgentStopError("agent: pid 5 did not exit"))
    log_failure(AgentCommand("c3", AgentAction.STOP), future)
    other: concurrent.futures.Future = concurrent.futures.Future()
    other.set_exception(OSError("boom"))
    log_failure(AgentCommand("c4", AgentAction.START), other)
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(None)
    log_failure(AgentCommand("c5", AgentAction.RESET), done)
    assert [(r.getMessage(), r.code) for r in caplog.records] == [
        ("agent command c3 (stop) failed: D3002 agent: pid 5 did not exit", "D3002"),
        ("agent command c4 (start) failed: boom", "D3001")]
