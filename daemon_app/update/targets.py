"""What an update replaces, and how it proves the new version healthy: one small interface per component.

The Updater does everything that is the same for every component (verify, back up, journal, swap,
floor); a Target only says where its file is and how to stop, start and check what runs from it.
`AgentTarget` drives the supervisor; `DaemonTarget` (selfupdate.py) replaces the running daemon.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon_app.errors import DaemonError
from daemon_app.update.errors import HealthCheckError, RollbackFailedError

log = logging.getLogger(__name__)


@dataclass
class InstallContext:
    """What the Updater hands a Target: the verified package and the ways to install or undo it."""

    component: str
    version: str
    old_version: str | None
    sha256: str
    backup_path: str | None
    verify_timeout: float
    swap: Callable[[], None]
    restore: Callable[[], None]
    mark_verifying: Callable[[], None]
    progress: Callable[..., None]
    extra: dict[str, Any] = field(default_factory=dict)


class Supervisor(Protocol):
    """The part of the Agent supervisor an update needs."""

    def stop_agent(self, timeout: float | None = None) -> None: ...

    def start_agent(self) -> None: ...

    def wait_for_heartbeat(self, version: str, timeout: float) -> bool: ...

    def current_version(self) -> str: ...

    def emit(self, event_type: str, **fields: Any) -> None: ...


class Target(Protocol):
    component: str
    path: str

    def current_version(self) -> str | None:
        """The version running or installed now; None when unknown."""

    def apply(self, ctx: InstallContext) -> str:
        """Swap in the package and prove it healthy; return a message. On failure restore the backup
        and raise HealthCheckError (rolled back) or RollbackFailedError."""

    def resume(self, ctx: InstallContext) -> bool | None:
        """After a crash between swap and success: True if the new version is healthy, False to
        restore, None while something else (the self-update watcher) still decides."""

    def reinstall(self, install: Callable[[], None], version: str | None) -> bool:
        """Run `install` (put a file in place) with whatever stop/start the component needs; True if
        `version` then runs healthy."""

    def abandon(self) -> str | None:
        """After a crash before the swap (the file on disk is the old one): drop what the target set
        up for the swap. Returns why, if something other than the Updater had already undone it."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def holds(path: str, sha256: object) -> bool:
    """Does `path` hold the file with this SHA-256? (False when it is missing or unreadable.)"""
    try:
        return isinstance(sha256, str) and bool(sha256) and file_sha256(path) == sha256
    except OSError:
        return False


class FileTarget:
    """A plain file: installed means the right bytes are in place (no process to restart)."""

    def __init__(self, component: str, path: str, installed: Callable[[], str | None]) -> None:
        self.component = component
        self.path = path
        self._installed = installed

    def current_version(self) -> str | None:
        return self._installed()

    def apply(self, ctx: InstallContext) -> str:
        ctx.swap()
        return f"{self.path} replaced"

    def resume(self, ctx: InstallContext) -> bool | None:
        try:
            return file_sha256(self.path) == ctx.sha256
        except OSError:
            return False

    def reinstall(self, install: Callable[[], None], version: str | None) -> bool:
        install()
        return True

    def abandon(self) -> str | None:
        return None


class AgentTarget(FileTarget):
    """agent.binary_path: stop the Agent, swap, start, and require a heartbeat from the new version
    within `update.verify_timeout`; otherwise restore the backup and start the old Agent again.
    Without a supervisor (the CLI with no daemon running) only the file is replaced."""

    def __init__(self, path: str, installed: Callable[[], str | None],
                 supervisor: Supervisor | None = None, verify_timeout: float = 300.0) -> None:
        super().__init__("agent", path, installed)
        self.supervisor = supervisor
        self.verify_timeout = verify_timeout

    def current_version(self) -> str | None:
        if self.supervisor is not None:
            running = self.supervisor.current_version()
            if running:
                return running
        return self._installed()

    def apply(self, ctx: InstallContext) -> str:
        sup = self.supervisor
        if sup is None:
            ctx.swap()
            return (f"{self.path} replaced; no daemon is supervising the Agent, "
                    f"it runs {ctx.version} from its next start")
        ctx.progress("installing", message=f"stopping the Agent {ctx.old_version or ''}".rstrip())
        sup.stop_agent()
        try:
            ctx.swap()
        except BaseException:
            sup.start_agent()
            raise
        ctx.progress("restarting", message=f"starting the Agent {ctx.version}")
        failure = self._start_and_watch(ctx)
        if failure is None:
            sup.emit("updated", version=ctx.version, old_version=ctx.old_version)
            return f"Agent {ctx.version} running and heartbeating"
        log.warning("agent update to %s failed its health check: %s; restoring %s", ctx.version, failure,
                    ctx.old_version, extra={"code": HealthCheckError.code})
        healthy = self.reinstall(ctx.restore, ctx.old_version)
        sup.emit("rolled_back", version=ctx.old_version, failed_version=ctx.version, reason=failure)
        restored = f"restored {ctx.old_version or 'the previous file'}"
        if not healthy:
            restored += " (which has not heartbeated yet either)"
        raise HealthCheckError(f"agent {ctx.version}: {failure}; {restored}")

    def _start_and_watch(self, ctx: InstallContext) -> str | None:
        sup = self.supervisor
        assert sup is not None
        try:
            sup.start_agent()
        except DaemonError as exc:
            return f"did not start: {exc}"
        ctx.mark_verifying()
        ctx.progress("watching",
                     message=f"waiting up to {ctx.verify_timeout:g}s for a heartbeat from {ctx.version}")
        if sup.wait_for_heartbeat(ctx.version, ctx.verify_timeout):
            return None
        exited = getattr(sup, "failure", "")  # set by supervisors that can tell an exit from silence
        if exited:
            return exited
        return f"no heartbeat reporting version {ctx.version} within {ctx.verify_timeout:g}s"

    def resume(self, ctx: InstallContext) -> bool | None:
        if not super().resume(ctx):
            return False
        if self.supervisor is None:
            return True
        return self._start_and_watch(ctx) is None

    def reinstall(self, install: Callable[[], None], version: str | None) -> bool:
        sup = self.supervisor
        if sup is None:
            install()
            return True
        sup.stop_agent()
        try:
            install()
        except OSError as exc:
            raise RollbackFailedError(f"agent: cannot put the previous file back at {self.path}: "
                                      f"{exc}") from exc
        finally:
            sup.start_agent()
        return sup.wait_for_heartbeat(version, self.verify_timeout) if version else True
