"""The engine: start order (seed §3.1.1), the timed loops (seed §2.3), reload, graceful shutdown (§3.1.2).

One thread (the main one) owns the schedule. Signal handlers only enqueue; the loop handles
what they asked for. Long-lived modules (Agent supervisor, Manager link) are `Service`s: the
engine starts them in order, asks them for status, reloads them, and stops them in reverse.
Work that runs outside the engine's thread (an update, a command handler's worker) says so with
`engine.busy(what)`, so shutdown waits for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from daemon_app import __version__, fsutil, logs, threads
from daemon_app.collection import CollectorRunner, enabled_calls
from daemon_app.config import Config
from daemon_app.control import ControlServer
from daemon_app.errors import ConfigValidateError, DaemonError
from daemon_app.host import CommandHandler, ControlHandler, StatusProvider
from daemon_app.instance import InstanceLock
from daemon_app.mailbox import Mailbox
from daemon_app.metrics import Metrics, rfc3339
from daemon_app.nodeid import load_or_create_node_id
from daemon_app.plugins import Plugins
from daemon_app.schedule import EngineStopping, Scheduler, WorkTracker
from daemon_app.servicewatch import ThreadDeaths, dead_threads, describe, service_error
from daemon_app.systemd import Notifier, watchdog_interval

if TYPE_CHECKING:
    from daemon_app.agent.supervisor import AgentSupervisor
    from daemon_app.comm.link import ManagerLink
    from daemon_app.rconfig.service import RemoteConfigService
    from daemon_app.update.service import UpdateService

__all__ = ["Engine", "EngineStopping", "InstanceLock", "Scheduler", "Service", "WorkTracker"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Settings read once at start; a reload that changes them says a restart is needed.
RESTART_ONLY = ("daemon.work_dir", "daemon.pid_file", "daemon.control_socket", "daemon.id",
                "plugins.", "reporters.", "prometheus.")
STATUS_LINE_EVERY = 10.0
# A restart into a new pyz flushes the outbox for at most this long: what is left stays durable in it.
EXEC_CLOSE_SECONDS = 5.0
# How long a stop waits for plugins to take the Agent events still queued for them.
EVENTS_FLUSH_SECONDS = 2.0
# A service thread that dies this soon after the daemon started means the service cannot start:
# the daemon exits non-zero with the service's D-code instead of running without it.
START_GRACE_SECONDS = 10.0
SERVICE_CHECK_SECONDS = 5.0  # threads that end without raising are found by this check
# Later deaths restart the service, at most this many times in the window; then it stays stopped
# and `daemon status` (services_failed) and the status line say so.
SERVICE_RESTARTS = 3
SERVICE_RESTART_WINDOW = 600.0


class Service(Protocol):
    """A long-lived module the engine starts and stops."""

    name: str

    def start(self) -> None: ...

    def stop(self, deadline: float) -> None:
        """Stop by the monotonic `deadline`; never stops the Agent process."""

    def reload(self, cfg: Config) -> None: ...

    def status(self) -> dict[str, Any]: ...


class Engine:
    """Owns the daemon's life: start order, scheduling, reload, shutdown."""

    def __init__(self, cfg: Config, plugins: Plugins, *, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.node_id = ""
        self.runner = CollectorRunner()
        self.scheduler = Scheduler()
        self.work = WorkTracker()
        self.latest: dict[str, Metrics] = {}
        self.services: list[Service] = []
        # The services, each None while it is off; peers reach each other only through the typed
        # getters the engine hands them (daemon_app.host), never through these attributes.
        self.agent: AgentSupervisor | None = None  # when agent.enabled
        self.manager: ManagerLink | None = None  # when manager.address is set
        self.updates: UpdateService | None = None  # always
        self.remote_config: RemoteConfigService | None = None  # when remote_config.enabled
        self.last_report: float = 0.0
        self.reports_built = 0
        self._stuck_reporters: dict[str, threading.Thread] = {}
        self.state = "starting"
        # Manager commands by type ("update", "rollback", "agent", ...): handler(command) must return
        # quickly (long work goes to its own thread, inside `engine.busy(...)`).
        self.command_handlers: dict[str, CommandHandler] = {}
        # Extra top-level sections of `daemon status` (e.g. "update"), each a callable -> dict | None.
        self.status_providers: dict[str, StatusProvider] = {}
        self.control = ControlServer(cfg.daemon.control_socket, self.call)
        self.control.starting = True  # until every service registered its commands (end of start)
        self.control.register("status", lambda args: self.status(), on_engine_thread=False)
        self.control.register("reload", lambda args: self.reload("control socket"), timeout=120.0)
        self._mailbox = Mailbox(lambda: EngineStopping("the daemon is stopping; request refused"))
        self._stop_reason = ""
        self._lock = InstanceLock(cfg.daemon.work_dir, cfg.daemon.pid_file)
        self._old_signals: dict[int, Any] = {}
        self._deaths = ThreadDeaths(lambda: self.run_soon(self._check_services))
        self._restarts: dict[str, list[float]] = {}
        self.services_failed: dict[str, str] = {}  # service name -> its D-coded error
        self.fatal: DaemonError | None = None  # why run_forever ended non-zero
        self.exit_code = 0

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Seed §3.1.1 steps 4-8: modules, Agent, Manager connection, registration, timed loops."""
        self._mailbox.bind()
        work_dir = self.cfg.daemon.work_dir
        try:
            fsutil.private_dir(work_dir, 0o750, tighten=False)
        except fsutil.UnsafePathError as exc:
            raise ConfigValidateError([f"daemon.work_dir: {exc}"]) from None
        except OSError as exc:
            raise ConfigValidateError([f"daemon.work_dir: cannot create {work_dir}: {exc.strerror}"]) \
                from None
        self._lock.acquire()
        try:
            self._install_signals()  # before any service: a SIGTERM during start is queued, not fatal
            self.node_id = load_or_create_node_id(work_dir, self.cfg.daemon.id)
            log.info("daemon %s starting, node %s, config %s", __version__, self.node_id, self.cfg.source)
            self._check_previous_run()
            # Before any service thread exists: the control socket's umask is process-wide.
            self.control.start()
            self._deaths.install()
            for service in self._build_services(self.cfg):
                self._start_service(service)
            self._schedule()
        except BaseException:
            self._abort_start()
            raise
        self.state = "running"
        self.control.starting = False

    def _build_services(self, cfg: Config) -> list[Service]:
        """In start order: Agent first (it must not wait on the network), then the Manager link, then
        updates (recovering an interrupted update needs the Agent and reports to the Manager)."""
        services: list[Service] = []
        if cfg.agent.enabled and self.agent is None:
            with _starting("agent"):
                from daemon_app.agent.supervisor import AgentSupervisor

                self.agent = AgentSupervisor(cfg, self)
            services.append(self.agent)
        if cfg.manager.address and self.manager is None:
            with _starting("manager"):
                from daemon_app.comm.link import ManagerLink

                self.manager = ManagerLink(cfg, self, agent=lambda: self.agent,
                                           config_hashes=lambda: self.remote_config)
            self.plugins.register(self.manager, "manager-reporter", version=__version__, source="builtin")
            services.append(self.manager)
        if self.updates is None:
            with _starting("update"):
                from daemon_app.update.service import UpdateService

                self.updates = UpdateService(self, agent=lambda: self.agent, link=lambda: self.manager,
                                             config_pushes=lambda: self.remote_config)
            services.append(self.updates)
        if cfg.remote_config.enabled and self.remote_config is None:
            with _starting("remote_config"):
                from daemon_app.rconfig.service import RemoteConfigService

                self.remote_config = RemoteConfigService(self, agent=lambda: self.agent,
                                                         link=lambda: self.manager,
                                                         updates=lambda: self.updates)
            services.append(self.remote_config)
        return services

    def _start_service(self, service: Service) -> None:
        with _starting(service.name):
            service.start()
        self.services.append(service)

    def _detach(self, service: Service) -> None:
        """Forget a stopped service, so that _build_services makes a new one when it is wanted."""
        if service is self.agent:
            self.agent = None
        elif service is self.manager:
            self.plugins.unregister("manager-reporter")
            self.manager = None
        elif service is self.updates:
            self.updates = None
        elif service is self.remote_config:
            self.remote_config = None

    def _check_services(self) -> None:
        """A service whose thread died: at start the daemon fails; later the service is restarted,
        and after SERVICE_RESTARTS in the window it stays stopped and is reported. Never silent."""
        if self.state not in ("starting", "running") or self.fatal is not None:
            return
        now = time.monotonic()
        for service in list(self.services):
            dead = dead_threads(service)
            if not dead:
                continue
            why = "; ".join(self._deaths.why(t) for t in dead)
            if now - self._started_mono < START_GRACE_SECONDS and service.name not in self._restarts:
                self.fatal = service_error(service.name, f"cannot start: {why}")
                log.error("%s; the daemon stops (exit 1)", self.fatal, extra={"code": self.fatal.code})
                self.exit_code = 1
                self.post("stop", f"{service.name} could not start")
                return
            error = service_error(service.name, f"stopped: {why}")
            recent = [t for t in self._restarts.get(service.name, []) if now - t < SERVICE_RESTART_WINDOW]
            self._restarts[service.name] = recent
            deadline = now + min(5.0, self.cfg.daemon.shutdown_timeout)
            self._drop_service(service, deadline)
            self._detach(service)
            if len(recent) >= SERVICE_RESTARTS:
                self.services_failed[service.name] = str(error)
                log.error("%s; restarted %d times in %gs: left stopped (a reload or a restart tries "
                          "again)", error, len(recent), SERVICE_RESTART_WINDOW, extra={"code": error.code})
                self._notify_status()
                continue
            recent.append(now)
            log.error("%s; restarting it (%d of %d)", error, len(recent), SERVICE_RESTARTS,
                      extra={"code": error.code})
            try:
                for fresh in self._build_services(self.cfg):
                    self._start_service(fresh)
            except DaemonError as exc:
                self.services_failed[service.name] = str(exc)
                log.error("%s", exc, extra={"code": exc.code})

    def _abort_start(self) -> None:
        deadline = time.monotonic() + min(5.0, self.cfg.daemon.shutdown_timeout)
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop(deadline)
        self.services.clear()
        self._deaths.uninstall()
        self.control.stop()
        self._lock.release()
        self._restore_signals()

    def _state_path(self) -> str:
        return os.path.join(self.cfg.daemon.work_dir, "daemon.state.json")

    def _check_previous_run(self) -> None:
        """Say so when the last daemon did not stop cleanly (crash, kill -9, power loss)."""
        try:
            previous = fsutil.read_json(self._state_path())
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and not previous.get("clean", True):
            log.warning("the previous daemon (pid %s, started %s) did not shut down cleanly",
                        previous.get("pid"), previous.get("started_at"))
        self._save_state(clean=False)

    def _save_state(self, *, clean: bool) -> None:
        state = {"pid": os.getpid(), "version": __version__, "started_at": rfc3339(self.started_at),
                 "stopped_at": rfc3339() if clean else None, "clean": clean,
                 "reports_built": self.reports_built}
        try:
            fsutil.write_atomic(self._state_path(), (json.dumps(state) + "\n").encode(), 0o644)
        except OSError as exc:
            log.warning("cannot save %s: %s", self._state_path(), exc)

    def _schedule(self) -> None:
        for name, _fn in self.plugins.implementations("collect"):
            ccfg = self.cfg.collector(name)
            if not ccfg.enabled:
                self.scheduler.cancel(f"collect:{name}")
                continue
            self.scheduler.every(f"collect:{name}", ccfg.interval, lambda n=name: self.collect_named([n]))
        # The first report waits for the first collections so it carries data.
        report_every = self.cfg.daemon.report_interval
        self.scheduler.every("report", report_every, self.build_and_report,
                             first=min(report_every, 0.2), jitter=self.cfg.manager.jitter)
        ping = watchdog_interval()
        if self.notifier.enabled and ping:
            # Pinged from this loop on purpose: a stuck loop stops pinging and systemd restarts us.
            self.scheduler.every("watchdog", ping, self.notifier.watchdog)
        if self.notifier.enabled:
            self.scheduler.every("status-line", STATUS_LINE_EVERY, self._notify_status,
                                 first=STATUS_LINE_EVERY)
        self.scheduler.every("service-check", SERVICE_CHECK_SECONDS, self._check_services,
                             first=min(1.0, SERVICE_CHECK_SECONDS))

    # --- loops ---------------------------------------------------------------------------------

    def collect(self, which: list[tuple[str, Callable[..., Any]]] | None = None) -> list[Any]:
        """Run collectors (all enabled ones by default) in parallel, each bounded by its timeout."""
        which = which if which is not None else self.plugins.implementations("collect")
        calls = enabled_calls(self.cfg, which)
        with self.busy("collect " + ",".join(c[0] for c in calls)):
            outcomes = self.runner.run(calls)
        for outcome in outcomes:
            for metrics in outcome.metrics:
                self.latest[metrics.name] = metrics
        return outcomes

    def collect_named(self, names: list[str]) -> list[Any]:
        wanted = set(names)
        return self.collect([(n, f) for n, f in self.plugins.implementations("collect") if n in wanted])

    def build_report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "node_id": self.node_id,
            "timestamp": rfc3339(),
            "metrics": {name: m.to_dict() for name, m in self.latest.items()},
            "agent_status": self.agent.agent_status() if self.agent is not None else None,
            "logs": logs.recent_problems.drain(),
        }
        return report

    def build_and_report(self) -> None:
        with self.busy("report"):
            report = self.build_report()
            self._call_reporters(report)
        self.last_report = time.time()
        self.reports_built += 1
        log.debug("report %d handed to the reporters: %d metric groups, %d log entries",
                  self.reports_built, len(report["metrics"]), len(report["logs"]))

    def _call_reporters(self, report: dict[str, Any]) -> None:
        """Every `report` hook in its own thread, all bounded by daemon.report_timeout: a hung
        reporter is left behind (logged D5001, skipped while still stuck), the others go on, and
        shutdown still waits for it as work in flight."""
        deadline = time.monotonic() + self.cfg.daemon.report_timeout
        started: list[tuple[str, threading.Thread]] = []
        for name, fn in self.plugins.implementations("report"):
            stuck = self._stuck_reporters.get(name)
            if stuck is not None and stuck.is_alive():
                log.error("D5001 reporter %s skipped: still busy with an earlier report", name,
                          extra={"code": "D5001", "plugin": name})
                continue
            token = self.work.begin(f"report {name}")
            thread = threading.Thread(target=self._run_reporter, args=(name, fn, report, token),
                                      name=f"report:{name}", daemon=True)
            thread.start()
            started.append((name, thread))
        for name, thread in started:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._stuck_reporters[name] = thread
                log.error("D5001 reporter %s took longer than %gs; the round goes on without it", name,
                          self.cfg.daemon.report_timeout, extra={"code": "D5001", "plugin": name})

    def _run_reporter(self, name: str, fn: Callable[..., Any], report: dict[str, Any], token: int) -> None:
        try:
            fn(report=report)
        except Exception as exc:
            log.error("D5001 reporter %s raised: %s: %s", name, type(exc).__name__, exc,
                      extra={"code": "D5001", "plugin": name})
            log.debug("reporter %s raised here:", name, exc_info=exc, extra={"plugin": name})
        finally:
            self.work.end(token)

    def _run_due(self) -> None:
        due = self.scheduler.run_due()
        # Collectors due together run in one parallel round, before a report due at the same time.
        batch = [t.name.split(":", 1)[1] for t in due if t.name.startswith("collect:")]
        if batch:
            self._safe("collect", lambda: self.collect_named(batch))
        for task in due:
            if not task.name.startswith("collect:"):
                self._safe(task.name, task.fn)

    # --- work in flight, commands from signals, the control socket and services ----------------

    @contextlib.contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Mark work in flight; shutdown waits for it (up to daemon.shutdown_timeout).

        Raises EngineStopping when the daemon is already stopping: start no new work then.
        """
        token = self.work.begin(what)
        try:
            yield
        finally:
            self.work.end(token)

    def post(self, command: str, why: str = "") -> None:
        """Thread- and signal-safe: ask the engine's loop to "stop" or "reload", saying why (work
        for the engine's thread goes through `run_soon`)."""
        if command == "stop":
            self._mailbox.post(lambda: self._request_stop(why))
        elif command == "reload":
            self._mailbox.post(lambda: self._safe("reload", lambda: self.reload(why)))
        else:
            raise ValueError(f"unknown engine command {command!r}")

    def _request_stop(self, why: str) -> None:
        if not self._stop_reason:
            self._stop_reason = why or "request"

    # --- Host (daemon_app.host): what services may ask of the engine -----------------------------

    def adopt_node_id(self, node_id: str) -> None:
        self.node_id = node_id

    def run_soon(self, fn: Callable[[], Any]) -> None:
        self._mailbox.post(lambda: self._safe("call", fn))

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run `fn` on the engine's thread and return its result (or raise its exception)."""
        if not self._mailbox.on_owner and self.work.closed:
            raise EngineStopping("the daemon is stopping; request refused")
        return self._mailbox.call(fn, timeout)

    def every(self, name: str, interval: float, fn: Callable[[], None], *, first: float = 0.0,
              jitter: float = 0.0) -> None:
        self.scheduler.every(name, interval, fn, first=first, jitter=jitter)

    def cancel(self, name: str) -> None:
        self.scheduler.cancel(name)

    def on_command(self, kind: str, handler: CommandHandler | None) -> None:
        if handler is None:
            self.command_handlers.pop(kind, None)
        else:
            self.command_handlers[kind] = handler

    def on_control(self, name: str, handler: ControlHandler, *, on_engine_thread: bool = True,
                   timeout: float = 30.0) -> None:
        self.control.register(name, handler, on_engine_thread=on_engine_thread, timeout=timeout)

    def begin_work(self, what: str) -> int:
        return self.work.begin(what)

    def end_work(self, token: int) -> None:
        self.work.end(token)

    def dispatch_command(self, command: dict[str, Any]) -> bool | concurrent.futures.Future[Any]:
        """Route a Manager command ({"id", "type", ...}) to its handler; False if none takes it, the
        handler's future when it returns one (the outcome of work it started), else True."""
        kind = command.get("type", "")
        handler = self.command_handlers.get(kind)
        if handler is None:
            log.warning("no handler for command type %r (id %s)", kind, command.get("id"))
            return False
        try:
            with self.busy(f"command {kind} {command.get('id', '')}".strip()):
                outcome = handler(command)
        except EngineStopping:
            log.warning("command %s (id %s) refused: the daemon is stopping", kind, command.get("id"))
            return False
        return outcome if isinstance(outcome, concurrent.futures.Future) else True

    def add_status(self, name: str, provider: StatusProvider | None) -> None:
        """Show `provider()` under `name` in `daemon status` (e.g. the updater under "update")."""
        if provider is None:
            self.status_providers.pop(name, None)
        else:
            self.status_providers[name] = provider

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        handlers = {signal.SIGTERM: lambda *_: self.post("stop", "SIGTERM"),
                    signal.SIGINT: lambda *_: self.post("stop", "SIGINT"),
                    signal.SIGHUP: lambda *_: self.post("reload", "SIGHUP")}
        for signum, handler in handlers.items():
            self._old_signals[signum] = signal.signal(signum, handler)

    def _restore_signals(self) -> None:
        for signum, handler in self._old_signals.items():
            signal.signal(signum, handler)
        self._old_signals.clear()

    def run_forever(self) -> int:
        """Seed §3.1.1 step 9: wait for work or a signal, then shut down. Returns the exit code."""
        self.notifier.ready(self.status_line())
        log.info("daemon ready")
        while True:
            due = self.scheduler.next_due()
            letter = self._mailbox.take(None if due is None else due - time.monotonic())
            if letter is not None:
                letter()
            if self._stop_reason:
                log.info("stopping on %s", self._stop_reason)
                break
            self._run_due()
        return self.shutdown()

    def _safe(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("engine task %s failed", what)

    # --- reload --------------------------------------------------------------------------------

    def reload(self, why: str = "") -> dict[str, Any]:
        """Re-read the config file. A valid one takes effect now; an invalid one is refused, its
        problems logged, and the running configuration stays in force."""
        self.notifier.reloading()
        try:
            return self._reload(why or "request")
        finally:
            self.notifier.ready(self.status_line())

    def _reload(self, why: str) -> dict[str, Any]:
        from daemon_app import config as config_mod

        source = self.cfg.source if self.cfg.source != "<defaults>" else None
        result: dict[str, Any] = {"reloaded": False, "config": self.cfg.source, "errors": [],
                                  "changed": [], "restart_required": []}
        try:
            cfg = config_mod.load(source)
        except ConfigValidateError as exc:
            result["errors"] = [f"{exc.code} config: {p}" for p in exc.problems]
            refused: DaemonError = exc
        except DaemonError as exc:
            result["errors"] = [str(exc)]
            refused = exc
        if result["errors"]:
            for line in result["errors"]:
                log.error(line, extra={"code": refused.code})
            log.error("reload (%s) refused: the running configuration stays in force", why,
                      extra={"code": refused.code})
            return result
        old_flat, new_flat = _flatten(self.cfg.to_yaml_dict()), _flatten(cfg.to_yaml_dict())
        changed = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))
        restart = [k for k in changed if k.startswith(RESTART_ONLY)]
        old = self.cfg
        self.cfg = cfg
        d_old, d_new = old.daemon, cfg.daemon
        if (d_old.log_file, d_old.log_max_bytes, d_old.log_backups) != (
                d_new.log_file, d_new.log_max_bytes, d_new.log_backups):
            logs.setup(d_new.log_level, d_new.log_file, d_new.log_max_bytes, d_new.log_backups)
        else:
            logs.set_level(d_new.log_level)
        self._reload_services(cfg)
        self._schedule()
        result.update(reloaded=True, changed=changed, restart_required=restart)
        log.info("configuration reloaded (%s): %s", why, ", ".join(changed) or "no changes")
        if restart:
            log.warning("these settings take effect at the next restart: %s", ", ".join(restart))
        return result

    def _reload_services(self, cfg: Config) -> None:
        """Services follow the new config; the Agent supervisor or Manager link come and go with
        agent.enabled and manager.address (stopping the supervisor never stops the Agent)."""
        deadline = time.monotonic() + min(5.0, cfg.daemon.shutdown_timeout)
        if self.agent is not None and not cfg.agent.enabled:
            self._drop_service(self.agent, deadline)
            self._detach(self.agent)
        if self.manager is not None and not cfg.manager.address:
            self._drop_service(self.manager, deadline)
            self._detach(self.manager)
        if self.remote_config is not None and not cfg.remote_config.enabled:
            self._drop_service(self.remote_config, deadline)
            self._detach(self.remote_config)
        for service in list(self.services):
            try:
                service.reload(cfg)
            except Exception:
                log.exception("reloading %s failed", service.name)
        self.services_failed.clear()  # a reload tries every wanted service again
        for service in self._build_services(cfg):
            try:
                self._start_service(service)
            except Exception:
                log.exception("starting %s after reload failed", service.name)

    def _drop_service(self, service: Service, deadline: float) -> None:
        self.services.remove(service)
        try:
            service.stop(deadline)
        except Exception:
            log.exception("stopping %s failed", service.name)

    # --- stop ----------------------------------------------------------------------------------

    def shutdown(self) -> int:
        """Seed §3.1.2: stop taking work, wait for work in flight, disconnect (the Manager link
        flushes its outbox by the deadline), save state, close logs. The Agent keeps running."""
        self.state = "stopping"
        self._close(self.cfg.daemon.shutdown_timeout,
                    lambda busy: self.notifier.stopping("stopping: " + (busy or "nothing in flight")))
        self.state = "stopped"
        log.info("daemon stopped" if not self.exit_code else f"daemon stopped (exit {self.exit_code})")
        self.notifier.close()
        logs.close()
        return self.exit_code

    def _close(self, timeout: float, announce: Callable[[str], None]) -> None:
        """Everything shutdown and a restart into a new pyz share: no new work, wait for work in
        flight, stop the services (never the Agent), close the control socket, release the lock."""
        deadline = time.monotonic() + timeout
        self.work.close()
        self.scheduler.clear()
        self._refuse_queued()
        announce(", ".join(self.work.active()))
        ping = watchdog_interval()
        tick = self.notifier.watchdog if ping else (lambda: None)
        abandoned = self.work.wait_idle(deadline, tick, ping or 1.0)
        if abandoned:
            what = "restart" if self.state == "restarting" else "shutdown"
            log.warning("%s timeout (%gs): abandoning %s", what, timeout, ", ".join(abandoned))
        for service in reversed(self.services):
            try:
                service.stop(deadline)
            except Exception:
                log.exception("stopping %s failed", service.name)
        self._deaths.uninstall()
        self.control.stop()
        self._refuse_queued()
        # Agent events still queued reach the plugins, unless one of them holds the thread.
        self.plugins.events.flush(min(EVENTS_FLUSH_SECONDS, max(0.0, deadline - time.monotonic())))
        self._save_state(clean=not abandoned)
        self._lock.release()
        self._restore_signals()

    def restart_into(self, argv: list[str], release: int | None = None) -> None:
        """Replace this process with `argv` (the new daemon.pyz, same arguments, same pid), after
        closing like a shutdown does but without STOPPING=1: systemd keeps tracking the pid and the
        new daemon sends READY=1 again. Called from an update thread; `release` is that thread's
        work token, so the close does not wait for the caller. Returns only by raising
        EngineStopping when the daemon is already stopping (nothing was closed then)."""
        if self.work.closed:
            raise EngineStopping("the daemon is stopping; not restarting into a new pyz")
        self._mailbox.submit(lambda: self._exec(argv, release)).result()

    def _exec(self, argv: list[str], release: int | None) -> None:
        self.state = "restarting"
        log.info("restarting into %s", argv[1] if len(argv) > 1 else argv[0])
        if release is not None:
            self.work.end(release)
        self._close(min(self.cfg.daemon.shutdown_timeout, EXEC_CLOSE_SECONDS),
                    lambda in_flight: self.notifier.status(f"restarting into {argv[1:2] or argv}"))
        self.notifier.close()
        logs.close()
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            # Half closed, nothing to go back to: exit, and let the self-update watcher (which sees
            # this pid die) restore the previous pyz and start it.
            os.write(2, f"D4003 self-update: cannot exec {argv}: {exc}\n".encode())
            os._exit(1)

    def _refuse_queued(self) -> None:
        """Requests queued for the loop that will never run get an answer instead of a timeout."""
        self._mailbox.close()

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `daemon status` shows; safe to call from any thread. Top-level keys are stable."""
        manager, agent = self.manager, self.agent  # a reload may swap them while we read
        agent_section = None
        if agent is not None:
            agent_section = _section(lambda: {**agent.status(), **agent.agent_status()})
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state,
            "started_at": rfc3339(self.started_at),
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "node_id": self.node_id,
            "config": self.cfg.source,
            "manager": _section(manager.status) if manager is not None else None,
            "agent": agent_section,
            "collectors": {
                name: {"last_run": rfc3339(o.started), "duration_ms": round(o.duration * 1000, 3),
                       "ok": o.ok, "error": o.error}
                for name, o in list(self.runner.last.items())
            },
            "plugins": self.plugins.describe(),
            "plugin_events": self.plugins.events.status(),
            "update": None,
            "last_report": rfc3339(self.last_report) if self.last_report else None,
            "reports_built": self.reports_built,
            "in_flight": self.work.active(),
            "threads": threads.snapshot(),
            "services_failed": dict(self.services_failed),
        }
        for name, provider in list(self.status_providers.items()):
            if out.get(name) is None:
                out[name] = _section(provider)
        return out

    def status_line(self) -> str:
        """One short line for systemd's STATUS=: what a glance at `systemctl status` should tell."""
        parts = [self.state]
        manager, agent = self.manager, self.agent
        if manager is not None:
            link = _snapshot(manager.snapshot)
            parts.append(f"manager {link.state if link else '?'}")
            parts.append(f"outbox {link.outbox_depth if link else '?'}")
        else:
            parts.append("stand-alone")
        if agent is not None:
            snap = _snapshot(agent.snapshot)
            parts.append(f"agent {snap.state if snap else '?'}")
        parts.append(f"reports {self.reports_built}")
        if self.services_failed:
            parts.append("FAILED " + ", ".join(sorted(self.services_failed)))
        return "; ".join(parts)

    def _notify_status(self) -> None:
        self.notifier.status(self.status_line())


@contextlib.contextmanager
def _starting(name: str) -> Iterator[None]:
    """Whatever makes or starts service `name` fail becomes its D-coded error (an ImportError
    deep inside is still "D2001 manager cannot start: ImportError: ...", never a bare traceback)."""
    try:
        yield
    except DaemonError:
        raise
    except Exception as exc:
        raise service_error(name, "cannot start: " + describe(exc)) from exc


def _section(fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
    """A service's status; a failing one shows its error instead of breaking `daemon status`."""
    try:
        return fn()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _snapshot(fn: Callable[[], T]) -> T | None:
    """A service's snapshot for the status line; None (shown as "?") when it cannot say."""
    try:
        return fn()
    except Exception:
        return None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key != "labels":
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out
