"""Is the daemon still doing its job after a reload applied new daemon settings? One verification
window of `remote_config.verify_timeout`, judged by the rule in docs/contract.md ("Daemon settings"):

- no service stopped or was restarted: the Agent supervisor, the Manager link and the update service
  are the same instances at every look (the engine replaces a service whose thread died, and
  settings can never turn one on or off: agent.enabled and manager.* are not settable);
- the Agent process watched (the one up before the push, else the first one up after the reload;
  after a rollback, the first one up after the restoring reload) stays up:
  a failed health check (`unhealthy`) always stops the process, so too-tight thresholds show here;
  and when the Agent was up before the push, one is up at the end;
- the Manager link, when it was registered before the push, is registered at the end;
- collection runs: a report is built after the reload when one is due within the window
  (`daemon.report_interval` × (1 + `manager.jitter`) + REPORT_SLACK ≤ verify_timeout).

A failure ends the window at once; success needs the whole window. The daemon cannot tell a crash of
the Agent's own from a restart the new settings caused; either fails the settings, on the safe side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon_app.agent.snapshot import AgentState, LastExit

if TYPE_CHECKING:
    from daemon_app.host import AgentControl, Host, LinkHealth, Peer, UpdateJobs

POLL = 0.1
REPORT_SLACK = 1.0  # seconds beyond the due time for a report to be built on a busy host


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    why: str  # what went wrong ("" when healthy): "made the Agent exit …" for an Agent config, a
    # clause for daemon settings ("the Agent (pid 7) went down (exit with code 0) within 60s")


@dataclass(frozen=True)
class Expect:
    """What held before the push, and so must hold after it."""

    agent_up: bool
    registered: bool
    agent_pid: int = 0  # the Agent process that must stay up; 0: the first one up in the window


def ended(last_exit: LastExit | None) -> str:
    """How an Agent process ended, as a verb phrase: "exit with code 2", "end on signal 9"."""
    if last_exit is None:
        return "exit"
    if last_exit.signal:
        return f"end on signal {last_exit.signal}"
    return f"exit with code {last_exit.code}" if last_exit.code is not None else "exit"


class DaemonWatch:
    """Takes the expectations before a settings push and verifies the daemon after its reload."""

    def __init__(self, host: Host, *, agent: Peer[AgentControl], link: Peer[LinkHealth],
                 updates: Peer[UpdateJobs]) -> None:
        self.host = host
        self._agent = agent
        self._link = link
        self._peers: dict[str, Peer[Any]] = {"Agent supervisor": agent, "Manager link": link,
                                             "update service": updates}

    def expectations(self) -> Expect:
        sup, link = self._agent(), self._link()
        st = sup.snapshot() if sup is not None else None
        up = st is not None and st.state.live
        return Expect(agent_up=up, registered=link is not None and link.snapshot().registered,
                      agent_pid=st.pid if st is not None and up else 0)

    def verify(self, expect: Expect) -> Verdict:
        host = self.host
        cfg = host.cfg
        timeout = cfg.remote_config.verify_timeout
        interval = cfg.daemon.report_interval
        want_report = interval * (1 + cfg.manager.jitter) + REPORT_SLACK <= timeout
        reports = host.reports_built
        instances = {name: get() for name, get in self._peers.items()}
        sup = self._agent()
        watched = expect.agent_pid
        deadline = time.monotonic() + timeout
        while True:
            lost = [name for name, get in self._peers.items() if get() is not instances[name]]
            if lost:
                return Verdict(False, f"the daemon's {' and '.join(lost)} stopped or restarted within "
                                      f"{timeout:g}s")
            if sup is not None:
                st = sup.snapshot()
                if watched and (st.pid != watched or not st.state.live):
                    if st.pid == watched and st.state == AgentState.STOPPING:
                        return Verdict(False, f"the daemon stopped the Agent (pid {watched}) after a failed "
                                              f"health check within {timeout:g}s")
                    # Usually a health check too, its stop seen only once over: the log's `unhealthy`
                    # event says; a crash of the Agent's own fails the settings as well (module doc).
                    return Verdict(False, f"the Agent (pid {watched}) went down ({ended(st.last_exit)}) "
                                          f"within {timeout:g}s")
                if not watched and st.state.live:
                    watched = st.pid
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, POLL))
        problems = []
        if expect.agent_up and not watched:
            state = sup.snapshot().state if sup is not None else "unsupervised"
            problems.append(f"no Agent was up within {timeout:g}s (state {state})")
        link = self._link()
        if expect.registered and (link is None or not link.snapshot().registered):
            problems.append(f"the Manager link was not registered after {timeout:g}s "
                            f"(state {link.snapshot().state if link else 'off'})")
        if want_report and host.reports_built <= reports:
            problems.append(f"no report was built within {timeout:g}s (daemon.report_interval {interval:g}s)")
        return Verdict(not problems, "; ".join(problems))
