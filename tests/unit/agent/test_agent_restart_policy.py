"""The restart policy (seed §3.3.1) on a fake clock: backoff, give up, stable runs, resets."""

from __future__ import annotations

import pytest

from daemon_app import config
from daemon_app.agent.restart_policy import RestartPolicy, RestartRules, Verdict


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


RULES = RestartRules(max_retries=10, backoff_base=10.0, backoff_max=60.0, stable_after=300.0)


def crash_after(policy: RestartPolicy, clock: FakeClock, ran_for: float) -> Verdict:
    """A process starts now, runs `ran_for` seconds, and dies; the supervisor restarts it if told to."""
    started = clock.now
    clock.advance(ran_for)
    verdict = policy.after_exit(started)
    if not verdict.give_up:
        clock.advance(verdict.delay)
        policy.restarting()
    return verdict


def test_the_first_failure_restarts_at_once_and_counts_one_restart():
    clock = FakeClock()
    policy = RestartPolicy(RULES, clock)
    verdict = crash_after(policy, clock, 1.0)
    assert verdict == Verdict(give_up=False, attempt=1, delay=0.0)
    assert (policy.count, policy.total) == (1, 1)


def test_backoff_grows_as_the_seed_says_and_stays_at_the_cap():
    clock = FakeClock()
    policy = RestartPolicy(RULES, clock)
    verdicts = [crash_after(policy, clock, 1.0) for _ in range(8)]
    assert [v.delay for v in verdicts] == [0.0, 10.0, 10.0, 30.0, 30.0, 60.0, 60.0, 60.0]
    assert [v.attempt for v in verdicts] == list(range(1, 9))


def test_three_times_base_is_capped_by_backoff_max():
    clock = FakeClock()
    policy = RestartPolicy(RestartRules(10, 1.0, 2.0, 300.0), clock)
    assert [crash_after(policy, clock, 0.5).delay for _ in range(6)] == [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_gives_up_after_max_retries_restarts_and_keeps_saying_so():
    clock = FakeClock()
    policy = RestartPolicy(RestartRules(3, 1.0, 5.0, 300.0), clock)
    assert not any(crash_after(policy, clock, 0.1).give_up for _ in range(3))
    fatal = crash_after(policy, clock, 0.1)
    assert fatal == Verdict(give_up=True, attempt=3, delay=0.0)
    assert policy.count == 3 and policy.total == 3  # giving up is not a restart
    assert policy.after_exit(clock.now).give_up  # FATAL stays FATAL until someone resets


def test_zero_retries_gives_up_at_the_first_failure():
    clock = FakeClock()
    policy = RestartPolicy(RestartRules(0, 1.0, 5.0, 300.0), clock)
    assert crash_after(policy, clock, 0.1).give_up


def test_an_exit_after_a_stable_run_starts_the_count_over():
    clock = FakeClock()
    policy = RestartPolicy(RULES, clock)
    for _ in range(5):
        crash_after(policy, clock, 1.0)
    assert policy.count == 5
    verdict = crash_after(policy, clock, 300.0)
    assert verdict == Verdict(give_up=False, attempt=1, delay=0.0)
    assert (policy.count, policy.total) == (1, 6)


def test_a_crash_just_before_the_stable_window_keeps_counting():
    clock = FakeClock()
    policy = RestartPolicy(RULES, clock)
    for _ in range(5):
        crash_after(policy, clock, 1.0)
    verdict = crash_after(policy, clock, 299.999)
    assert verdict == Verdict(give_up=False, attempt=6, delay=60.0)


def test_a_stable_running_agent_has_its_count_reset_at_the_deadline_not_before():
    clock = FakeClock()
    policy = RestartPolicy(RULES, clock)
    crash_after(policy, clock, 1.0)
    crash_after(policy, clock, 1.0)
    started = clock.now
    deadline = policy.stable_deadline(started)
    assert deadline == started + 300.0
    clock.advance(299.5)
    assert not policy.settle(started) and policy.count == 2
    clock.now = deadline  # a timer due at the deadline always finds the run stable
    assert policy.settle(started) and policy.count == 0
    assert policy.stable_deadline(started) is None  # nothing left to reset
    assert not policy.settle(started)


def test_an_agent_that_could_not_be_executed_never_ran_stable():
    # With stable_after 0 every run is stable, but a binary that cannot be executed did not run:
    # it must still reach FATAL instead of retrying for ever.
    clock = FakeClock()
    policy = RestartPolicy(RestartRules(3, 0.0, 0.0, 0.0), clock)
    verdicts = []
    for _ in range(4):
        verdict = policy.after_exit(None)
        verdicts.append(verdict)
        if not verdict.give_up:
            policy.restarting()
    assert [v.give_up for v in verdicts] == [False, False, False, True]
    # A process that did run is stable at once with stable_after 0.
    assert policy.after_exit(clock.now).attempt == 1


def test_a_manual_reset_starts_the_count_over_but_not_the_total():
    clock = FakeClock()
    policy = RestartPolicy(RestartRules(2, 1.0, 5.0, 300.0), clock)
    crash_after(policy, clock, 0.1)
    crash_after(policy, clock, 0.1)
    assert crash_after(policy, clock, 0.1).give_up
    policy.reset()  # an operator's reset, or a start of a FATAL or stopped Agent
    assert policy.count == 0 and policy.total == 2
    assert crash_after(policy, clock, 0.1) == Verdict(give_up=False, attempt=1, delay=0.0)
    assert crash_after(policy, clock, 0.1) == Verdict(give_up=False, attempt=2, delay=1.0)
    assert crash_after(policy, clock, 0.1).give_up


def test_new_rules_apply_to_the_next_decision():
    clock = FakeClock()
    policy = RestartPolicy(RULES, clock)
    crash_after(policy, clock, 1.0)
    policy.rules = RestartRules(10, 2.0, 4.0, 300.0)  # a reload
    assert crash_after(policy, clock, 1.0).delay == 2.0
    policy.rules = RestartRules(1, 2.0, 4.0, 300.0)
    assert crash_after(policy, clock, 1.0).give_up


def test_there_is_no_jitter_the_same_history_gives_the_same_delays():
    runs = []
    for _ in range(2):
        clock = FakeClock()
        policy = RestartPolicy(RULES, clock)
        runs.append([crash_after(policy, clock, 1.0).delay for _ in range(7)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("raw", [{}, {"agent": {"restart": {"max_retries": 3, "backoff_base": "2s",
                                                            "backoff_max": "1m", "stable_after": "90s"}}}])
def test_rules_come_from_the_validated_config(raw):
    r = config.validate(raw).agent.restart
    rules = RestartRules.of(r)
    assert rules == RestartRules(r.max_retries, r.backoff_base, r.backoff_max, r.stable_after)
    assert isinstance(rules.stable_after, float)
