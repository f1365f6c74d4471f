"""Daemon self-update with real processes: the old daemon execs into the new pyz (same pid); a
watcher started from the old code restores the old pyz when the new one crashes or never commits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_app.update.selfupdate import read_marker
from daemon_app.update.state import Journal, UpdateState
from tests.helpers import ROOT, wait_until, write_config
from tests.update_support import base_config, make_pyz, write_release


@pytest.fixture
def selfupdate(env):
    out = env.work / "out"
    out.mkdir()
    pyz = env.work / "bin" / "daemon.pyz"
    old = make_pyz(pyz, "0.1.0", "old")
    os.chmod(pyz, 0o755)
    raw = base_config(env.work, update={"min_free_bytes": 0, "daemon_path": str(pyz),
                                        "self_update_deadline": "2s"})
    cfg_path = write_config(env.work / "daemon.yaml", raw)
    started: list[int] = []

    def launch(new_mode: str) -> subprocess.Popen[bytes]:
        new = make_pyz(env.work / "new.pyz", "0.2.0", new_mode)
        write_release(out / "release", env.key, "daemon", "0.2.0", new)
        (out / "update-request").touch()
        proc = subprocess.Popen([sys.executable, str(pyz), cfg_path, str(out)], cwd=str(ROOT),
                                env={k: v for k, v in os.environ.items() if k != "INVOCATION_ID"})
        started.append(proc.pid)
        return proc

    yield env, out, pyz, old, launch
    (out / "stop").touch()
    for name in out.glob("*.started"):
        _kill(json.loads(name.read_text())["pid"])
    marker = read_marker(str(env.work))
    if marker and marker.get("watcher_pid"):
        _kill(marker["watcher_pid"])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read(out: Path, name: str):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.timeout(60)
def test_healthy_new_daemon_keeps_the_pid_and_commits(selfupdate) -> None:
    env, out, pyz, old, launch = selfupdate
    proc = launch("healthy")
    commit = wait_until(lambda: read(out, "0.2.0.commit"), timeout=20, what="the new daemon's commit")
    assert commit["success"] and commit["new_version"] == "0.2.0"
    assert read(out, "0.2.0.started")["pid"] == proc.pid  # exec, not a new process
    assert read(out, "0.2.0.recovered") is None  # pending: being watched, nothing to report yet
    assert pyz.read_bytes() != old and os.stat(pyz).st_mode & 0o777 == 0o755
    assert UpdateState(str(env.work)).floor("daemon") == "0.2.0"
    assert read_marker(str(env.work)) is None and Journal(str(env.work)).read() is None
    assert proc.poll() is None  # the watcher did not interfere


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_new_daemon_that_crashes_or_never_commits_is_replaced_by_the_old_one(selfupdate, mode) -> None:
    env, out, pyz, old, launch = selfupdate
    launch(mode)
    wait_until(lambda: read(out, "0.2.0.started"), timeout=20, what="the new daemon")
    rec = wait_until(lambda: read(out, "0.1.0.recovered"), timeout=20, what="the old daemon restarted")
    assert pyz.read_bytes() == old
    assert rec["rolled_back"] and not rec["success"] and rec["new_version"] == "0.2.0"
    reason = "exited before it became healthy" if mode == "crash" else "did not become healthy within 2"
    assert reason in rec["error"], rec["error"]
    assert UpdateState(str(env.work)).floor("daemon") is None
    assert Journal(str(env.work)).read() is None
