"""Daemon self-update: swap daemon.pyz in one rename, exec into it, and let a watcher that is not the
new code put the old pyz back unless the new daemon commits in time.

Sequence (docs/updates.md has the picture):
  1. pending marker <work_dir>/update/pending.json: backup, target, new/old version, deadline, pid
  2. the watcher starts: a standalone stdlib script written by the OLD code to <work_dir>/update/
  3. swap daemon.pyz (same-directory temp + fsync + os.replace)
  4. os.execv into the new pyz: same pid (systemd Type=notify keeps tracking it; the new daemon
     sends READY=1 again)
  5. the new daemon starts, recover() sees the pending marker with its own pid and reports
     `watching`; once registered with the Manager and one report acknowledged the engine calls
     `commit_pending_update(work_dir)`: marker -> committed, floor raised, the watcher exits
  6. otherwise, at the deadline or when that pid dies, the watcher restores the previous pyz, stops
     what is left of the new daemon, and gets the previous one started: under systemd with
     `systemctl restart <unit>` (whatever the exit status was, whatever Restart= says), otherwise
     itself; the old daemon's recover() then reports `rolled_back` with the watcher's reason.
Marker transitions (commit vs. roll back) take an flock on pending.json.lock, so exactly one wins.

A kill -9 can land anywhere in this sequence (docs/updates.md, "Kill points"). Recovery believes the
disk, not the journal alone: the file at the target is hashed against the marker's old and new
hashes; a marker whose swap never happened is dropped; a marker whose watcher is gone gets a new
watcher; a daemon that finds the update undone under it restarts into the file on disk. The watcher
is reaped by the daemon it belongs to (it is that pid's child across the exec), and a watcher that
dies while the update is pending is started again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from daemon_app import fsutil
from daemon_app.update import install, testpoint
from daemon_app.update.errors import InstallError, SelfUpdateUnavailableError
from daemon_app.update.state import Journal, UpdateState, read_json, update_dir
from daemon_app.update.targets import FileTarget, InstallContext, file_sha256, holds

log = logging.getLogger(__name__)

PENDING, COMMITTED, ROLLED_BACK, ABORTED = "pending", "committed", "rolled_back", "aborted"
WATCHER_POLL_S = 0.2  # how soon a dead watcher is reaped (and, while pending, replaced)

WATCHER_SOURCE = r'''"""daemon.pyz self-update watcher, written by the previous daemon (stdlib only).

Usage: python3 watcher.py PENDING_JSON. Exits when the marker is committed; restores the previous
pyz when the deadline passes or the daemon pid dies first.
"""
import fcntl, json, os, signal, subprocess, sys, time

MARKER = sys.argv[1]


def read():
    try:
        with open(MARKER, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def create(path):
    """A new file, never through a symlink planted at that name."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def write(data):
    tmp = MARKER + ".watcher.tmp"
    with open(create(tmp), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, MARKER)
    fsync_dir(os.path.dirname(MARKER))


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def proc_start(pid):
    """(start time, state) of pid, so a reused pid is not mistaken for the daemon."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[19], fields[0]
    except (OSError, IndexError):
        return None, None


def alive(m):
    start, state = proc_start(m["pid"])
    return start is not None and start == m["pid_start"] and state not in ("Z", "X")


def restore(m):
    target, backup = m["target"], m["backup"]
    directory = os.path.dirname(target)
    tmp = os.path.join(directory, "." + os.path.basename(target) + ".update-watcher.tmp")
    with open(backup, "rb") as src, open(create(tmp), "wb") as dst:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(tmp, m.get("mode", 0o755))
    os.replace(tmp, target)
    fsync_dir(directory)


def stop(pid, grace):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if proc_start(pid)[1] in ("Z", "X"):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_previous(m):
    """Under systemd ask it to restart the unit: the exit status of what we stopped (0 after SIGTERM,
    2, a crash) must not decide whether the host gets a daemon back. Without systemd, or when
    systemctl cannot be asked, start the previous daemon ourselves."""
    unit = m.get("systemd_unit")
    if m.get("systemd") and unit:
        try:
            rc = subprocess.call(["systemctl", "restart", "--no-block", unit], stdin=subprocess.DEVNULL,
                                 timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            rc = "not run: %s" % exc
        print("watcher: systemctl restart %s: %s" % (unit, rc), flush=True)
        if rc == 0:
            return
    subprocess.Popen([m["python"], m["target"]] + m["args"], start_new_session=True, cwd="/",
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("watcher: started %s %s" % (m["python"], m["target"]), flush=True)


def main():
    while True:
        m = read()
        if not m or m.get("status") != "pending":
            return 0
        dead, late = not alive(m), time.time() > m["deadline"]
        if dead or late:
            break
        time.sleep(0.1)
    with open(os.open(MARKER + ".lock", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600),
              "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        m = read()
        if not m or m.get("status") != "pending":
            return 0
        hung = alive(m)
        if hung:
            reason = "the new daemon did not become healthy within %ss" % m.get("deadline_s")
        else:
            reason = "the new daemon (pid %s) exited before it became healthy" % m["pid"]
        # The previous pyz goes back BEFORE the new daemon is stopped: whoever starts a daemon next
        # (systemd's Restart=, a restart job, this script) can only find the previous one in place.
        restore(m)
        m.update(status="rolled_back", reason=reason, rolled_back_at=time.time())
        write(m)
        if hung:
            stop(m["pid"], 10.0)
    print("watcher: %s; restored %s" % (reason, m["backup"]), flush=True)
    start_previous(m)
    return 0


sys.exit(main())
'''


def marker_path(work_dir: str) -> str:
    return os.path.join(update_dir(work_dir), "pending.json")


def read_marker(work_dir: str) -> dict[str, Any] | None:
    data = read_json(marker_path(work_dir))
    return data if isinstance(data, dict) else None


@contextmanager
def _marker_lock(work_dir: str) -> Iterator[None]:
    fd = fsutil.open_nofollow(marker_path(work_dir) + ".lock", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from the state field on ([0] state, [19] start time); [] when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def process_start(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def start_watcher(work_dir: str) -> int:
    """Write the watcher script (this code's copy) and start it detached; return its pid."""
    directory = update_dir(work_dir)
    script = os.path.join(directory, "watcher.py")
    fsutil.write_atomic(script, WATCHER_SOURCE.encode(), 0o600)
    log_file = os.fdopen(fsutil.open_nofollow(os.path.join(directory, "watcher.log"),
                                              os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
    with log_file:
        proc = subprocess.Popen([sys.executable, "-I", script, marker_path(work_dir)], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd="/",
                                env=_watcher_env())
    return proc.pid


def keep_watcher(work_dir: str, pid: int) -> None:
    """Look after the watcher `pid` from this daemon: reap it when it exits (it is our child, also
    after the exec) and, if it died while the update is still pending, start another one."""
    threading.Thread(target=_keep_watcher, args=(work_dir, pid), name="update-watcher", daemon=True).start()


def _keep_watcher(work_dir: str, pid: int) -> None:
    start = process_start(pid)
    while True:
        while _watcher_alive(pid, start):
            time.sleep(WATCHER_POLL_S)
        with _marker_lock(work_dir):
            marker = read_marker(work_dir)
            if not marker or marker.get("status") != PENDING or marker.get("watcher_pid") != pid:
                return
            pid = start_watcher(work_dir)
            start = process_start(pid)
            log.warning("self-update watcher (pid %s) died while the update to %s is pending; started "
                        "another (pid %d)", marker.get("watcher_pid"), marker.get("new_version"), pid)
            marker["watcher_pid"] = pid
            fsutil.write_json(marker_path(work_dir), marker)


def _watcher_alive(pid: int, start: str | None) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # it was our child: exited, and now reaped
    except ChildProcessError:
        pass  # not ours (a daemon before us started it): /proc tells
    return start is not None and process_start(pid) == start and _state(pid) not in ("Z", "X", None)


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _watcher_env() -> dict[str, str]:
    """The daemon's environment minus systemd's per-process variables: the watcher runs with -I (it
    ignores PYTHON*), and the old daemon it may start again must find what this one had (SHIV_ROOT,
    PATH, locale), but must not answer for the unit's notify socket."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_"))}


def commit_pending_update(work_dir: str, *, backup_dir: str | None = None,
                          max_backups: int | None = None) -> dict[str, Any] | None:
    """Called by the new daemon once it is registered and a report was acknowledged: make the
    self-update permanent. Returns the UpdateResult dict to report, or None if nothing was pending
    (or the watcher had already rolled back)."""
    with _marker_lock(work_dir):
        marker = read_marker(work_dir)
        if not marker or marker.get("status") != PENDING:
            return None
        marker.update(status=COMMITTED, committed_at=time.time())
        fsutil.write_json(marker_path(work_dir), marker)
    version, old = marker["new_version"], marker.get("old_version") or ""
    UpdateState(work_dir).record("daemon", "install", version, raise_floor=True, old_version=old)
    if backup_dir and max_backups:
        install.prune_backups(backup_dir, "daemon", max_backups)
    Journal(work_dir).clear()
    fsutil.unlink_quietly(marker_path(work_dir))
    fsutil.fsync_dir(update_dir(work_dir))
    log.info("daemon self-update to %s committed", version)
    return {"component": "daemon", "success": True, "old_version": old, "new_version": version,
            "error": "", "rolled_back": False}


def settle_without_journal(work_dir: str) -> None:
    """A marker with no update journal (killed between a commit's last two steps, or left by hand)
    describes nothing in flight: drop it, so that no `pending` marker outlives its update."""
    with _marker_lock(work_dir):
        marker = read_marker(work_dir)
        if marker is None:
            return
        if marker.get("status") == PENDING:
            # A watcher still alive sees "aborted" and leaves the file alone.
            marker["status"] = ABORTED
            fsutil.write_json(marker_path(work_dir), marker)
            log.warning("self-update marker for %s pending with no update in flight; dropped",
                        marker.get("new_version"))
        fsutil.unlink_quietly(marker_path(work_dir))


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID"))


UNIT_ENV = "DAEMON_SYSTEMD_UNIT"


def systemd_unit() -> str:
    """The unit systemd runs us as: deploy/daemon.service passes it (`DAEMON_SYSTEMD_UNIT=%n`);
    otherwise the .service in our cgroup path. Empty when not under systemd."""
    if not under_systemd():
        return ""
    named = os.environ.get(UNIT_ENV, "")
    if named:
        return named
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            for line in fh:
                for part in reversed(line.strip().split(":", 2)[-1].split("/")):
                    if part.endswith(".service"):
                        return part
    except OSError:
        pass
    return ""


class DaemonTarget(FileTarget):
    """daemon.pyz. With `restart` (inside a running daemon) it does the marker/watcher/exec dance;
    without it (the CLI while no daemon runs) replacing the file is all there is to do."""

    def __init__(self, cfg: Any, state: UpdateState, restart: Callable[[], None] | None = None) -> None:
        from daemon_app import buildinfo

        running = buildinfo.pyz_path()
        path = cfg.update.daemon_path or running
        if not path:
            raise SelfUpdateUnavailableError(
                "self-update: not running from a pyz and update.daemon_path is empty")
        self._running_this = bool(running) and os.path.realpath(running) == os.path.realpath(path)
        super().__init__("daemon", path, lambda: state.installed("daemon"))
        self.cfg = cfg
        self.work_dir = cfg.daemon.work_dir
        self.restart = restart

    def current_version(self) -> str | None:
        if self._running_this:
            from daemon_app import __version__

            return __version__
        return super().current_version()

    def apply(self, ctx: InstallContext) -> str:
        if self.restart is None:
            ctx.swap()
            return f"{self.path} replaced; no daemon is running, {ctx.version} runs from its next start"
        if not ctx.backup_path:
            raise InstallError(f"self-update: {self.path} has no backup to fall back on")
        deadline_s = self.cfg.update.self_update_deadline
        marker = {
            "status": PENDING, "target": os.path.abspath(self.path), "backup": ctx.backup_path,
            "new_version": ctx.version, "old_version": ctx.old_version, "sha256": ctx.sha256,
            "old_sha256": file_sha256(ctx.backup_path),
            "deadline": time.time() + deadline_s, "deadline_s": deadline_s,
            "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "python": sys.executable, "args": sys.argv[1:], "systemd": under_systemd(),
            "systemd_unit": systemd_unit(),
            "mode": os.stat(self.path).st_mode & 0o7777,
        }
        fsutil.write_json(marker_path(self.work_dir), marker)
        testpoint.reached("before_watcher")
        with _marker_lock(self.work_dir):
            marker["watcher_pid"] = start_watcher(self.work_dir)
            fsutil.write_json(marker_path(self.work_dir), marker)
        keep_watcher(self.work_dir, marker["watcher_pid"])
        try:
            ctx.swap()
        except BaseException:
            self._abort()
            raise
        ctx.progress("restarting", message=f"restarting into daemon {ctx.version}")
        testpoint.reached("before_exec")
        self.restart()
        self._abort()
        raise InstallError("self-update: the restart returned instead of replacing the process")

    def _abort(self) -> None:
        with _marker_lock(self.work_dir):
            marker = read_marker(self.work_dir)
            if marker and marker.get("status") == PENDING:
                marker["status"] = ABORTED
                fsutil.write_json(marker_path(self.work_dir), marker)

    def resume(self, ctx: InstallContext) -> bool | None:
        """After the swap: decide from the marker AND the file on disk, under the marker lock (the
        watcher may be deciding at the same moment)."""
        with _marker_lock(self.work_dir):
            marker = read_marker(self.work_dir)
            if marker is None:
                return super().resume(ctx)
            status = marker.get("status")
            if status == PENDING and not holds(self.path, marker.get("sha256")):
                # The new file is not there (put back without the marker knowing): nothing to watch.
                marker.update(status=ABORTED, reason=f"{self.path} no longer holds the new build")
                fsutil.write_json(marker_path(self.work_dir), marker)
                status = ABORTED
            if status == PENDING:
                self._adopt_watch(marker)
        if status == COMMITTED:
            fsutil.unlink_quietly(marker_path(self.work_dir))
            return True
        if status != PENDING:
            self._restart_if_undone(marker)
            ctx.extra["reason"] = marker.get("reason", f"self-update {status}")
            fsutil.unlink_quietly(marker_path(self.work_dir))
            return False
        ctx.progress("watching", message=f"daemon {ctx.version} running; it must prove healthy before "
                                          f"{time.strftime('%H:%M:%S', time.localtime(marker['deadline']))}")
        return None

    def abandon(self) -> str | None:
        """Killed before the swap: the old file is in place and runs. Drop the marker (a watcher
        still alive sees "aborted" and leaves); if the watcher had rolled back already, say why."""
        with _marker_lock(self.work_dir):
            marker = read_marker(self.work_dir)
            if marker is None:
                return None
            status = marker.get("status")
            if status == PENDING:
                marker["status"] = ABORTED
                fsutil.write_json(marker_path(self.work_dir), marker)
            fsutil.unlink_quietly(marker_path(self.work_dir))
        return str(marker.get("reason") or "rolled back") if status == ROLLED_BACK else None

    def _is_watcher(self, pid: int) -> bool:
        """A live watcher of this marker (not a zombie, not a reused pid)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            return False
        return os.fsencode(marker_path(self.work_dir)) in argv and _state(pid) not in ("Z", "X", None)

    def _restart_if_undone(self, marker: dict[str, Any]) -> None:
        """This process runs the new build, but the update was undone (the watcher put the previous
        pyz back while we started): become the daemon on disk, which settles and reports it."""
        from daemon_app import __version__

        new, old = marker.get("new_version"), marker.get("old_version")
        if not (self._running_this and self.restart and __version__ == new and new != old):
            return
        if not holds(self.path, marker.get("old_sha256")):
            return
        log.warning("self-update to %s was undone while this daemon started; restarting into %s (%s)",
                    new, self.path, old)
        try:
            self.restart()
        except Exception as exc:  # the daemon is stopping anyway: whoever starts it next runs the file
            log.warning("self-update: cannot restart into %s: %s", self.path, exc)

    def _adopt_watch(self, marker: dict[str, Any]) -> None:
        """After exec the pid is ours already; after a crash and a fresh start it is not: take the
        watch over, and start a watcher again if none is alive (killed with the daemon, a reboot).
        Called with the marker lock held."""
        me, start = os.getpid(), process_start(os.getpid())
        if marker.get("pid") != me or marker.get("pid_start") != start:
            marker.update(pid=me, pid_start=start)
            fsutil.write_json(marker_path(self.work_dir), marker)
        watcher = marker.get("watcher_pid")
        watcher = watcher if isinstance(watcher, int) and watcher > 0 else 0
        if not (watcher and self._is_watcher(watcher)):
            if watcher:
                _watcher_alive(watcher, None)  # reaps it, if it died as our child before this start
            marker["watcher_pid"] = start_watcher(self.work_dir)
            fsutil.write_json(marker_path(self.work_dir), marker)
        keep_watcher(self.work_dir, int(marker["watcher_pid"]))

    def reinstall(self, install_fn: Callable[[], None], version: str | None) -> bool:
        install_fn()
        return True
