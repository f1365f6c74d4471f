"""Agent supervisor: the state machine that starts, adopts, watches, restarts and stops the Agent.

One thread (`agent-supervisor`) owns every state change. It sleeps in a selector on the Agent's
pidfd (so an exit is seen the moment it happens, for an adopted Agent too) and on a wake-up pipe,
with timers for health ticks, backoff, the SIGKILL deadline and log rotation. Other threads (the
engine, Manager commands, the update helper, the heartbeat receiver) post work to it and, where
the caller needs the outcome, wait on a Future.

States are supervisord's: STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL. Events go
to the `on_agent_event` hook in the order they happen; see docs/agent-protocol.md.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from daemon_app.agent import health as health_mod
from daemon_app.agent.heartbeat import Heartbeat, HeartbeatServer
from daemon_app.agent.process import (
    AgentProcess,
    ExitInfo,
    clean_env,
    describe_pid,
    read_pid_file,
    remove_pid_file,
    rotate_copy_truncate,
    tail_lines,
    write_pid_file,
)
from daemon_app.agent.snapshot import AgentSnapshot, AgentState
from daemon_app.errors import AgentHealthError, AgentStartError, AgentStopError, DaemonError
from daemon_app.metrics import rfc3339
from daemon_app.wakeup import WakePipe

if TYPE_CHECKING:
    from daemon_app.config import Config
    from daemon_app.host import Host

log = logging.getLogger(__name__)

# The state names as the plain strings agent_status() and events carry, from the one enum.
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL = (s.value for s in AgentState)

# Why the supervisor itself ends an Agent process (the "intent" of a STOPPING).
_STOP, _REQUESTED = "stop", "requested"
_KILL_GRACE = 5.0  # after SIGKILL, how long stop_agent() waits before it reports D3002
# An Agent silent for heartbeat_timeout is hung: it gets this long (at most agent.stop_timeout) to
# act on SIGTERM before SIGKILL, so it is replaced within heartbeat_timeout plus a few seconds.
_HUNG_GRACE = 2.0
# Copy-truncate rotation of the Agent's stdout/stderr is polled: a file may overshoot its limit by
# what the Agent writes in this time. Every 2 s cost the idle daemon ~0.01 % CPU.
_LOG_CHECK_EVERY = 10.0
_CALL_TIMEOUT = 30.0
_STDERR_TAIL_LINES = 20


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """Seed §3.3.1: restart n (0-based) waits 0, base, base, 3·base, 3·base, then max; never above max."""
    if attempt <= 0:
        return 0.0
    if attempt <= 2:
        return min(base, maximum)
    if attempt <= 4:
        return min(3 * base, maximum)
    return maximum


class AgentSupervisor:
    """Engine service supervising one Agent process. Thread-safe public methods; see module doc."""

    name = "agent"

    def __init__(self, cfg: Config, host: Host) -> None:
        self.cfg = cfg
        self.host = host
        self.state = STOPPED
        self.pid = 0
        work = cfg.daemon.work_dir
        self.pid_file = os.path.join(work, "agent.pid")
        self.stdout_log = os.path.join(work, "agent", "stdout.log")
        self.stderr_log = os.path.join(work, "agent", "stderr.log")
        self._proc: AgentProcess | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # notified on state changes and heartbeats
        self._emit_lock = threading.RLock()  # one event at a time, across threads, in order
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...],
                                             concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._sel: selectors.DefaultSelector | None = None
        self._waker: WakePipe | None = None
        self._thread: threading.Thread | None = None
        self._quit = False
        self._timers: dict[str, float] = {}
        self._intent: str | None = None
        self._kill_grace = 0.0
        self._server: HeartbeatServer | None = None
        self._health: health_mod.HealthChecker | None = None
        self._running_since: float | None = None
        self._descendants: dict[int, bool] = {}
        # What agent_status() reports.
        self._restart_count = 0
        self._restarts_total = 0
        self._last_restart: float | None = None
        self._last_exit: dict[str, Any] | None = None
        self._version = ""
        self._last_hb_wall: float | None = None
        self._last_hb_mono: float | None = None  # the current process's latest heartbeat
        self._hb_seq = 0
        self._foreign = 0
        self._health_checks = 0
        self._sample = health_mod.Sample(0.0, 0, 0)
        self._measured = False
        host.on_command("agent", self.handle_command)

    # --- Service -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen for heartbeats, then adopt the running Agent or start one.

        D3001 AgentStartError when the heartbeat socket cannot be created. An Agent that cannot be
        started is logged (D3001) and left to the restart policy; the daemon runs on.
        """
        a = self.cfg.agent
        self._server = self._new_server(a)
        self._server.start()
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
        if self._server is not None:
            self._server.stop()
            self._server = None
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
        self._call(self._reload, cfg)

    def status(self) -> dict[str, Any]:
        out = self.agent_status()
        server = self._server
        with self._lock:
            out.update({
                "adopted": bool(self._proc and self._proc.adopted),
                "restarts_total": self._restarts_total,
                "heartbeats_foreign": self._foreign,
                "health_checks": self._health_checks,
                "processes": self._sample.processes,
                "socket": self.cfg.agent.socket_path,
            })
        if server is not None:
            c = server.counters
            out["socket_connections"] = server.connections
            out["socket_counters"] = {"accepted": c.accepted, "rejected": c.rejected, "evicted": c.evicted,
                                      "refused": c.refused, "invalid": c.invalid, "stalled": c.stalled,
                                      "accept_errors": c.accept_errors, "lines": c.lines}
        return out

    def agent_status(self) -> dict[str, Any]:
        """Seed §4.2 AgentStatus plus what an operator needs to see why the Agent is where it is."""
        with self._lock:
            proc = self._proc
            return {
                "pid": self.pid,
                "state": self.state,
                "version": self._version,
                "start_time": rfc3339(proc.started_at) if proc else None,
                # None (unknown) until a health check of this process measured them: 0 would lie.
                "cpu_percent": self._sample.cpu_percent if proc and self._measured else None,
                "memory_bytes": self._sample.memory_bytes if proc and self._measured else None,
                "restart_count": self._restart_count,
                "last_restart": rfc3339(self._last_restart) if self._last_restart else None,
                "last_exit": dict(self._last_exit) if self._last_exit else None,
                "last_heartbeat": rfc3339(self._last_hb_wall) if self._last_hb_wall else None,
                "heartbeats_received": self._hb_seq,
                "heartbeats_invalid": self._server.counters.invalid if self._server else 0,
            }

    def snapshot(self) -> AgentSnapshot:
        """agent_status() as typed fields, for decisions other parts make on the Agent."""
        return AgentSnapshot.from_status(self.agent_status())

    # --- operations for operators, the Manager and the update helper ---------------------------

    def stop_agent(self, timeout: float | None = None) -> None:
        """Stop the Agent and keep it STOPPED (no auto-restart) until start_agent() or reset().

        SIGTERM to its process group, up to `timeout` (default `agent.stop_timeout`) for it to
        exit, then SIGKILL. Returns once it is gone; D3002 AgentStopError if even SIGKILL did not
        end it within a few seconds.
        """
        grace = self.cfg.agent.stop_timeout if timeout is None else timeout
        self._call(self._begin_stop, _STOP, grace)
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
        self._call(self._begin_stop, _REQUESTED, grace)
        if not self._wait_for(lambda: self.state in (STARTING, RUNNING) and self.pid != old,
                              grace + _KILL_GRACE):
            raise AgentStopError(f"agent: restart of pid {old} did not complete (state {self.state})")

    def signal_agent(self, signum: int) -> bool:
        """Send `signum` to the Agent's process group (SIGHUP: re-read its config); False when no
        Agent process runs."""
        return bool(self._call(self._signal, signum))

    def _signal(self, signum: int) -> bool:
        if self._proc is None or self.state not in (STARTING, RUNNING):
            return False
        self._proc.signal_group(signum)
        return True

    def reset(self) -> None:
        """Zero the restart count; a FATAL Agent is started again (D3001 if it cannot be executed)."""
        self._call(self._reset)

    def wait_for_heartbeat(self, version: str | None, timeout: float) -> bool:
        """True when a heartbeat from the current Agent process reporting `version` (any if None)
        arrives after this call, within `timeout` seconds; False otherwise."""
        with self._cond:
            seen = self._hb_seq
            return self._cond.wait_for(
                lambda: self._hb_seq > seen and (version is None or self._version == version), timeout)

    def current_version(self) -> str:
        """The version the Agent last reported in a heartbeat ("" before the first one)."""
        with self._lock:
            return self._version

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Post one event for the `on_agent_event` plugins (also used by the update helper for
        "updated" / "rolled_back"); they get it on their own thread. Returns the event."""
        with self._emit_lock:
            event = {"type": event_type, "state": self.state, "pid": self.pid, "timestamp": rfc3339(),
                     **fields}
            log.info("agent event %s (state %s, pid %s)", event_type, self.state, self.pid or "-",
                     extra={"agent_event": event})
            self.host.plugins.post_event(event)
            return event

    def handle_command(self, command: dict[str, Any]) -> concurrent.futures.Future[Any] | None:
        """Manager command {"type": "agent", "action": start|stop|restart|reset, "id"}; returns at once
        with the future of the action on the supervisor's thread (the link answers the Manager when it
        is done: `start` of a binary that is missing fails with D3001), None for an unknown action."""
        action = command.get("action")
        actions: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
            "start": (self._start_now, ()),
            "stop": (self._begin_stop, (_STOP, self.cfg.agent.stop_timeout)),
            "restart": (self._begin_stop, (_REQUESTED, self.cfg.agent.stop_timeout)),
            "reset": (self._reset, ()),
        }
        if action not in actions:
            log.error("D3001 agent command %s: unknown action %.60r (expected start, stop, restart, reset)",
                      command.get("id"), action, extra={"code": "D3001"})
            return None
        fn, args = actions[action]
        log.info("agent command %s: %s", command.get("id"), action)
        future = self._post(fn, *args)

        def done(f: concurrent.futures.Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                code = exc.code if isinstance(exc, DaemonError) else "D3001"
                log.error("agent command %s (%s) failed: %s", command.get("id"), action, exc,
                          extra={"code": code})

        future.add_done_callback(done)
        return future

    # --- cross-thread plumbing -----------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None:
            future.set_exception(AgentStartError("agent: supervision is not running"))
            return future
        self._calls.put((fn, args, future))
        self._wake()
        return future

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if threading.current_thread() is self._thread:
            return fn(*args)  # e.g. a plugin reacting to an event
        return self._post(fn, *args).result(_CALL_TIMEOUT)

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker.wake()

    def _wait_for(self, cond: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(cond, timeout)

    def _set_state(self, state: str) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sel is not None
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
                try:
                    fn, args, future = self._calls.get_nowait()
                except queue.Empty:
                    break
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:
                        future.set_exception(exc)
            now = time.monotonic()
            for name, when in sorted(self._timers.items(), key=lambda kv: kv[1]):
                if when <= now and self._timers.get(name) == when:
                    del self._timers[name]
                    self._guard(getattr(self, f"_timer_{name}"))
        while True:  # callers still waiting must not hang until their timeout
            try:
                _, _, future = self._calls.get_nowait()
            except queue.Empty:
                return
            future.set_exception(AgentStartError("agent: supervision stopped"))

    def _guard(self, fn: Callable[[], None]) -> None:
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
                self._enter_running(None)
                self.emit("adopted", start_time=rfc3339(proc.started_at))
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
        self._set_state(STARTING)
        self._timers["promote"] = time.monotonic() + a.start_seconds
        # Before any plugin runs: if the daemon dies now, the next one must still find this Agent.
        try:
            write_pid_file(self.pid_file, proc.pid, proc.start_ticks, a.binary_path)
        except OSError as exc:
            log.error("D3001 agent: cannot write pid file %s (the next daemon cannot adopt pid %d): %s",
                      self.pid_file, proc.pid, exc, extra={"code": "D3001"})
        self._timers.setdefault("logs", time.monotonic() + _LOG_CHECK_EVERY)
        self.emit("started", start_time=rfc3339(proc.started_at), binary=a.binary_path)

    def _spawn_or_retry(self) -> None:
        """Spawn; if the binary cannot be executed, the restart policy takes over and D3001 is raised."""
        try:
            self._spawn()
        except AgentStartError as exc:
            log.error("%s", exc, extra={"code": exc.code})
            with self._lock:
                self._last_exit = {"code": None, "signal": None, "at": rfc3339(), "stderr_tail": [],
                                   "known": False, "error": str(exc)}
            self._set_state(EXITED)
            self.emit("exited", error=str(exc), exit_code=None, signal=None, stderr_tail=[])
            self._after_exit("start_failed", ran_for=0.0)
            raise

    def _attach(self, proc: AgentProcess) -> None:
        assert self._sel is not None
        with self._lock:
            self._proc = proc
            self.pid = proc.pid
            self._last_hb_mono = None
            self._descendants.clear()
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
            self._health = None
            self._running_since = None
        for name in ("promote", "health", "kill", "stable", "logs"):
            self._timers.pop(name, None)
        return proc

    def _timer_promote(self) -> None:
        if self.state == STARTING:
            self._enter_running("start_seconds")

    def _enter_running(self, via: str | None) -> None:
        """RUNNING: at the first heartbeat or after agent.start_seconds up (`via`); adoption: at once."""
        assert self._proc is not None
        hc = self.cfg.agent.health_check
        now = time.monotonic()
        try:
            self._health = health_mod.HealthChecker(
                self._proc.pid, heartbeat_timeout=hc.heartbeat_timeout, cpu_threshold=hc.cpu_threshold,
                memory_threshold=hc.memory_threshold, threshold_duration=hc.threshold_duration)
        except psutil.NoSuchProcess:
            return  # it already exited; the pidfd event follows
        self._timers.pop("promote", None)
        with self._lock:
            self._running_since = now
        self._set_state(RUNNING)
        self._timers["health"] = now + hc.interval
        self._timers["logs"] = now + _LOG_CHECK_EVERY
        if self._restart_count:
            stable_at = self._proc.started_mono + self.cfg.agent.restart.stable_after
            self._timers["stable"] = max(now, stable_at)
        if via is not None:
            self.emit("running", via=via)

    def _start_now(self) -> None:
        if self._proc is not None:
            if self.state == STOPPING:
                self._intent = _REQUESTED  # it is on its way out; start it again once it is gone
            return
        self._timers.pop("backoff", None)
        if self.state in (STOPPED, FATAL):
            with self._lock:
                self._restart_count = 0
        self._spawn_or_retry()

    def _reset(self) -> None:
        with self._lock:
            self._restart_count = 0
        log.info("agent restart count reset")
        if self.state == FATAL:
            self._spawn_or_retry()

    def _timer_stable(self) -> None:
        if self.state == RUNNING and self._restart_count:
            log.info("agent stable for %.0fs; restart count %d reset",
                     self.cfg.agent.restart.stable_after, self._restart_count)
            with self._lock:
                self._restart_count = 0

    # --- watching ------------------------------------------------------------------------------

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        """Called on the heartbeat thread for every valid line."""
        with self._cond:
            if not self._is_agent(hb.peer.pid):
                self._foreign += 1
                return
            self._hb_seq += 1
            self._version = hb.version
            self._last_hb_wall = time.time()
            self._last_hb_mono = hb.received
            self._cond.notify_all()
            promote = self.state == STARTING
            pid = self.pid
        if promote:
            self._post(self._promote_on_heartbeat, pid)

    def _promote_on_heartbeat(self, pid: int) -> None:
        if self.state == STARTING and self.pid == pid:
            self._enter_running("heartbeat")

    def _is_agent(self, peer_pid: int) -> bool:
        """The connecting process is the Agent or one of its descendants (cached per peer pid)."""
        agent = self.pid
        if not agent or peer_pid <= 0:
            return False
        if peer_pid == agent:
            return True
        with self._lock:
            known = self._descendants.get(peer_pid)
            if known is not None:
                return known
        try:
            result = any(p.pid == agent for p in psutil.Process(peer_pid).parents())
        except psutil.Error:
            result = False
        with self._lock:
            if len(self._descendants) > 256:
                self._descendants.clear()
            self._descendants[peer_pid] = result
        return result

    def _timer_health(self) -> None:
        if self.state != RUNNING or self._health is None:
            return
        assert self._running_since is not None and self._proc is not None
        hc = self.cfg.agent.health_check
        last = self._last_hb_mono if self._last_hb_mono is not None else self._running_since
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
        details = self._unhealthy_details(reason)
        err = AgentHealthError(f"agent pid {self.pid} unhealthy: {reason} ({details}); restarting")
        log.warning("%s", err, extra={"code": err.code})
        self.emit("unhealthy", reason=reason, details=details)
        if reason == health_mod.DEAD:
            self._on_exit(intent=reason)
        elif reason == health_mod.HEARTBEAT_TIMEOUT:
            self._stop_process(reason, min(self.cfg.agent.stop_timeout, _HUNG_GRACE))
        else:
            self._stop_process(reason, self.cfg.agent.stop_timeout)

    def _unhealthy_details(self, reason: str) -> str:
        hc = self.cfg.agent.health_check
        s = self._sample
        if reason == health_mod.CPU_THRESHOLD:
            return f"cpu {s.cpu_percent:.1f}% > {hc.cpu_threshold}% for {hc.threshold_duration:g}s"
        if reason == health_mod.MEMORY_THRESHOLD:
            return f"rss {s.memory_bytes} > {hc.memory_threshold} bytes for {hc.threshold_duration:g}s"
        if reason == health_mod.HEARTBEAT_TIMEOUT:
            return f"no heartbeat for {hc.heartbeat_timeout:g}s"
        return "process gone"

    def _timer_logs(self) -> None:
        a = self.cfg.agent
        for path in (self.stdout_log, self.stderr_log):
            try:
                if rotate_copy_truncate(path, a.log_max_bytes, a.log_backups):
                    log.info("rotated agent log %s", path)
            except OSError as exc:
                log.warning("cannot rotate agent log %s: %s", path, exc)
        if self._proc is not None:
            self._timers["logs"] = time.monotonic() + _LOG_CHECK_EVERY

    # --- stopping ------------------------------------------------------------------------------

    def _begin_stop(self, intent: str, grace: float) -> None:
        if self._proc is None:
            self._timers.pop("backoff", None)
            if intent == _REQUESTED:
                self._start_now()
            elif self.state != STOPPED:
                self._set_state(STOPPED)
                self.emit("stopped", reason="requested")
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
        self._set_state(STOPPING)
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

    def _timer_kill(self) -> None:
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
            self._set_state(STOPPED)
            self.emit("stopped", reason="requested", **fields)
            return
        self._set_state(EXITED)
        self.emit("exited", **fields, **({"reason": intent} if intent else {}))
        if intent == _REQUESTED:
            self.emit("restarting", reason=_REQUESTED, delay=0.0, attempt=0)
            self._spawn_or_retry()
            return
        self._after_exit(intent or "exited", ran_for)

    def _record_exit(self, info: ExitInfo, proc: AgentProcess) -> dict[str, Any]:
        tail = tail_lines(self.stderr_log, _STDERR_TAIL_LINES, since=proc.stderr_offset)
        record = {"code": info.code, "signal": info.signal, "at": rfc3339(info.at), "stderr_tail": tail,
                  "known": info.known}
        with self._lock:
            self._last_exit = record
        out: dict[str, Any] = {"pid": proc.pid, "exit_code": info.code, "signal": info.signal,
                               "exit_known": info.known, "stderr_tail": tail}
        if info.signal is not None:
            out["signal_name"] = signal.Signals(info.signal).name
        return out

    # --- restart policy ------------------------------------------------------------------------

    def _after_exit(self, reason: str, ran_for: float) -> None:
        r = self.cfg.agent.restart
        with self._lock:
            if ran_for >= r.stable_after:
                self._restart_count = 0
            attempt = self._restart_count
        if attempt >= r.max_retries:
            self._set_state(FATAL)
            err = AgentStartError(f"agent: gave up after {attempt} restart(s) without {r.stable_after:g}s "
                                  f"of stable running (last: {reason}); FATAL until an operator or the "
                                  "Manager starts or resets it")
            log.error("%s", err, extra={"code": err.code})
            self.emit("fatal", reason=reason, restart_count=attempt)
            return
        delay = backoff_delay(attempt, r.backoff_base, r.backoff_max)
        self.emit("restarting", reason=reason, delay=delay, attempt=attempt + 1)
        if delay > 0:
            self._set_state(BACKOFF)
            self._timers["backoff"] = time.monotonic() + delay
            self.emit("backoff", reason=reason, delay=delay, attempt=attempt + 1)
            return
        self._restart_now()

    def _timer_backoff(self) -> None:
        if self.state == BACKOFF:
            self._restart_now()

    def _restart_now(self) -> None:
        with self._lock:
            self._restart_count += 1
            self._restarts_total += 1
            self._last_restart = time.time()
        try:
            self._spawn_or_retry()
        except AgentStartError:
            pass  # logged, reported and rescheduled by _spawn_or_retry

    # --- configuration -------------------------------------------------------------------------

    def _new_server(self, a: Any) -> HeartbeatServer:
        return HeartbeatServer(a.socket_path, a.socket_mode, a.socket_group, self._on_heartbeat,
                               self._is_agent)

    def _reload(self, cfg: Any) -> None:
        old = self.cfg.agent
        self.cfg = cfg
        a = cfg.agent
        if (a.socket_path, a.socket_mode, a.socket_group) != (old.socket_path, old.socket_mode,
                                                              old.socket_group):
            new = self._new_server(a)
            try:
                new.start()
            except AgentStartError as exc:
                log.error("%s; heartbeats stay on %s", exc, old.socket_path, extra={"code": exc.code})
            else:
                if self._server is not None:
                    self._server.stop()
                self._server = new
                if self._proc is not None and a.socket_path != old.socket_path:
                    log.warning("agent pid %d still has AGENT_SOCKET=%s; it gets the new path at its "
                                "next start", self.pid, old.socket_path)
        hc = a.health_check
        if self._health is not None:
            self._health.configure(heartbeat_timeout=hc.heartbeat_timeout, cpu_threshold=hc.cpu_threshold,
                                   memory_threshold=hc.memory_threshold,
                                   threshold_duration=hc.threshold_duration)
        if "health" in self._timers:
            self._timers["health"] = min(self._timers["health"], time.monotonic() + hc.interval)
