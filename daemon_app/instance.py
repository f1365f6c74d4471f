"""The instance lock: one daemon per work_dir and pid file."""

from __future__ import annotations

import contextlib
import fcntl
import os

from daemon_app import fsutil
from daemon_app.errors import AlreadyRunningError, ConfigValidateError

LOCK_NAME = "daemon.lock"


def holder(work_dir: str) -> str | None:
    """The pid (as the lock file says it) of a daemon holding <work_dir>/daemon.lock, or None."""
    try:
        fd = os.open(os.path.join(work_dir, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)


class InstanceLock:
    """flock on <work_dir>/daemon.lock and on the pid file: a second daemon refuses to start.

    The lock dies with the process (even on kill -9), so a stale file never blocks a new daemon.
    """

    def __init__(self, work_dir: str, pid_file: str) -> None:
        self.paths = [(os.path.join(work_dir, LOCK_NAME), "daemon.work_dir")]
        if pid_file:
            self.paths.append((pid_file, "daemon.pid_file"))
        self._fds: list[int] = []

    def acquire(self) -> None:
        for path, setting in self.paths:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                # A pid file planted as a symlink would have us truncate its target.
                fd = fsutil.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self.release()
                raise ConfigValidateError([f"{setting}: cannot open {path}: {exc.strerror or exc}"]) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self.release()
                raise AlreadyRunningError(
                    f"another daemon (pid {holder}) is already running with {setting} {path}; "
                    "stop it first (systemctl stop daemon) or give this one its own work_dir and pid_file"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fds.append(fd)

    def release(self) -> None:
        """Empty the files before unlocking, so nobody reads a pid that may be reused later."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
        self._fds.clear()
