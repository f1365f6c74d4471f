"""Fixtures for Agent supervision tests: a real supervisor in-process, real sample Agents, an event log."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from typing import Any

import pytest

from daemon_app import config
from daemon_app.agent.supervisor import AgentSupervisor
from daemon_app.engine import Engine
from daemon_app.hookspecs import hookimpl
from daemon_app.plugins import Plugins
from tests.helpers import base_config, deep_merge, sample_agent_executable, short_tmpdir, wait_until

# The sample Agent's `#!/usr/bin/env python3` would run whatever python3 is first on PATH (a pyenv
# shim, a python without psutil...): tests run a copy whose first line names this interpreter.
SAMPLE_AGENT = sample_agent_executable()

# Shrunk timings: every test finishes in seconds.
FAST_AGENT: dict[str, Any] = {
    "enabled": True,
    "binary_path": SAMPLE_AGENT,
    "args": ["--interval", "0.2"],
    "stop_timeout": "2s",
    "start_seconds": "0.3s",
    "health_check": {"interval": "100ms", "heartbeat_timeout": "2s", "cpu_threshold": 0.0,
                     "memory_threshold": 0, "threshold_duration": "1s"},
    "restart": {"max_retries": 10, "backoff_base": "100ms", "backoff_max": "300ms", "stable_after": "5m"},
}


class Recorder:
    """An on_agent_event plugin that keeps every event, in order.

    Events reach plugins on their own thread: `types()` and `of()` first wait (briefly) until every
    event posted so far was delivered, so they read what the supervisor has emitted by then."""

    def __init__(self, plugins: Plugins | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._plugins = plugins

    def _settle(self) -> None:
        if self._plugins is not None:
            self._plugins.events.flush(5.0)

    @hookimpl
    def on_agent_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(dict(event, _mono=time.monotonic()))

    def types(self) -> list[str]:
        self._settle()
        with self._lock:
            return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        self._settle()
        with self._lock:
            return [e for e in self.events if e["type"] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        wait_until(lambda: len(self.of(kind)) >= count, timeout=timeout, what=f"{count} {kind!r} event(s); "
                   f"got {self.types()}")
        return self.of(kind)[count - 1]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


class Harness:
    """Builds supervisors over one work dir; kills every Agent it saw at teardown."""

    def __init__(self) -> None:
        self.dir = short_tmpdir("ag")
        self.supervisors: list[AgentSupervisor] = []
        self.recorders: list[Recorder] = []
        self.pids: set[int] = set()

    def config(self, **agent: Any) -> config.Config:
        raw = base_config(self.dir, agent=deep_merge(FAST_AGENT, agent))
        return config.validate(raw)

    def supervisor(self, *, start: bool = True, plugins: Plugins | None = None,
                   **agent: Any) -> tuple[AgentSupervisor, Recorder]:
        cfg = self.config(**agent)
        plugins = plugins if plugins is not None else Plugins()
        recorder = Recorder(plugins)
        plugins.register(recorder, "recorder", version="0", source="test")
        engine = Engine(cfg, plugins)
        sup = AgentSupervisor(cfg, engine)
        engine.agent = sup
        self.supervisors.append(sup)
        self.recorders.append(recorder)
        if start:
            sup.start()
        return sup, recorder

    def track(self, pid: int) -> int:
        if pid:
            self.pids.add(pid)
        return pid

    def cleanup(self) -> None:
        # Stop watching first, so no supervisor starts another Agent while we collect the pids.
        for sup in self.supervisors:
            if sup._thread is not None:
                sup.stop(time.monotonic() + 2)
            self.track(sup.pid)
        for recorder in self.recorders:
            for event in recorder.events:
                self.track(event.get("pid", 0))
        for pid in self.pids:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.cleanup()
