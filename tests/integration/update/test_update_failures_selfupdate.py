"""A power loss in the middle of a daemon self-update's watch window: the new daemon and its watcher
both die with kill -9, the host comes back and starts the new pyz again. Its recovery finds the
pending marker of a dead pid and a dead watcher: it takes the watch over and starts a watcher again,
which (the deadline having passed without a commit) puts the previous pyz back and starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from daemon_app.update.selfupdate import read_marker
from daemon_app.update.state import Journal, UpdateState

# The real-process harness of the self-update tests: zipapp "daemons" that run the real Updater.
from tests import update_support as self_update_tests  # MAIN: the stand-in daemon's source
from tests.helpers import ROOT, wait_until
from tests.integration.update.test_self_update import read, selfupdate  # noqa: F401


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(90)
def test_reboot_during_the_watch_window_is_rolled_back_by_a_new_watcher(selfupdate) -> None:  # noqa: F811
    env, out, pyz, old, launch = selfupdate
    first = launch("hang")
    wait_until(lambda: (out / "0.2.0.recovered").exists(), timeout=30, what="the new daemon's recovery")
    marker = read_marker(str(env.work))
    assert marker["status"] == "pending" and marker["pid"] == first.pid
    new = pyz.read_bytes()
    assert new != old

    # Power loss: the watcher and the new daemon die at once, nothing gets to clean up.
    _dead(int(marker["watcher_pid"]))
    first.kill()
    first.wait(10)
    wait_until(lambda: _dead(int(marker["watcher_pid"])), timeout=10, what="the old watcher gone")
    (out / "0.2.0.recovered").unlink()

    # The host is back: its service manager starts daemon.pyz, which is the new one.
    again = subprocess.Popen([sys.executable, str(pyz), str(env.work / "daemon.yaml"), str(out)],
                             cwd=str(ROOT), env={k: v for k, v in os.environ.items() if k != "INVOCATION_ID"})
    try:
        rec = wait_until(lambda: read(out, "0.1.0.recovered"), timeout=30,
                         what="the previous daemon to be restored and started by the new watcher")
        assert read(out, "0.2.0.started")["pid"] == again.pid
        again.wait(20)  # stopped by the watcher: it never committed (the watcher restarts the old one)
    finally:
        if again.poll() is None:
            again.kill()
            again.wait(10)
    assert rec["rolled_back"] and not rec["success"] and rec["new_version"] == "0.2.0"
    # Not "exited before it became healthy" (the first pid is dead): the rebooted daemon put its own
    # pid in the marker, and the watcher it started judged that one.
    assert "did not become healthy" in rec["error"], rec["error"]
    assert "restored" in (env.work / "update" / "watcher.log").read_text()
    assert pyz.read_bytes() == old
    assert UpdateState(str(env.work)).floor("daemon") is None
    assert Journal(str(env.work)).read() is None
    assert read_marker(str(env.work)) is None


CLEAN_STOP = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))"
DEAF = "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a shutdown that never ends"


@pytest.mark.timeout(90)
def test_a_new_daemon_that_ignores_sigterm_is_killed_and_replaced_by_the_watcher(selfupdate,  # noqa: F811
                                                                                 monkeypatch) -> None:
    env, out, pyz, old, launch = selfupdate
    # The new build (made by launch) ignores SIGTERM and never commits; the old one is as usual.
    monkeypatch.setattr(self_update_tests, "MAIN", self_update_tests.MAIN.replace(CLEAN_STOP, DEAF))
    first = launch("hang")
    rec = wait_until(lambda: read(out, "0.1.0.recovered"), timeout=60,
                     what="the watcher to give up on SIGTERM, SIGKILL the new daemon and restart the old")
    assert first.wait(10) == -signal.SIGKILL
    assert rec["rolled_back"] and "did not become healthy" in rec["error"], rec
    assert pyz.read_bytes() == old
    assert UpdateState(str(env.work)).floor("daemon") is None
    assert Journal(str(env.work)).read() is None
