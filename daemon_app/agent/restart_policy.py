"""When a failed Agent is started again, and when the supervisor gives up (seed §3.3.1).

Pure: no threads, no I/O, time from an injected clock (monotonic seconds), so every rule is tested
with a fake clock. The supervisor asks `after_exit` what to do, calls `restarting` when it starts
the replacement, and `settle` at `stable_deadline` while the Agent is still up.

The seed's schedule has no jitter: one Agent per host, so there is no herd to spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """Seed §3.3.1: restart n (0-based) waits 0, base, base, 3·base, 3·base, then max; never above max."""
    if attempt <= 0:
        return 0.0
    if attempt <= 2:
        return min(base, maximum)
    if attempt <= 4:
        return min(3 * base, maximum)
    return maximum


@dataclass(frozen=True)
class RestartRules:
    """`agent.restart` of the configuration."""

    max_retries: int
    backoff_base: float
    backoff_max: float
    stable_after: float

    @classmethod
    def of(cls, restart: Any) -> RestartRules:
        """From the config section `agent.restart`."""
        return cls(int(restart.max_retries), float(restart.backoff_base), float(restart.backoff_max),
                   float(restart.stable_after))


@dataclass(frozen=True)
class Verdict:
    """What follows an exit: give up (FATAL), or restart number `attempt` after `delay` seconds."""

    give_up: bool
    attempt: int  # restarts since the last stable run: the one about to happen, or those made when giving up
    delay: float


class RestartPolicy:
    """Counts the restarts since the Agent last ran stable, and turns the count into a verdict."""

    def __init__(self, rules: RestartRules, clock: Clock = time.monotonic) -> None:
        self.rules = rules  # replaced on reload: new rules apply to the next decision
        self._clock = clock
        self.count = 0  # restarts since the last stable run (agent_status' restart_count)
        self.total = 0  # restarts since the daemon started

    def after_exit(self, started_at: float | None) -> Verdict:
        """The Agent process started at `started_at` (monotonic; None: it could not be executed)
        ended without being asked to. A run of `stable_after` or longer starts the count over."""
        if started_at is not None and self._ran_stable(started_at):
            self.count = 0
        if self.count >= self.rules.max_retries:
            return Verdict(give_up=True, attempt=self.count, delay=0.0)
        delay = backoff_delay(self.count, self.rules.backoff_base, self.rules.backoff_max)
        return Verdict(give_up=False, attempt=self.count + 1, delay=delay)

    def restarting(self) -> None:
        """The restart a verdict announced begins now."""
        self.count += 1
        self.total += 1

    def stable_deadline(self, started_at: float) -> float | None:
        """When the process started at `started_at` has run long enough for `settle` to reset the
        count; None when there is nothing to reset."""
        if not self.count:
            return None
        return started_at + self.rules.stable_after

    def settle(self, started_at: float) -> bool:
        """The process started at `started_at` is still up: True when it has now run stable and the
        count was reset by this call."""
        if not self.count or not self._ran_stable(started_at):
            return False
        self.count = 0
        return True

    def reset(self) -> None:
        """An operator (or the Manager) started a stopped or FATAL Agent, or reset the count."""
        self.count = 0

    def _ran_stable(self, started_at: float) -> bool:
        # The same sum as stable_deadline: a timer due at that deadline always finds the run stable.
        return self._clock() >= started_at + self.rules.stable_after
