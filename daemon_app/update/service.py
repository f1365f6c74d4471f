"""The update service inside the running daemon: Manager commands and control-socket requests run the
Updater in their own thread, one at a time; progress goes to the Manager and the log; an update a
crash interrupted is settled at start; a daemon self-update is committed once the new daemon is healthy.

Job ids: a Manager command's id (its progress and result go back to the Manager with it), or
`local-<hex>` for a request from the control socket (`daemon update` while a daemon runs), polled
with the `update-progress` control command. The id is kept in the update journal, so the daemon that
settles an interrupted update, or the new daemon after a self-update, reports under the same id.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon_app import command_status
from daemon_app.agent.snapshot import LastExit
from daemon_app.errors import AgentStartError, ControlError, DaemonError
from daemon_app.update import commands, testpoint
from daemon_app.update.errors import MalformedManifestError, UpdateInProgressError
from daemon_app.update.flow import COMPLETED, FAILED, ROLLED_BACK, Updater, UpdateRequest, UpdateResult
from daemon_app.update.manifest import COMPONENTS
from daemon_app.update.selfupdate import PENDING, commit_pending_update, process_start, read_marker
from daemon_app.update.state import Journal

if TYPE_CHECKING:
    from daemon_app.config import Config
    from daemon_app.host import AgentControl, ConfigPushes, Host, LinkHealth, Peer

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local-"
FINAL = (COMPLETED, ROLLED_BACK, FAILED)
KEEP_JOBS = 16
COMMIT_CHECK_EVERY = 0.25
COMMIT_TASK = "update:commit"


@dataclass
class Job:
    """One update, rollback or recovery: its states as they happen, and its UpdateResult at the end."""

    id: str
    kind: str  # update | rollback | recover
    component: str
    from_manager: bool
    states: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    token: int | None = None

    def describe(self) -> str:
        last = self.states[-1]["state"] if self.states else "starting"
        return f"{self.kind} of {self.component or '?'}, id {self.id}, {last}"

    def view(self, after: int = 0) -> dict[str, Any]:
        """What `update-progress` answers: states from index `after` on, and the result once done."""
        return {"id": self.id, "kind": self.kind, "component": self.component, "started": self.started,
                "finished": self.finished, "done": self.finished is not None, "next": len(self.states),
                "states": self.states[after:], "result": self.result}

    def summary(self) -> dict[str, Any]:
        last = self.states[-1] if self.states else {"state": "starting", "percent": 0.0, "message": ""}
        return {"id": self.id, "kind": self.kind, "component": self.component, "state": last["state"],
                "percent": last["percent"], "message": last["message"], "started": self.started}


def _exit_text(last_exit: LastExit | None) -> str:
    if last_exit is None:
        return "exited before heartbeating"
    if last_exit.signal:
        return f"exited on signal {last_exit.signal} before heartbeating"
    if last_exit.code is not None:
        return f"exited with code {last_exit.code} before heartbeating"
    return "exited before heartbeating"


class EngineSupervisor:
    """The update's Supervisor interface over the Agent supervisor of the moment (a reload may
    replace it, or turn it off).

    Two things beyond the plain supervisor: a heartbeat that arrives between starting the Agent and
    waiting for it still counts (the count is taken before the start), and an Agent that exits
    instead of heartbeating fails the check at once instead of after the whole verify_timeout.
    """

    def __init__(self, agent: Peer[AgentControl]) -> None:
        self._agent = agent
        self._baseline = 0
        self._pid = 0
        self.failure = ""  # why the last wait_for_heartbeat failed, when the Agent exited

    def _sup(self) -> AgentControl:
        sup = self._agent()
        if sup is None:
            raise AgentStartError("agent: supervision is off (agent.enabled: false)")
        return sup

    def stop_agent(self, timeout: float | None = None) -> None:
        self._sup().stop_agent(timeout)

    def start_agent(self) -> None:
        sup = self._sup()
        self._baseline = sup.snapshot().heartbeats_received
        sup.start_agent()
        self._pid = sup.snapshot().pid

    def wait_for_heartbeat(self, version: str | None, timeout: float) -> bool:
        sup = self._sup()
        deadline = time.monotonic() + timeout
        self.failure = ""
        while True:
            st = sup.snapshot()
            same = bool(self._pid) and st.pid == self._pid
            if same and st.heartbeats_received > self._baseline and (not version or st.version == version):
                return True
            if not same or not st.state.live:
                # It exited (the restart policy may have started it again): not healthy.
                self.failure = _exit_text(st.last_exit)
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sup.wait_for_heartbeat(None, min(left, 0.25))

    def current_version(self) -> str:
        return str(self._sup().current_version())

    def emit(self, event_type: str, **fields: Any) -> None:
        self._sup().emit(event_type, **fields)

    @property
    def enabled(self) -> bool:
        return self._agent() is not None


class UpdateService:
    """Engine service "update": command handlers, control commands, status, recovery, self-update commit."""

    name = "update"

    def __init__(self, host: Host, *, agent: Peer[AgentControl], link: Peer[LinkHealth],
                 config_pushes: Peer[ConfigPushes]) -> None:
        self.host = host
        self._link = link
        self._config_pushes = config_pushes  # a config push restarts the Agent too: one at a time
        self._lock = threading.Lock()
        self._job: Job | None = None
        self._jobs: dict[str, Job] = {}
        self._supervisor = EngineSupervisor(agent)
        self._awaiting: Job | None = None  # the self-update job waiting for this daemon to be healthy
        self._seq_mark = 0

    # --- Service ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Register the handlers, then settle an update a crash or a self-update left behind."""
        host = self.host
        host.on_command("update", self.handle_command)
        host.on_command("rollback", self.handle_command)
        host.on_control("update", self._control_update, on_engine_thread=False)
        host.on_control("rollback", self._control_rollback, on_engine_thread=False)
        host.on_control("update-progress", self._control_progress, on_engine_thread=False)
        host.add_status("update", self.status_section)
        # Reports this daemon makes get higher seqs: one of them acked proves the link works end to end.
        link = self._link()
        self._seq_mark = link.snapshot().last_seq if link is not None else 0
        entry = Journal(host.cfg.daemon.work_dir).read()
        if entry is None:
            self._updater().recover()  # nothing interrupted: only removes stray downloads
            return
        testpoint.reached("new_start")
        request_id = str(entry.get("request_id") or "") or f"recovery-{uuid.uuid4().hex[:12]}"
        self._submit("recover", str(entry.get("component") or ""), request_id,
                     from_manager=_from_manager(request_id), work=self._recover)

    def stop(self, deadline: float) -> None:
        """Nothing to stop: shutdown already waited for the job (it is work in flight)."""

    def reload(self, cfg: Config) -> None:
        """Each job builds its Updater from the engine's config of the moment."""

    def status(self) -> dict[str, Any]:
        return self.status_section() or {}

    def in_progress(self) -> str:
        """UpdateJobs (daemon_app.host): the update in flight, or ""."""
        job = self._job
        return job.describe() if job is not None else ""

    def status_section(self) -> dict[str, Any] | None:
        job = self._job
        return job.summary() if job is not None else None

    # --- requests ---------------------------------------------------------------------------------

    def handle_command(self, command: dict[str, Any]) -> None:
        """A Manager command {"id", "type": "update"|"rollback", ...}; returns at once."""
        cid = command.get("id") if isinstance(command.get("id"), str) else ""
        component = command.get("component") if command.get("component") in COMPONENTS else ""
        try:
            request = commands.from_command(command)
            if isinstance(request, UpdateRequest):
                self.submit_update(request, from_manager=True)
            else:
                self.submit_rollback(request.component, request.id, from_manager=True)
        except DaemonError as exc:
            log.error("%s command %s refused: %s", command.get("type"), cid, exc, extra={"code": exc.code})
            result = UpdateResult(component=component, error=str(exc))
            self._send(cid, FAILED, 0.0, str(exc), result.to_dict())

    def submit_update(self, request: UpdateRequest, *, from_manager: bool) -> Job:
        if request.component not in COMPONENTS:
            raise MalformedManifestError(
                f"update: component must be agent or daemon, got {request.component!r}")
        return self._submit("update", request.component, request.id, from_manager=from_manager,
                            work=lambda progress: self._updater().run(request, progress))

    def submit_rollback(self, component: str, request_id: str, *, from_manager: bool) -> Job:
        if component not in COMPONENTS:
            raise MalformedManifestError(f"rollback: component must be agent or daemon, got {component!r}")
        return self._submit("rollback", component, request_id, from_manager=from_manager,
                            work=lambda progress: self._updater().rollback(component, progress))

    def _control_update(self, args: dict[str, Any]) -> dict[str, Any]:
        request = commands.from_control(args, "update", LOCAL_PREFIX + uuid.uuid4().hex[:12])
        assert isinstance(request, UpdateRequest)
        return {"id": self.submit_update(request, from_manager=False).id}

    def _control_rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        request = commands.from_control(args, "rollback", LOCAL_PREFIX + uuid.uuid4().hex[:12])
        return {"id": self.submit_rollback(request.component, request.id, from_manager=False).id}

    def _control_progress(self, args: dict[str, Any]) -> dict[str, Any]:
        job = self._jobs.get(str(args.get("id") or ""))
        if job is None:
            raise ControlError(f"no update with id {repr(args.get('id'))[:80]} in this daemon "
                               f"(pid {os.getpid()})")
        after = args.get("after")
        if after is None:  # left out: from the first state
            after = 0
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ControlError(f"update-progress: after must be a whole number >= 0 (the 'next' of the "
                               f"previous answer), got {repr(after)[:40]}")
        return job.view(after)

    # --- jobs -------------------------------------------------------------------------------------

    def _updater(self) -> Updater:
        sup = self._supervisor if self._supervisor.enabled else None
        return Updater(self.host.cfg, plugins=self.host.plugins, supervisor=sup, daemon_restart=self._restart)

    def _submit(self, kind: str, component: str, request_id: str, *, from_manager: bool,
                work: Callable[[Callable[..., None]], UpdateResult | None]) -> Job:
        with self._lock:
            if self._job is not None:
                raise UpdateInProgressError(f"another update is in progress ({self._job.describe()})")
            job = Job(request_id, kind, component, from_manager)
            job.token = self.host.begin_work(f"update: {kind} {component} {request_id}")
            self._job = job
            # Claimed before looking at config pushes, as a push claims before looking at updates:
            # of two arriving together at least one sees the other, so both never run.
            pushes = self._config_pushes() if kind in ("update", "rollback") else None
            push = pushes.in_progress() if pushes is not None else ""
            if push:
                self._job = None
                self.host.end_work(job.token)
                raise UpdateInProgressError(f"a remote config push is in progress ({push}); nothing changed")
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-KEEP_JOBS]:
                del self._jobs[old]
        log.info("%s of %s started (id %s)", kind, component or "?", request_id)
        threading.Thread(target=self._run, args=(job, work), name=f"update-{kind}", daemon=True).start()
        return job

    def _run(self, job: Job, work: Callable[[Callable[..., None]], UpdateResult | None]) -> None:
        progress = self._progress_for(job)
        try:
            work(progress)
        except Exception as exc:  # the Updater returns its failures; anything raised here is a bug
            log.exception("D4003 %s of %s failed unexpectedly", job.kind, job.component,
                          extra={"code": "D4003"})
            result = UpdateResult(component=job.component,
                                  error=f"D4003 {job.kind}: {type(exc).__name__}: {exc}")
            progress(FAILED, message=result.error, result=result)
        finally:
            if job.finished is None and job is self._awaiting:
                # A self-update being watched keeps the slot (no other update until it is committed
                # or rolled back) but is not work in flight: a SIGTERM from the watcher stops us at once.
                self._release(job)
            else:
                self._end(job)

    def _release(self, job: Job) -> None:
        with self._lock:
            if job.token is not None:
                self.host.end_work(job.token)
                job.token = None

    def _end(self, job: Job) -> None:
        if job.finished is None:
            job.finished = time.time()
        self._release(job)
        with self._lock:
            if self._job is job:
                self._job = None

    def _progress_for(self, job: Job) -> Callable[..., None]:
        def progress(state: str, percent: float = 0.0, message: str = "", result: UpdateResult | None = None
                     ) -> None:
            job.states.append({"state": state, "percent": round(percent, 1), "message": message,
                               "time": time.time()})
            data = result.to_dict() if result is not None else None
            if state in FINAL:
                job.result = data
                job.finished = time.time()
            if job.from_manager:
                self._send(job.id, state, percent, message, data)

        return progress

    def _send(self, command_id: str, state: str, percent: float, message: str,
              result: dict[str, Any] | None) -> None:
        command_status.send_quietly(self._link(), command_id, state, percent, message, result)

    # --- crash recovery and the self-update commit --------------------------------------------------

    def _recover(self, progress: Callable[..., None]) -> UpdateResult | None:
        result = self._updater().recover(progress)
        if result is not None:
            return result
        work_dir = self.host.cfg.daemon.work_dir
        marker = read_marker(work_dir)
        if marker and marker.get("status") == PENDING and marker.get("pid") == os.getpid() \
                and marker.get("pid_start") == process_start(os.getpid()):
            job = self._job
            self._awaiting = job
            what = "registered with the manager and one report acknowledged" if self._link() is not None \
                else "a report made (stand-alone)"
            log.info("daemon %s running; committing the self-update once %s", marker.get("new_version"), what)
            self.host.run_soon(lambda: self.host.every(COMMIT_TASK, COMMIT_CHECK_EVERY, self._check_commit))
        return None

    def healthy(self) -> bool:
        """The new daemon is doing its job: registered and a report of its own acknowledged by the
        Manager, or, stand-alone, a report made and handed to the reporters."""
        manager = self._link()
        if manager is None:
            return self.host.reports_built >= 1
        link = manager.snapshot()
        return link.registered and link.acked_seq > self._seq_mark

    def _check_commit(self) -> None:
        """On the engine's thread, every COMMIT_CHECK_EVERY s until committed or rolled back."""
        job = self._awaiting
        cfg = self.host.cfg
        marker = read_marker(cfg.daemon.work_dir)
        if job is None or not marker or marker.get("status") != PENDING:
            # The watcher rolled back (it stops this daemon next) or there is nothing to do.
            self.host.cancel(COMMIT_TASK)
            return
        if not self.healthy():
            return
        self.host.cancel(COMMIT_TASK)
        testpoint.reached("before_commit")
        result = commit_pending_update(cfg.daemon.work_dir, backup_dir=cfg.update.backup_dir,
                                       max_backups=cfg.update.max_backups)
        testpoint.reached("after_commit")
        self._awaiting = None
        if result is not None:
            message = f"daemon {result['new_version']} is healthy; self-update committed"
            log.info("update daemon: completed 100%% %s", message, extra={"update_state": COMPLETED})
            self._progress_for(job)(COMPLETED, 100.0, message, UpdateResult(**result, message=message))
        self._end(job)

    def _restart(self) -> None:
        """DaemonTarget's restart: close everything (not the Agent) and exec into the new pyz."""
        from daemon_app import buildinfo

        cfg = self.host.cfg
        path = os.path.abspath(cfg.update.daemon_path or buildinfo.pyz_path() or "")
        job = self._job
        token = job.token if job is not None else None
        if job is not None:
            job.token = None
        try:
            self.host.restart_into([sys.executable, path, *sys.argv[1:]], release=token)
        except BaseException:
            if job is not None and token is not None:
                job.token = token
            raise


def _from_manager(request_id: str) -> bool:
    return not request_id.startswith((LOCAL_PREFIX, "recovery-"))
