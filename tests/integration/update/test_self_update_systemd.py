"""Every way a self-update can fail ends with the previous daemon running under the shipped unit's
restart policy: a static check of deploy/daemon.service against each failure path, and each path run
for real under a stand-in for systemd that applies that unit (tests/systemd_standin.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_app.update.selfupdate import UNIT_ENV, read_marker
from daemon_app.update.state import UpdateState
from tests import systemd_standin
from tests.helpers import ROOT, wait_until, write_config
from tests.update_support import base_config, make_pyz, write_release

UNIT_FILE = ROOT / "deploy" / "daemon.service"

# How the new daemon's main process ends on each failure path, as systemd sees it.
FAILURES = {
    "never commits (watcher's SIGTERM, the daemon exits 0)": ("exit", 0),
    "hangs even on SIGTERM (watcher's SIGKILL after 10 s)": ("signal", "SIGKILL"),
    "crashes at start (exit 1)": ("exit", 1),
    "exits 2 (e.g. refuses the config)": ("exit", 2),
    "aborts (SIGABRT) or segfaults": ("signal", "SIGABRT"),
    "stalls its engine loop (watchdog)": ("watchdog", None),
}


def shipped_unit() -> systemd_standin.Unit:
    return systemd_standin.parse_unit(UNIT_FILE.read_text(), "daemon.service")


def test_the_restart_table_is_systemds() -> None:
    # The bug this guards against: on-failure does not restart a daemon that exited 0 after SIGTERM.
    unit = systemd_standin.Unit("x.service", restart="on-failure")
    assert not systemd_standin.restarts(unit, "exit", 0)
    assert not systemd_standin.restarts(unit, "signal", "SIGTERM")
    assert systemd_standin.restarts(unit, "exit", 1) and systemd_standin.restarts(unit, "signal", "SIGKILL")
    unit.restart = "always"
    assert systemd_standin.restarts(unit, "exit", 0)
    unit.prevent = {"2"}
    assert not systemd_standin.restarts(unit, "exit", 2)


@pytest.mark.parametrize("path", list(FAILURES))
def test_the_shipped_unit_gets_a_daemon_back_on_every_failure_path(path) -> None:
    unit = shipped_unit()
    cause, value = FAILURES[path]
    assert unit.environment.get(UNIT_ENV) == "daemon.service"  # the watcher can name the unit
    if systemd_standin.restarts(unit, cause, value):
        # systemd restarts it by itself; it must not race the watcher's restore (~0.1 s)
        assert unit.restart_sec >= 1.0
    else:
        # Only a status the unit deliberately does not restart (a config error) may get here: the
        # watcher's own `systemctl restart` is what brings the previous daemon back then.
        assert (cause, str(value)) == ("exit", "2") and "2" in unit.prevent


def events(state: Path) -> list[dict]:
    try:
        lines = (state / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines]


def starts(out: Path) -> list[tuple[str, int]]:
    try:
        lines = (out / "starts.log").read_text().split("\n")
    except FileNotFoundError:
        return []
    return [(v, int(p)) for v, p in (line.split() for line in lines if line.strip())]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.fixture
def standin(env):
    """The old daemon 0.1.0 (a stand-in pyz) started by the systemd stand-in with the shipped unit."""
    procs: list[subprocess.Popen] = []
    out = env.work / "out"
    out.mkdir()
    state = env.work / "systemd"
    pyz = env.work / "bin" / "daemon.pyz"
    old = make_pyz(pyz, "0.1.0", "old")
    os.chmod(pyz, 0o755)
    cfg_path = write_config(env.work / "daemon.yaml", base_config(
        env.work, update={"min_free_bytes": 0, "daemon_path": str(pyz), "self_update_deadline": "2s"}))

    def launch(new_mode: str, **env_extra: str) -> None:
        write_release(out / "release", env.key, "daemon", "0.2.0", make_pyz(env.work / "new.pyz", "0.2.0",
                                                                             new_mode))
        (out / "update-request").touch()
        clean = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", UNIT_ENV)}
        clean.update(env_extra)
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "systemd_standin.py"), str(UNIT_FILE), str(state), "--",
             sys.executable, str(pyz), cfg_path, str(out)], env=clean, cwd=str(ROOT)))

    yield env, out, state, pyz, old, launch
    (out / "stop").touch()
    for proc in procs:
        proc.terminate()
        proc.wait(30)
    for _, pid in starts(out):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    marker = read_marker(str(env.work))
    if marker and marker.get("watcher_pid"):
        try:
            os.kill(int(marker["watcher_pid"]), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["hang", "crash", "exit2", "abort"])
def test_each_failed_self_update_ends_with_the_previous_daemon_running_under_the_unit(standin, mode) -> None:
    env, out, state, pyz, old, launch = standin
    launch(mode)

    def previous_back() -> tuple[str, int] | None:
        got = starts(out)
        recovered = out / "0.1.0.recovered"
        done = recovered.exists() and json.loads(recovered.read_text())
        return got[-1] if done and len(got) >= 3 and got[-1][0] == "0.1.0" else None

    version, pid = wait_until(previous_back, timeout=60, what="the previous daemon started again")
    assert [v for v, _ in starts(out)][:2] == ["0.1.0", "0.2.0"]
    assert pyz.read_bytes() == old
    recovered = json.loads((out / "0.1.0.recovered").read_text())
    assert recovered["rolled_back"] and recovered["new_version"] == "0.2.0", recovered
    assert UpdateState(str(env.work)).floor("daemon") is None

    log = events(state)
    started = [e for e in log if e["event"] == "started"]
    assert started[-1]["pid"] == pid, log  # the unit's main process IS the previous daemon
    exited = [e for e in log if e["event"] == "exited"]
    expected = {"hang": ("exit", 0), "crash": ("exit", 1), "exit2": ("exit", 2),
                "abort": ("signal", "SIGABRT")}
    assert (exited[0]["cause"], exited[0]["value"]) == expected[mode], log
    # The watcher asked systemd (by the unit's name) rather than trusting the exit status.
    assert {"event": "request", "action": "restart"}.items() <= next(
        e for e in log if e["event"] == "request").items(), log
    # Still running a moment later, and only one daemon was started after the rollback.
    wait_until(lambda: alive(pid), timeout=5, what="the previous daemon alive")
    assert sum(1 for e in events(state) if e["event"] == "started") == len(started)


@pytest.mark.timeout(90)
def test_when_systemctl_fails_the_watcher_starts_the_previous_daemon_itself(standin) -> None:
    env, out, state, pyz, old, launch = standin
    launch("exit2", SYSTEMCTL_STANDIN_FAIL="1")  # exit 2: the unit's policy does not restart it either

    def previous_back() -> tuple[str, int] | None:
        got = starts(out)
        return got[-1] if len(got) >= 3 and got[-1][0] == "0.1.0" else None

    _, pid = wait_until(previous_back, timeout=60, what="the previous daemon started by the watcher")
    assert pyz.read_bytes() == old
    assert alive(pid)
    log = events(state)
    assert [e["event"] for e in log if e["event"] in ("started", "exited")] == ["started", "exited"], log
    watcher_log = (env.work / "update" / "watcher.log").read_text()
    assert "systemctl restart daemon.service: 1" in watcher_log and "watcher: started" in watcher_log
