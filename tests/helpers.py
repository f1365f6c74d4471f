"""Shared test helpers: waiting on conditions, writing configs, running the daemon as a real process."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def measuring_coverage() -> bool:
    """True under `make coverage`: every Python child records what it ran (docs/testing.md), but only
    when it exits by itself or on SIGTERM; a SIGKILLed child writes no coverage data."""
    return bool(os.environ.get("COVERAGE_PROCESS_START"))


# For a child whose own memory or loaded libraries a test inspects: coverage.py would add its own.
UNMEASURED_ENV = {"COVERAGE_PROCESS_START": ""}


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def end_process(pid: int, grace: float = 10.0) -> None:
    """Teardown of a child a test no longer needs (not necessarily ours to wait for: an exec'ed or
    watcher-started daemon): SIGKILL; under `make coverage` SIGTERM first, so that it writes its
    coverage data, and SIGKILL only if it is still there after `grace` seconds."""
    if measuring_coverage():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def sample_agent_executable() -> str:
    """examples/sample_agent.py as an executable whose `#!` line is this interpreter (made once per
    test process): tests never depend on what `python3` on PATH is."""
    global _SAMPLE_AGENT
    if _SAMPLE_AGENT is None:
        directory = tempfile.mkdtemp(prefix="sample-agent-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, "sample_agent")
        source = (ROOT / "examples" / "sample_agent.py").read_text()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"#!{sys.executable}\n" + source.split("\n", 1)[1])
        os.chmod(path, 0o755)
        _SAMPLE_AGENT = path
    return _SAMPLE_AGENT


_SAMPLE_AGENT: str | None = None


def short_tmpdir(prefix: str = "dt") -> str:
    """A short path under /tmp: AF_UNIX socket paths must stay under 108 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def base_config(work_dir: str | os.PathLike[str], **sections: Any) -> dict[str, Any]:
    """A config whose every path lives under `work_dir`; no Manager, no Agent unless given."""
    work = str(work_dir)
    cfg: dict[str, Any] = {
        "daemon": {
            "work_dir": work,
            "log_file": os.path.join(work, "daemon.log"),
            "pid_file": os.path.join(work, "daemon.pid"),
            "log_level": "debug",
        },
        "agent": {"enabled": False, "socket_path": os.path.join(work, "agent.sock"),
                  "work_dir": os.path.join(work, "agent")},
        "update": {"download_dir": os.path.join(work, "downloads"),
                   "backup_dir": os.path.join(work, "backups"),
                   "public_key_file": os.path.join(work, "keys", "update.pub")},
    }
    return deep_merge(cfg, sections)


def write_config(path: str | os.PathLike[str], cfg: dict[str, Any]) -> str:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def daemon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "daemon_app", *args]


class DaemonProcess:
    """`daemon -c CONFIG run` as a real child process; stop() sends SIGTERM and waits."""

    def __init__(self, config_path: str, *, extra_env: dict[str, str] | None = None,
                 cmd: list[str] | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra_env or {})
        self.config_path = config_path
        self.proc = subprocess.Popen(cmd or daemon_cmd("-c", config_path, "run"), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def kill(self) -> None:
        """Teardown: SIGKILL (under `make coverage`, SIGTERM first: see end_process)."""
        if self.proc.poll() is None:
            end_process(self.proc.pid)
            self.proc.wait(10)

    def output(self) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=10)
        return out.decode(errors="replace"), err.decode(errors="replace")


# --- a small real filesystem that can be filled -----------------------------------------------------

class SmallFS:
    """A tmpfs of a few MiB; `fill()` takes every free byte, `free()` gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast"

    def fill(self, leave: int = 0) -> None:
        with open(self.ballast, "ab", buffering=0) as fh:
            for size in (65536, 4096, 1):  # the last partial pages too
                try:
                    while True:
                        fh.write(b"\0" * size)
                except OSError:
                    pass
        if leave:
            os.truncate(self.ballast, os.path.getsize(self.ballast) - leave)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)


def mount_small_fs(size: str = "4m") -> Iterator[SmallFS]:
    path = Path(short_tmpdir("full"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        os.rmdir(path)
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        yield SmallFS(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        os.rmdir(path)
