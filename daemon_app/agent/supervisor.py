"""Agent supervisor: the loop that starts, adopts, watches, restarts and stops the Agent.

One thread (`agent-supervisor`) owns every state change. It sleeps in a selector on the Agent's
pidfd (so an exit is seen the moment it happens, for an adopted Agent too) and on a wake-up pipe,
with timers for health ticks, backoff, the SIGKILL deadline and log rotation. Other threads (the
engine, Manager commands, the update helper, the heartbeat receiver) post work to its `Mailbox`
and, where the caller needs the outcome, wait on a Future.

The parts it puts together, each in its own module: the states and their one `change_state()`
(states.py), when to restart and when to give up (restart_policy.py), the Agent process (process.py),
its health (health.py), its stdout/stderr files (output.py), its heartbeats (heartbeat_watch.py
over the socket of heartbeat.py) and the Manager's "agent" commands (commands.py). Events go to
the `on_agent_event` hook in the order they happen; see docs/agent-protocol.md.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from daemon_app.agent import health as health_mod
from daemon_app.agent.commands import AgentAction, log_failure, parse_agent_command
from daemon_app.agent.heartbeat import Heartbeat, HeartbeatServer
from daemon_app.agent.heartbeat_watch import HeartbeatWatch
from daemon_app.agent.output import ROTATE_CHECK_EVERY, AgentOutput
from daemon_app.agent.process import (
    AgentProcess,
    ExitInfo,
    clean_env,
    describe_pid,
    read_pid_file,
    remove_pid_file,
    write_pid_file,
)
from daemon_app.agent.restart_policy import RestartPolicy, RestartRules
from daemon_app.agent.restart_policy import backoff_delay as backoff_delay  # public: seed §3.3.1
from daemon_app.agent.snapshot import AgentSnapshot, AgentState, LastExit
from daemon_app.agent.states import (
    BACKOFF,
    EXITED,
    FATAL,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    AgentStates,
)
from daemon_app.errors import AgentHealthError, AgentStartError, AgentStopError
from daemon_app.mailbox import Mailbox
from daemon_app.metrics import rfc3339
from daemon_app.wakeup import WakePipe

if TYPE_CHECKING:
    from daemon_app.config import Config
    from daemon_app.host import Host

log = logging.getLogger(__name__)

# Why the supervisor itself ends an Agent process (the "intent" of a STOPPING).
_STOP, _REQUESTED = "stop", "requested"
_KILL_GRACE = 5.0  # after SIGKILL, how long stop_agent() waits before it reports D3002
# An Agent silent for heartbeat_timeout is hung: it gets this long (at most agent.stop_timeout) to
# act on SIGTERM before SIGKILL, so it is replaced within heartbeat_timeout plus a few seconds.
_HUNG_GRACE = 2.0
_CALL_TIMEOUT = 30.0


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True)
class _ExitRecord:
    """How the previous Agent process ended, as agent_status() reports it."""

    code: int | None
    signal: int | None
    at: str
    stderr_tail: tuple[str, ...]
    known: bool
    error: str = ""  # why it could not even be executed

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "signal": self.signal, "at": self.at,
                               "stderr_tail": list(self.stderr_tail), "known": self.known}
        if self.error:
            out["error"] = self.error
        return out

    def summary(self) -> LastExit:
        return LastExit(code=self.code, signal=self.signal, at=self.at)


class AgentSupervisor:
    """Engine service supervising one Agent process. Thread-safe public methods; see module doc."""

    name = "agent"

    def __init__(self, cfg: Config, host: Host) -> None:
        self.cfg = cfg
        self.host = host
        self.pid = 0
        work = cfg.daemon.work_dir
        self.pid_file = os.path.join(work, "agent.pid")
        self._output = AgentOutput(work)
        self.stdout_log = self._output.stdout_log
        self.stderr_log = self._output.stderr_log
        self._proc: AgentProcess | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # notified on state changes and heartbeats
        self._emit_lock = threading.RLock()  # one event at a time, across threads, in order
        self._states = AgentStates(self._cond, self.emit)
        self._policy = RestartPolicy(RestartRules.of(cfg.agent.restart))
        self._mailbox = Mailbox(lambda: AgentStartError("agent: supervision stopped"), wake=self._wake)
        self._sel: selectors.DefaultSelector | None = None
        self._waker: WakePipe | None = None
        self._thread: threading.Thread | None = None
        self._quit = False
        self._timers: dict[str, float] = {}  # name -> monotonic deadline, run by _timer_actions[name]
        self._timer_actions: dict[str, Callable[[], None]] = {
            "promote": self._promote_due, "health": self._health_due, "kill": self._kill_due,
            "stable": self._stable_due, "backoff": self._backoff_due, "logs": self._logs_due,
        }
        self._intent: str | None = None
        self._kill_grace = 0.0
        self._beats = HeartbeatWatch(self._cond, self._on_heartbeat)
        self._health: health_mod.HealthChecker | None = None
        self._running_since: float | None = None
        # What agent_status() reports.
        self._last_restart: float | None = None
        self._last_exit: _ExitRecord | None = None
        self._health_checks = 0
        self._sample = health_mod.Sample(0.0, 0, 0)
        self._measured = False
        host.on_command("agent", self.handle_command)

    @property
    def state(self) -> AgentState:
        return self._states.state

    @property
    def _server(self) -> HeartbeatServer | None:  # the socket's counters, for tests and bench/
        return self._beats.server

    # --- Service -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen for heartbeats, then adopt the running Agent or start one.

        D3001 AgentStartError when the heartbeat socket cannot be created. An Agent that cannot be
        started is logged (D3001) and left to the restart policy; the daemon runs on.
        """
        self._beats.listen(self.cfg.agent)
        self._sel = selectors.DefaultSelector()
        self._waker = WakePipe()
        self._sel.register(self._waker, selectors.EVENT_READ, "wake")
        self._quit = False
        self._thread = threading.Thread(target=self._run, name="agent-supervisor", daemon=True)
        self._thread.start()
        try:
            self._call(self._adopt_or_spawn)
        except AgentStartError:
            pass  # logged and handed to the restart policy (BACKOFF/FATAL); the daemon runs on

    def stop(self, deadline: float) -> None:
        """Stop watching. The Agent keeps running; the next daemon adopts it from the pid file."""
        self._quit = True
        self._wake()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
            self._thread = None
        self._beats.close()
        if self._proc is not None:
            self._proc.close()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if self.pid:
            log.info("agent supervision stopped; agent pid %s left running", self.pid)
        else:
            log.info("agent supervision stopped; no agent was running")

    def reload(self, cfg: Any) -> None:
        """New timings and thresholds apply at once; binary, args and env at the next start."""
        self._call(functools.partial(self._reload, cfg))

    def status(self) -> dict[str, Any]:
        out = self.agent_status()
        with self._lock:
            out.update({
                "adopted": bool(self._proc and self._proc.adopted),
                "restarts_total": self._policy.total,
                "heartbeats_foreign": self._beats.foreign,
                "health_checks": self._health_checks,
                "processes": self._sample.processes,
                "socket": self.cfg.agent.socket_path,
            })
        out.update(self._beats.socket_status())
        return out

    def agent_status(self) -> dict[str, Any]:
        """Seed §4.2 AgentStatus plus what an operator needs to see why the Agent is where it is."""
        with self._lock:
            proc = self._proc
            return {
                "pid": self.pid,
                "state": self.state.value,
                "version": self._beats.version,
                "start_time": rfc3339(proc.started_at) if proc else None,
                # None (unknown) until a health check of this process measured them: 0 would lie.
                "cpu_percent": self._sample.cpu_percent if proc and self._measured else None,
                "memory_bytes": self._sample.memory_bytes if proc and self._measured else None,
                "restart_count": self._policy.count,
                "last_restart": rfc3339(self._last_restart) if self._last_restart else None,
                "last_exit": self._last_exit.as_json() if self._last_exit else None,
                "last_heartbeat": rfc3339(self._beats.last_wall) if self._beats.last_wall else None,
                "heartbeats_received": self._beats.received,
                "heartbeats_invalid": self._beats.invalid(),
            }

    def snapshot(self) -> AgentSnapshot:
        """The Agent as typed fields, for decisions other parts make on it (not a parsed status)."""
        with self._lock:
            return AgentSnapshot(pid=self.pid, state=self.state, version=self._beats.version,
                                 heartbeats_received=self._beats.received, restart_count=self._policy.count,
                                 last_exit=self._last_exit.summary() if self._last_exit else None)

    # --- operations for operators, the Manager and the update helper ---------------------------

    def stop_agent(self, timeout: float | None = None) -> None:
        """Stop the Agent and keep it STOPPED (no auto-restart) until start_agent() or reset().

        SIGTERM to its process group, up to `timeout` (default `agent.stop_timeout`) for it to
        exit, then SIGKILL. Returns once it is gone; D3002 AgentStopError if even SIGKILL did not
        end it within a few seconds.
        """
        grace = self.cfg.agent.stop_timeout if timeout is None else timeout
        self._call(functools.partial(self._begin_stop, _STOP, grace))
        if not self._wait_for(lambda: self.state == STOPPED, grace + _KILL_GRACE):
            raise AgentStopError(f"agent: pid {self.pid} did not exit within {grace + _KILL_GRACE:.0f}s "
                                 "of SIGTERM and SIGKILL")

    def start_agent(self) -> None:
        """Start the Agent now: from STOPPED, FATAL (count reset), EXITED or BACKOFF (wait skipped).

        No-op when it is already STARTING or RUNNING. D3001 AgentStartError if it cannot be
        executed (the restart policy then retries it).
        """
        self._call(self._start_now)

    def restart_agent(self) -> None:
        """Stop the Agent gracefully and start it again at once (not counted as a failure); returns
        once the new process is STARTING or RUNNING."""
        old = self.pid
        grace = self.cfg.agent.stop_timeout
        self._call(functools.partial(self._begin_stop, _REQUESTED, grace))
        if not self._wait_for(lambda: self.state.live and self.pid != old, grace + _KILL_GRACE):
            raise AgentStopError(f"agent: restart of pid {old} did not complete (state {self.state})")

    def signal_agent(self, signum: int) -> bool:
        """Send `signum` to the Agent's process group (SIGHUP: re-read its config); False when no
        Agent process runs."""
        return bool(self._call(functools.partial(self._signal, signum)))

    def _signal(self, signum: int) -> bool:
        if self._proc is None or not self.state.live:
            return False
        self._proc.signal_group(signum)
        return True

    def reset(self) -> None:
        """Zero the restart count; a FATAL Agent is started again (D3001 if it cannot be executed)."""
        self._call(self._reset)

    def wait_for_heartbeat(self, version: str | None, timeout: float) -> bool:
        """True when a heartbeat from the current Agent process reporting `version` (any if None)
        arrives after this call, within `timeout` seconds; False otherwise."""
        return self._beats.wait(version, timeout)

    def current_version(self) -> str:
        """The version the Agent last reported in a heartbeat ("" before the first one)."""
        with self._lock:
            return self._beats.version

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Post one event for the `on_agent_event` plugins (also used by the update helper for
        "updated" / "rolled_back"); they get it on their own thread. Returns the event."""
        with self._emit_lock:
            state = self.state.value
            event = {"type": event_type, "state": state, "pid": self.pid, "timestamp": rfc3339(), **fields}
            log.info("agent event %s (state %s, pid %s)", event_type, state, self.pid or "-",
                     extra={"agent_event": event})
            self.host.plugins.post_event(event)
            return event

    def handle_command(self, command: dict[str, Any]) -> concurrent.futures.Future[Any] | None:
        """Manager command {"type": "agent", "action": start|stop|restart|reset, "id"}; returns at once
        with the future of the action on the supervisor's thread (the link answers the Manager when it
        is done: `start` of a binary that is missing fails with D3001), None for an unknown action."""
        parsed = parse_agent_command(command)
        if parsed is None:
            return None
        grace = self.cfg.agent.stop_timeout
        actions: dict[AgentAction, Callable[[], Any]] = {
            AgentAction.START: self._start_now,
            AgentAction.STOP: functools.partial(self._begin_stop, _STOP, grace),
            AgentAction.RESTART: functools.partial(self._begin_stop, _REQUESTED, grace),
            AgentAction.RESET: self._reset,
        }
        log.info("agent command %s: %s", parsed.id, parsed.action)
        future = self._submit(actions[parsed.action])
        future.add_done_callback(functools.partial(log_failure, parsed))
        return future

    # --- cross-thread plumbing -----------------------------------------------------------------

    def _submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        if self._thread is None:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_exception(AgentStartError("agent: supervision is not running"))
            return future
        return self._mailbox.submit(fn)

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._mailbox.on_owner:  # e.g. a plugin reacting to an event on this thread
            return fn()
        return self._submit(fn).result(_CALL_TIMEOUT)

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker.wake()

    def _wait_for(self, cond: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(cond, timeout)

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sel is not None
        self._mailbox.bind()
        try:
            while not self._quit:
                now = time.monotonic()
                due = min(self._timers.values(), default=None)
                timeout = None if due is None else max(0.0, due - now)
                for key, _ in self._sel.select(timeout):
                    if key.data == "wake":
                        key.fileobj.drain()
                    elif self._proc is not None and key.fd == self._proc.pidfd:
                        self._guard(self._on_exit)
                while not self._quit:
                    letter = self._mailbox.take(0)
                    if letter is None:
                        break
                    self._guard(letter)
                now = time.monotonic()
                for name, when in sorted(self._timers.items(), key=lambda kv: kv[1]):
                    # A timer an earlier one cancelled or moved is not due any more.
                    if when <= now and self._timers.get(name) == when:
                        del self._timers[name]
                        self._guard(self._timer_actions[name])
        finally:
            self._mailbox.close()  # callers still waiting get D3001 now, not at their timeout

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("agent supervisor step %s failed", getattr(fn, "__name__", fn))

    # --- starting ------------------------------------------------------------------------------

    def _adopt_or_spawn(self) -> None:
        record = read_pid_file(self.pid_file)
        if record is not None:
            pid, ticks = record
            proc = AgentProcess.adopt(pid, ticks)
            if proc is not None:
                self._attach(proc)
                self._enter_running("adopted", start_time=rfc3339(proc.started_at))
                return
            log.info("agent pid file names pid %d, which is not the Agent any more (%s); starting a "
                     "new Agent and leaving that pid alone", pid, describe_pid(pid))
            remove_pid_file(self.pid_file)
        self._spawn_or_retry()

    def _spawn(self) -> None:
        a = self.cfg.agent
        env = clean_env(a.socket_path, a.config_file)
        proc = AgentProcess.spawn(a.binary_path, list(a.args), a.work_dir, env, self.stdout_log,
                                  self.stderr_log)
        self._attach(proc)
        self._timers["promote"] = time.monotonic() + a.start_seconds
        # Before any plugin hears of it: if the daemon dies now, the next one must still find this Agent.
        try:
            write_pid_file(self.pid_file, proc.pid, proc.start_ticks, a.binary_path)
        except OSError as exc:
            log.error("D3001 agent: cannot write pid file %s (the next daemon cannot adopt pid %d): %s",
                      self.pid_file, proc.pid, exc, extra={"code": "D3001"})
        self._timers.setdefault("logs", time.monotonic() + ROTATE_CHECK_EVERY)
        self._states.change_state(STARTING, start_time=rfc3339(proc.started_at), binary=a.binary_path)

    def _spawn_or_retry(self) -> None:
        """Spawn; if the binary cannot be executed, the restart policy takes over and D3001 is raised."""
        try:
            self._spawn()
        except AgentStartError as exc:
            log.error("%s", exc, extra={"code": exc.code})
            with self._lock:
                self._last_exit = _ExitRecord(None, None, rfc3339(), (), known=False, error=str(exc))
            self._states.change_state(EXITED, error=str(exc), exit_code=None, signal=None, stderr_tail=[])
            self._after_exit("start_failed", started_at=None)
            raise

    def _attach(self, proc: AgentProcess) -> None:
        assert self._sel is not None
        with self._lock:
            self._proc = proc
            self.pid = proc.pid
            self._beats.follow(proc.pid)
            self._sample = health_mod.Sample(0.0, 0, 1)
            self._measured = False
        self._sel.register(proc.pidfd, selectors.EVENT_READ, "pidfd")

    def _detach(self) -> AgentProcess | None:
        """Forget the process: unregister its pidfd BEFORE closing it (a reused fd number must not
        be mistaken for a registered one)."""
        proc = self._proc
        if proc is None:
            return None
        if self._sel is not None:
            self._sel.unregister(proc.pidfd)
        proc.close()
        with self._lock:
            self._proc = None
            self.pid = 0
            self._beats.follow(0)
            self._health = None
            self._running_since = None
        for name in ("promote", "health", "kill", "stable", "logs"):
            self._timers.pop(name, None)
        return proc

    def _promote_due(self) -> None:
        if self.state == STARTING:
            self._enter_running("running", via="start_seconds")

    def _enter_running(self, event: str, **fields: Any) -> None:
        """RUNNING: at the first heartbeat or after agent.start_seconds up; an adopted Agent at once."""
        assert self._proc is not None
        self._states.assert_in(STARTING, STOPPED)  # before the health timers start, not after
        hc = self.cfg.agent.health_check
        try:
            checker = health_mod.HealthChecker.for_config(self._proc.pid, hc)
        except psutil.NoSuchProcess:
            return  # it already exited; the pidfd event follows
        now = time.monotonic()
        self._timers.pop("promote", None)
        with self._lock:
            self._health = checker
            self._running_since = now
        self._timers["health"] = now + hc.interval
        self._timers["logs"] = now + ROTATE_CHECK_EVERY
        stable_at = self._policy.stable_deadline(self._proc.started_mono)
        if stable_at is not None:
            self._timers["stable"] = max(now, stable_at)
        self._states.change_state(RUNNING, event=event, **fields)

    def _start_now(self) -> None:
        if self._proc is not None:
            if self.state == STOPPING:
                self._intent = _REQUESTED  # it is on its way out; start it again once it is gone
            return
        self._timers.pop("backoff", None)
        if self.state in (STOPPED, FATAL):
            with self._lock:
                self._policy.reset()
        self._spawn_or_retry()

    def _reset(self) -> None:
        with self._lock:
            self._policy.reset()
        log.info("agent restart count reset")
        if self.state == FATAL:
            self._spawn_or_retry()

    def _stable_due(self) -> None:
        if self.state != RUNNING or self._proc is None:
            return
        with self._lock:
            count = self._policy.count
            settled = self._policy.settle(self._proc.started_mono)
        if settled:
            log.info("agent stable for %.0fs; restart count %d reset", self._policy.rules.stable_after, count)

    # --- watching ------------------------------------------------------------------------------

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        """Called on the heartbeat thread for every valid line."""
        with self._cond:
            if not self._beats.record(hb):
                return
            promote = self.state == STARTING
            pid = self.pid
        if promote and not self._mailbox.closed:  # a dead loop must not collect letters for ever
            self._mailbox.post(functools.partial(self._promote_on_heartbeat, pid))

    def _promote_on_heartbeat(self, pid: int) -> None:
        if self.state == STARTING and self.pid == pid:
            self._enter_running("running", via="heartbeat")

    def _health_due(self) -> None:
        if self.state != RUNNING or self._health is None:
            return
        assert self._running_since is not None and self._proc is not None
        hc = self.cfg.agent.health_check
        last = self._beats.last_mono if self._beats.last_mono is not None else self._running_since
        last = max(last, self._running_since)
        # Next tick first (a check that raises must not end health checking), and no later than the
        # moment the heartbeat deadline passes: a silent Agent is caught at heartbeat_timeout, not
        # up to one interval after it.
        now = time.monotonic()
        self._timers["health"] = min(now + hc.interval, max(now, last + hc.heartbeat_timeout) + 0.05)
        reason = self._health.check(last)
        with self._lock:
            self._health_checks += 1
            self._sample = self._health.sampler.last
            self._measured = True
        if reason is None:
            return
        if reason == health_mod.DEAD and _readable(self._proc.pidfd):
            self._on_exit()  # an ordinary exit the loop has not picked up yet: not "unhealthy"
            return
        details = self._health.explain(reason)
        err = AgentHealthError(f"agent pid {self.pid} unhealthy: {reason} ({details}); restarting")
        log.warning("%s", err, extra={"code": err.code})
        self.emit("unhealthy", reason=reason, details=details)
        if reason == health_mod.DEAD:
            self._on_exit(intent=reason)
        elif reason == health_mod.HEARTBEAT_TIMEOUT:
            self._stop_process(reason, min(self.cfg.agent.stop_timeout, _HUNG_GRACE))
        else:
            self._stop_process(reason, self.cfg.agent.stop_timeout)

    def _logs_due(self) -> None:
        a = self.cfg.agent
        self._output.rotate(a.log_max_bytes, a.log_backups)
        if self._proc is not None:
            self._timers["logs"] = time.monotonic() + ROTATE_CHECK_EVERY

    # --- stopping ------------------------------------------------------------------------------

    def _begin_stop(self, intent: str, grace: float) -> None:
        if self._proc is None:
            self._timers.pop("backoff", None)
            if intent == _REQUESTED:
                self._start_now()
            elif self.state != STOPPED:
                self._states.change_state(STOPPED, reason="requested")
            return
        self._stop_process(intent, grace)

    def _stop_process(self, intent: str, grace: float) -> None:
        """SIGTERM the group now, SIGKILL at the deadline; _on_exit finishes the job.

        A stopped process (SIGSTOP, state T) would only see SIGTERM once continued, so SIGCONT
        follows it; one stopped by a tracer (state t) cannot act on either and is killed at once.
        """
        assert self._proc is not None
        if self.state == STOPPING:
            if intent == _STOP:
                self._intent = _STOP  # a stop request wins over a restart in progress
            return
        self._intent = intent
        self._states.change_state(STOPPING)
        self._timers.pop("promote", None)
        self._timers.pop("health", None)
        if self._proc.traced():
            log.warning("agent pid %d is stopped by a tracer; sending SIGKILL", self.pid)
            self._proc.signal_group(signal.SIGKILL)
            return
        self._proc.signal_group(signal.SIGTERM)
        self._proc.signal_group(signal.SIGCONT)
        self._kill_grace = grace
        self._timers["kill"] = time.monotonic() + grace

    def _kill_due(self) -> None:
        if self._proc is not None and self.state == STOPPING:
            log.warning("agent pid %d still running %gs after SIGTERM; sending SIGKILL", self.pid,
                        self._kill_grace)
            self._proc.signal_group(signal.SIGKILL)

    def _on_exit(self, intent: str | None = None) -> None:
        """The Agent process is gone (pidfd readable, or found dead): record, report, decide."""
        proc = self._proc
        if proc is None:
            return
        info = proc.reap()
        intent = self._intent if intent is None else intent
        self._intent = None
        self._detach()
        remove_pid_file(self.pid_file)
        if intent is not None and intent != health_mod.DEAD:
            proc.kill_leftovers()  # we ended it: take its forked workers too
        fields = self._record_exit(info, proc)
        ran_for = time.monotonic() - proc.started_mono
        log_fn = log.info if intent is not None else log.warning
        log_fn("agent pid %d %s after %.1fs", proc.pid, info.describe(), ran_for)
        if intent == _STOP:
            self._states.change_state(STOPPED, reason="requested", **fields)
            return
        self._states.change_state(EXITED, **fields, **({"reason": intent} if intent else {}))
        if intent == _REQUESTED:
            self.emit("restarting", reason=_REQUESTED, delay=0.0, attempt=0)
            self._spawn_or_retry()
            return
        self._after_exit(intent or "exited", started_at=proc.started_mono)

    def _record_exit(self, info: ExitInfo, proc: AgentProcess) -> dict[str, Any]:
        tail = self._output.stderr_tail(proc.stderr_offset)
        with self._lock:
            self._last_exit = _ExitRecord(info.code, info.signal, rfc3339(info.at), tuple(tail), info.known)
        out: dict[str, Any] = {"pid": proc.pid, "exit_code": info.code, "signal": info.signal,
                               "exit_known": info.known, "stderr_tail": tail}
        if info.signal is not None:
            out["signal_name"] = signal.Signals(info.signal).name
        return out

    # --- restart policy ------------------------------------------------------------------------

    def _after_exit(self, reason: str, started_at: float | None) -> None:
        """The Agent ended without being asked to (`started_at`: None when it could not be executed):
        restart it now, after a backoff, or give up (FATAL), as restart_policy decides."""
        with self._lock:
            verdict = self._policy.after_exit(started_at)
        if verdict.give_up:
            err = AgentStartError(f"agent: gave up after {verdict.attempt} restart(s) without "
                                  f"{self._policy.rules.stable_after:g}s of stable running (last: {reason}); "
                                  "FATAL until an operator or the Manager starts or resets it")
            log.error("%s", err, extra={"code": err.code})
            self._states.change_state(FATAL, reason=reason, restart_count=verdict.attempt)
            return
        self.emit("restarting", reason=reason, delay=verdict.delay, attempt=verdict.attempt)
        # A start that failed is retried from the loop even without a delay: retrying inside the
        # failed start would nest one more level per attempt until Python's recursion limit.
        if verdict.delay > 0 or started_at is None:
            self._timers["backoff"] = time.monotonic() + verdict.delay
            self._states.change_state(BACKOFF, reason=reason, delay=verdict.delay, attempt=verdict.attempt)
            return
        self._restart_now()

    def _backoff_due(self) -> None:
        if self.state == BACKOFF:
            self._restart_now()

    def _restart_now(self) -> None:
        with self._lock:
            self._policy.restarting()
            self._last_restart = time.time()
        try:
            self._spawn_or_retry()
        except AgentStartError:
            pass  # logged, reported and rescheduled by _spawn_or_retry

    # --- configuration -------------------------------------------------------------------------

    def _reload(self, cfg: Any) -> None:
        old = self.cfg.agent
        self.cfg = cfg
        a = cfg.agent
        with self._lock:
            self._policy.rules = RestartRules.of(a.restart)
        self._beats.relisten(old, a, self.pid)
        hc = a.health_check
        if self._health is not None:
            self._health.configure_from(hc)
        if "health" in self._timers:
            self._timers["health"] = min(self._timers["health"], time.monotonic() + hc.interval)
