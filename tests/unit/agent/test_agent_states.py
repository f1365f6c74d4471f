"""The Agent's states: change_state() checks the transition and emits the state's event once."""

from __future__ import annotations

import threading

import pytest

from daemon_app.agent.snapshot import AgentState
from daemon_app.agent.states import EVENTS, TRANSITIONS, AgentStates, StateError

S = AgentState


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, kind: str, **fields) -> None:
        self.seen.append((kind, fields))


def states_at(state: AgentState) -> tuple[AgentStates, Events]:
    events = Events()
    states = AgentStates(threading.Condition(), events)
    states.state = state  # the test places the machine; the supervisor only ever uses change_state
    return states, events


ALLOWED = [(old, new) for old, targets in TRANSITIONS.items() for new in sorted(targets)]


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_every_allowed_transition_sets_the_state_and_emits_its_event_once(old, new):
    states, events = states_at(old)
    states.change_state(new, reason="why")
    assert states.state is new
    expected = [] if EVENTS[new] is None else [(EVENTS[new], {"reason": "why"})]
    assert events.seen == expected


@pytest.mark.parametrize(("old", "new"), [(o, n) for o in S for n in S if n not in TRANSITIONS[o]])
def test_a_transition_the_supervisor_never_makes_is_refused_and_changes_nothing(old, new):
    states, events = states_at(old)
    with pytest.raises(StateError, match=f"no transition from {old} to {new}"):
        states.change_state(new)
    assert states.state is old and events.seen == []


def test_the_supervisors_paths_are_in_the_table():
    start, crash, stop = [S.STOPPED, S.STARTING, S.RUNNING], [S.EXITED, S.BACKOFF, S.STARTING], \
        [S.RUNNING, S.STOPPING, S.STOPPED]
    for path in (start, crash, stop, [S.STOPPED, S.RUNNING],  # adopted
                 [S.STOPPED, S.EXITED, S.EXITED, S.FATAL, S.STARTING],  # a binary that cannot be run
                 [S.RUNNING, S.STOPPING, S.EXITED, S.STARTING]):  # unhealthy or a requested restart
        for old, new in zip(path, path[1:], strict=False):
            assert new in TRANSITIONS[old], (old, new)
    assert set(TRANSITIONS) == set(S) == set(EVENTS)


def test_an_adopted_agent_enters_running_with_the_adopted_event_instead():
    states, events = states_at(S.STOPPED)
    states.change_state(S.RUNNING, event="adopted", start_time="t")
    assert events.seen == [("adopted", {"start_time": "t"})]


def test_stopping_has_no_event_of_its_own():
    states, events = states_at(S.RUNNING)
    states.change_state(S.STOPPING)
    assert states.state is S.STOPPING and events.seen == []


def test_waiters_see_the_new_state_before_the_event_goes_out():
    cond = threading.Condition()
    seen_at_emit: list[AgentState] = []
    states = AgentStates(cond, lambda kind, **_: seen_at_emit.append(states.state))
    woke = threading.Event()

    def waiter() -> None:
        with cond:
            if cond.wait_for(lambda: states.state is S.STARTING, 10):
                woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    states.change_state(S.STARTING)
    thread.join(10)
    assert woke.is_set() and seen_at_emit == [S.STARTING]


def test_assert_in_names_the_state_and_what_was_expected():
    states, _ = states_at(S.BACKOFF)
    states.assert_in(S.BACKOFF, S.FATAL)
    with pytest.raises(StateError, match="in state BACKOFF, expected one of STARTING, RUNNING"):
        states.assert_in(S.STARTING, S.RUNNING)


def test_the_transitions_operators_read_in_agent_protocol_md_are_the_ones_checked():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[3] / "docs" / "agent-protocol.md").read_text()
    listed = " ".join(text.split("only along these transitions:", 1)[1].split("\n\n", 1)[0].split())
    documented: dict[AgentState, set[AgentState]] = {}
    for clause in listed.rstrip(".").split(";"):
        sources, targets = clause.split("->")
        names = {S(t) for t in re.findall(r"\b[A-Z]{5,}\b", targets)}
        for source in re.findall(r"\b[A-Z]{5,}\b", sources):
            documented.setdefault(S(source), set()).update(names)
    assert documented == {old: set(new) for old, new in TRANSITIONS.items()}
