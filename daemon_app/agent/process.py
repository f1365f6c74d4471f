"""The Agent as an OS process: spawn detached, adopt by pid file, watch via pidfd, signal, reap.

Nothing here decides *when* to start or stop; that is the supervisor's job. This module knows how:
a clean environment, its own session, output to O_APPEND files (never a pipe, so an adopted Agent
can outlive the daemon without SIGPIPE), and a pid file that names the process by pid *and* kernel
start time so a reused pid is never mistaken for the Agent.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from daemon_app import fsutil
from daemon_app.errors import AgentStartError
from daemon_app.metrics import rfc3339

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from /proc/<pid>/stat, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the LAST ')'.
    fields = data[data.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    return fields[0].decode(), int(fields[19])


def start_ticks(pid: int) -> int | None:
    """The kernel start time of a live (non-zombie) process, or None."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return stat[1]


def clean_env(socket_path: str, config_file: str) -> dict[str, str]:
    """Only what the Agent needs; none of the daemon's systemd variables (NOTIFY_SOCKET, LISTEN_*...)."""
    return {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "AGENT_SOCKET": socket_path,
        "AGENT_CONFIG": config_file,
    }


def write_pid_file(path: str, pid: int, ticks: int, binary: str) -> None:
    record = {"pid": pid, "start_ticks": ticks, "started_at": rfc3339(), "binary": binary}
    fsutil.write_atomic(path, (json.dumps(record) + "\n").encode(), 0o644)


_PID_FILE_MAX = 4096  # bytes; ours is ~150


def read_pid_file(path: str) -> tuple[int, int] | None:
    """(pid, start_ticks) from the pid file; None when absent or unreadable (a warning says why).

    Read bounded and parsed defensively: whatever is found at the path, the daemon starts.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(_PID_FILE_MAX + 1)
        if len(data) > _PID_FILE_MAX:
            raise ValueError(f"larger than {_PID_FILE_MAX} bytes")
        record = json.loads(data)
        pid, ticks = record["pid"], record["start_ticks"]
        if not (type(pid) is int and type(ticks) is int and 1 < pid <= 1 << 22 and ticks >= 0):
            raise ValueError(f"bad pid {str(pid)[:20]!r} or start_ticks {str(ticks)[:20]!r}")
        return pid, ticks
    except FileNotFoundError:
        return None
    except Exception as exc:  # any content at all: a warning, then a fresh Agent
        log.warning("ignoring unreadable agent pid file %s: %s: %s", path, type(exc).__name__,
                    str(exc)[:200])
        return None


def remove_pid_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass
class ExitInfo:
    """How the Agent ended. `known` is False for an adopted Agent: only its parent could reap it."""

    code: int | None
    signal: int | None
    known: bool
    at: float

    def describe(self) -> str:
        if not self.known:
            return "exited (status unknown: adopted process, not our child)"
        if self.signal is not None:
            return f"killed by signal {self.signal} ({signal.Signals(self.signal).name})"
        return f"exited with code {self.code}"


class AgentProcess:
    """One Agent process, spawned by us or adopted; `pidfd` becomes readable the moment it exits."""

    def __init__(self, pid: int, ticks: int, pidfd: int, popen: subprocess.Popen[bytes] | None,
                 started_at: float) -> None:
        self.pid = pid
        self.start_ticks = ticks
        self.pidfd = pidfd
        self.popen = popen
        self.adopted = popen is None
        self.started_at = started_at  # wall clock, for reports
        self.started_mono = time.monotonic()
        self.stderr_offset = 0  # size of the stderr log when this process started (see tail_lines)

    @classmethod
    def spawn(cls, binary: str, args: list[str], work_dir: str, env: dict[str, str],
              stdout_path: str, stderr_path: str) -> AgentProcess:
        """Start the Agent detached: own session and process group, output appended to files.

        D3001 AgentStartError when its directories, logs or binary cannot be used.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            os.makedirs(work_dir, exist_ok=True)
            os.makedirs(os.path.dirname(stdout_path), exist_ok=True)
            out_fd = os.open(stdout_path, flags, 0o640)
        except OSError as exc:
            raise AgentStartError(f"agent: cannot prepare {work_dir} / {stdout_path}: {exc}") from exc
        try:
            err_fd = os.open(stderr_path, flags, 0o640)
        except OSError as exc:
            os.close(out_fd)
            raise AgentStartError(f"agent: cannot open {stderr_path}: {exc}") from exc
        offset = os.fstat(err_fd).st_size
        try:
            popen = subprocess.Popen([binary, *args], cwd=work_dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=out_fd, stderr=err_fd, start_new_session=True,
                                     close_fds=True)
        except OSError as exc:
            raise AgentStartError(f"agent: cannot start {binary}: {exc.strerror or exc}") from exc
        finally:
            os.close(out_fd)
            os.close(err_fd)
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError as exc:  # pragma: no cover - only if the kernel lacks pidfd (< 5.3)
            popen.kill()
            popen.wait()
            raise AgentStartError(f"agent: pidfd_open failed: {exc}") from exc
        ticks = start_ticks(popen.pid) or 0
        proc = cls(popen.pid, ticks, pidfd, popen, time.time())
        proc.stderr_offset = offset
        return proc

    @classmethod
    def adopt(cls, pid: int, ticks: int) -> AgentProcess | None:
        """The process named by a pid file, if it is still that process; None otherwise."""
        if pid == os.getpid() or start_ticks(pid) != ticks:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        # Re-check through the pidfd's lifetime: the pid could have been reused between the two calls.
        if start_ticks(pid) != ticks:
            os.close(pidfd)
            return None
        started_at = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
        proc = cls(pid, ticks, pidfd, None, started_at)
        proc.started_mono = time.monotonic() - max(0.0, time.time() - started_at)
        return proc

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks

    def traced(self) -> bool:
        """Stopped by a tracer (state t): neither SIGTERM nor SIGCONT reaches it, only SIGKILL."""
        stat = proc_stat(self.pid)
        return stat is not None and stat[1] == self.start_ticks and stat[0] == "t"

    def signal_group(self, sig: int) -> None:
        """Signal the Agent's process group (its own session), or only the pid if it is not a leader."""
        try:
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill_leftovers(self) -> None:
        """SIGKILL whatever is left in the Agent's group after the leader exited (workers it forked)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> ExitInfo:
        """Collect the exit status (our child) once the pidfd is readable."""
        now = time.time()
        if self.popen is None:
            return ExitInfo(None, None, False, now)
        try:
            rc = self.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - pidfd said it exited
            return ExitInfo(None, None, False, now)
        if rc < 0:
            return ExitInfo(None, -rc, True, now)
        return ExitInfo(rc, None, True, now)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0  # pragma: no cover


def rotate_copy_truncate(path: str, max_bytes: int, backups: int) -> bool:
    """Rotate a log the Agent holds open with O_APPEND: copy to .1 (shifting older ones), truncate.

    The Agent keeps writing to the same open file at the new end; a daemon that dies never blocks
    it. Lines written between the copy and the truncate are lost (the usual copytruncate trade-off).
    """
    try:
        if os.stat(path).st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups > 0:
        for n in range(backups - 1, 0, -1):
            src = f"{path}.{n}"
            if os.path.exists(src):
                os.replace(src, f"{path}.{n + 1}")
        shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as fh:
        fh.truncate(0)
    return True


def tail_lines(path: str, max_lines: int = 20, max_bytes: int = 4096, since: int = 0) -> list[str]:
    """The last lines of a log written after offset `since` (bounded).

    `since` is the size the file had when this Agent process started, so an exit reports its own
    output and not its predecessor's. A file now shorter than `since` was rotated: then the newest
    backup is read too when the current file is empty.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    candidates = [(path, since)] if size >= since else [(path, 0), (f"{path}.1", 0)]
    for candidate, start in candidates:
        try:
            with open(candidate, "rb") as fh:
                end = fh.seek(0, os.SEEK_END)
                begin = max(start, end - max_bytes)
                fh.seek(begin)
                data = fh.read()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.debug("cannot read %s: %s", candidate, exc)
            continue
        if data.strip():
            if begin > start and b"\n" in data:
                data = data[data.index(b"\n") + 1:]  # drop the partial first line
            return data.decode(errors="replace").splitlines()[-max_lines:]
    return []


def describe_pid(pid: int) -> dict[str, Any]:
    """What a pid is, for log lines about pid files that point elsewhere."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as fh:
            return {"pid": pid, "comm": fh.read().strip()}
    except OSError:
        return {"pid": pid, "comm": None}
