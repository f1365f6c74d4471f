"""The engine: start order (seed §3.1.1), the timed loops (seed §2.3), and graceful shutdown (§3.1.2).

One thread (the main one) owns the schedule. Signal handlers only enqueue; the loop handles
what they asked for. Long-lived modules (Agent supervisor, Manager link, control socket) are
`Service`s: the engine starts them in order, asks them for status, and stops them in reverse.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import os
import queue
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon_app import __version__, logs
from daemon_app.collection import CollectorRunner
from daemon_app.config import Config
from daemon_app.errors import DaemonError
from daemon_app.metrics import Metrics, rfc3339
from daemon_app.plugins import Plugins

log = logging.getLogger(__name__)


class AlreadyRunning(DaemonError):
    code = "D1001"


class Service(Protocol):
    """A long-lived module the engine starts and stops."""

    name: str

    def start(self) -> None: ...

    def stop(self, deadline: float) -> None:
        """Stop by the monotonic `deadline`; never stops the Agent process."""

    def reload(self, cfg: Config) -> None: ...

    def status(self) -> dict[str, Any]: ...


def load_or_create_node_id(work_dir: str, configured: str = "") -> str:
    """`daemon.id` if set, else the id generated on first start and kept in <work_dir>/node_id."""
    if configured:
        return configured
    path = os.path.join(work_dir, "node_id")
    try:
        with open(path, encoding="utf-8") as fh:
            node_id = fh.read().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    node_id = str(uuid.uuid4())
    write_atomic(path, node_id + "\n")
    return node_id


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Same-directory temp file, fsync, rename: a reader sees the old or the new file, never half."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class InstanceLock:
    """flock on <work_dir>/daemon.lock and on the pid file: a second daemon refuses to start."""

    def __init__(self, work_dir: str, pid_file: str) -> None:
        self.paths = [os.path.join(work_dir, "daemon.lock")]
        if pid_file:
            self.paths.append(pid_file)
        self._fds: list[int] = []

    def acquire(self) -> None:
        for path in self.paths:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                self.release()
                raise AlreadyRunning(
                    f"another daemon (pid {holder}) already runs with {path}; stop it first"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.set_inheritable(fd, False)
            self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


@dataclass(order=True)
class _Task:
    due: float
    seq: int
    name: str = field(compare=False)
    interval: float = field(compare=False)
    fn: Callable[[], None] = field(compare=False)
    jitter: float = field(compare=False, default=0.0)
    cancelled: bool = field(compare=False, default=False)


class Scheduler:
    """A heap of periodic tasks run on the engine's thread, each on its own monotonic interval."""

    def __init__(self) -> None:
        self._heap: list[_Task] = []
        self._seq = 0
        self.tasks: dict[str, _Task] = {}

    def every(self, name: str, interval: float, fn: Callable[[], None], *, first: float = 0.0,
              jitter: float = 0.0) -> None:
        self.cancel(name)
        self._seq += 1
        task = _Task(time.monotonic() + first, self._seq, name, interval, fn, jitter)
        self.tasks[name] = task
        heapq.heappush(self._heap, task)

    def cancel(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancelled = True

    def next_due(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].due if self._heap else None

    def run_due(self) -> list[_Task]:
        now = time.monotonic()
        ran = []
        while self._heap and (self._heap[0].cancelled or self._heap[0].due <= now):
            task = heapq.heappop(self._heap)
            if task.cancelled:
                continue
            ran.append(task)
        for task in ran:
            # Reschedule from the planned time so intervals do not drift; skip missed beats.
            spread = task.interval * task.jitter * random.random()
            task.due = max(task.due + task.interval, now) + spread
            heapq.heappush(self._heap, task)
        return ran


class Engine:
    """Owns the daemon's life: start order, scheduling, reload, shutdown."""

    def __init__(self, cfg: Config, plugins: Plugins) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.started_at = time.time()
        self.node_id = ""
        self.runner = CollectorRunner()
        self.scheduler = Scheduler()
        self.latest: dict[str, Metrics] = {}
        self.services: list[Service] = []
        self.agent: Any = None  # daemon_app.agent.supervisor.AgentSupervisor when enabled
        self.manager: Any = None  # daemon_app.comm.link.ManagerLink when manager.address is set
        self.last_report: float = 0.0
        self.reports_built = 0
        self.state = "starting"
        # Manager commands by type ("update", "rollback", "agent", ...): handler(command, progress)
        # must return quickly (long work goes to its own thread). Services register their own.
        self.command_handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._lock = InstanceLock(cfg.daemon.work_dir, cfg.daemon.pid_file)
        self._stopping = False

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Seed §3.1.1 steps 4-8: modules, Agent, Manager connection, registration, timed loops."""
        os.makedirs(self.cfg.daemon.work_dir, mode=0o750, exist_ok=True)
        self._lock.acquire()
        self.node_id = load_or_create_node_id(self.cfg.daemon.work_dir, self.cfg.daemon.id)
        log.info("daemon %s starting, node %s, config %s", __version__, self.node_id, self.cfg.source)
        for service in self._build_services():
            service.start()
            self.services.append(service)
        self._schedule()
        self.state = "running"

    def _build_services(self) -> list[Service]:
        """In start order: Agent first (it must not wait on the network), then the Manager link."""
        services: list[Service] = []
        if self.cfg.agent.enabled:
            from daemon_app.agent.supervisor import AgentSupervisor

            self.agent = AgentSupervisor(self.cfg, self)
            services.append(self.agent)
        if self.cfg.manager.address:
            from daemon_app.comm.link import ManagerLink

            self.manager = ManagerLink(self.cfg, self)
            self.plugins.register(self.manager, "manager-reporter", version=__version__, source="builtin")
            services.append(self.manager)
        return services

    def _schedule(self) -> None:
        for name, fn in self.plugins.implementations("collect"):
            ccfg = self.cfg.collector(name)
            if not ccfg.enabled:
                self.scheduler.cancel(f"collect:{name}")
                continue
            self.scheduler.every(f"collect:{name}", ccfg.interval,
                                 lambda n=name, f=fn: self.collect([(n, f)]))
        # The first report waits one collection so it carries data.
        report_every = self.cfg.daemon.report_interval
        self.scheduler.every("report", report_every, self.build_and_report,
                             first=min(report_every, 0.2), jitter=self.cfg.manager.jitter)

    # --- loops ---------------------------------------------------------------------------------

    def collect(self, which: list[tuple[str, Callable[..., Any]]] | None = None) -> list[Any]:
        which = which if which is not None else self.plugins.implementations("collect")
        calls = []
        for name, fn in which:
            ccfg = self.cfg.collector(name)
            if ccfg.enabled:
                calls.append((name, fn, ccfg, ccfg.timeout))
        outcomes = self.runner.run(calls)
        for outcome in outcomes:
            for metrics in outcome.metrics:
                self.latest[metrics.name] = metrics
        return outcomes

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
        report = self.build_report()
        self.plugins.call_each("report", report=report)
        self.last_report = time.time()
        self.reports_built += 1

    # --- commands from signals, the control socket and services --------------------------------

    def post(self, command: str, arg: Any = None) -> None:
        """Thread- and signal-safe: ask the engine's loop to do something."""
        self._commands.put((command, arg))

    def dispatch_command(self, command: dict[str, Any]) -> bool:
        """Route a Manager command ({"id", "type", ...}) to its handler; False if none knows it."""
        handler = self.command_handlers.get(command.get("type", ""))
        if handler is None:
            log.warning("no handler for command type %r (id %s)", command.get("type"), command.get("id"))
            return False
        handler(command)
        return True

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.post("stop", "SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.post("stop", "SIGINT"))
        signal.signal(signal.SIGHUP, lambda *_: self.post("reload", "SIGHUP"))

    def run_forever(self) -> int:
        """Seed §3.1.1 step 9: wait for work or a signal. Returns the process exit code."""
        self._install_signals()
        exit_code = 0
        while not self._stopping:
            due = self.scheduler.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                command, arg = self._commands.get(timeout=timeout)
            except queue.Empty:
                command, arg = "", None
            if command == "stop":
                log.info("stopping on %s", arg)
                self._stopping = True
                break
            if command == "reload":
                self.reload(arg)
            elif command == "call":
                self._safe(arg)
            for task in self.scheduler.run_due():
                self._safe(task.fn)
        self.shutdown()
        return exit_code

    def _safe(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("engine task failed")

    def reload(self, why: str = "") -> None:
        """Re-read the config; keep the old one in force when the new one is invalid."""
        from daemon_app import config as config_mod

        try:
            cfg = config_mod.load(self.cfg.source if self.cfg.source != "<defaults>" else None)
        except DaemonError as exc:
            log.error("reload refused, the running configuration stays in force: %s", exc,
                      extra={"code": exc.code})
            return
        self.cfg = cfg
        logs.setup(cfg.daemon.log_level, cfg.daemon.log_file, cfg.daemon.log_max_bytes,
                   cfg.daemon.log_backups)
        for service in self.services:
            service.reload(cfg)
        self._schedule()
        log.info("configuration reloaded (%s)", why or "request")

    # --- stop ----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Seed §3.1.2: stop taking work, finish in-flight work, flush, save state. Agent keeps running."""
        self.state = "stopping"
        deadline = time.monotonic() + self.cfg.daemon.shutdown_timeout
        for service in reversed(self.services):
            try:
                service.stop(deadline)
            except Exception:
                log.exception("stopping %s failed", service.name)
        self._lock.release()
        self.state = "stopped"
        log.info("daemon stopped")

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state,
            "uptime_s": round(time.time() - self.started_at, 1),
            "node_id": self.node_id,
            "config": self.cfg.source,
            "collectors": {
                name: {"last_run": rfc3339(o.started), "duration_ms": round(o.duration * 1000, 3),
                       "ok": o.ok, "error": o.error}
                for name, o in self.runner.last.items()
            },
            "last_report": rfc3339(self.last_report) if self.last_report else None,
            "plugins": [p["name"] for p in self.plugins.describe()],
            "services": {s.name: s.status() for s in self.services},
        }
