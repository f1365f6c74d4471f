"""Crash recovery and rollbacks when what they rely on is gone: the backup deleted after a kill -9,
the installed file deleted, no backup directory at all, a backup that does not run, and a second
process holding the update lock while recovery wants to run. Each ends in one complete version on
disk (or says with D4004 that the operator must act) and a journal that cannot loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from daemon_app.update.state import Journal, UpdateState
from tests.helpers import ROOT, base_config, wait_until, write_config
from tests.integration.update.test_crash_recovery import run_cli_update
from tests.update_support import ProcessSupervisor, agent_script


def crash_after_swap(env, package: bytes | None = None) -> dict:
    """`daemon update` SIGKILLed right after the swap; returns the journal it left."""
    proc = run_cli_update(env, env.release("2.0.0", package), "after_swap")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    entry = Journal(str(env.work)).read()
    assert entry is not None and entry["phase"] == "swapped"
    return entry


@pytest.mark.timeout(60)
def test_recovery_when_the_backup_was_deleted_after_the_crash_fails_with_d4004(env) -> None:
    """The new Agent fails its check and the backup to go back to is gone: nothing can be restored,
    so recovery says so with D4004 (operator must act), keeps the floor, and clears the journal so
    the next start does not try again forever."""
    agent = env.work / "bin" / "agent"
    agent.write_bytes(agent_script("1.0.0"))
    entry = crash_after_swap(env, agent_script("2.0.0", healthy=False))
    new = agent.read_bytes()
    os.unlink(entry["backup"])
    sup = ProcessSupervisor(str(agent), env.work)
    env.reconfigure(verify_timeout="2s")
    try:
        result = env.updater(supervisor=sup).recover(env.progress)
    finally:
        sup.stop_agent()
    assert result is not None and not result.success and not result.rolled_back
    assert result.error.startswith("D4004 rollback: cannot restore"), result.error
    assert entry["backup"] in result.error
    assert env.states[-1][0] == "failed"
    assert agent.read_bytes() == new  # the only complete version there is
    assert sorted(os.listdir(agent.parent)) == ["agent"]
    assert UpdateState(str(env.work)).floor("agent") == "1.0.0"
    assert Journal(str(env.work)).read() is None
    assert env.updater().recover() is None


@pytest.mark.timeout(60)
def test_recovery_when_the_installed_file_was_deleted_after_the_crash_restores_the_backup(env) -> None:
    agent = env.work / "bin" / "agent"
    old = agent.read_bytes()
    crash_after_swap(env)
    os.unlink(agent)
    result = env.updater().recover(env.progress)
    assert result is not None and result.rolled_back and not result.success
    assert result.error.startswith("D4003 update to 2.0.0: interrupted after the swap"), result.error
    assert agent.read_bytes() == old and os.stat(agent).st_mode & 0o777 == 0o755
    assert UpdateState(str(env.work)).floor("agent") == "1.0.0"
    assert Journal(str(env.work)).read() is None


def test_rollback_on_a_host_that_never_made_a_backup_fails_with_d4004(env) -> None:
    agent = env.work / "bin" / "agent"
    before = agent.read_bytes()
    assert not os.path.exists(env.cfg.update.backup_dir)
    result = env.updater().rollback("agent", env.progress)
    assert not result.success and result.error.startswith("D4004 rollback: no backup of agent in")
    assert agent.read_bytes() == before
    assert env.states[-1][0] == "failed"


@pytest.mark.timeout(60)
def test_rollback_to_a_backup_that_does_not_run_fails_with_d4004_after_restoring_it(env) -> None:
    """The operator asked for the previous version; it is put back as asked, but it does not
    heartbeat: the result must not claim success."""
    agent = env.work / "bin" / "agent"
    agent.write_bytes(agent_script("1.0.0", healthy=False))  # installed long ago; broken since
    sup = ProcessSupervisor(str(agent), env.work)
    env.reconfigure(verify_timeout="2s")
    try:
        updater = env.updater(supervisor=sup)
        assert updater.run(env.request(env.release("2.0.0", agent_script("2.0.0")))).success
        result = updater.rollback("agent", env.progress)
    finally:
        sup.stop_agent()
    assert not result.success
    assert result.error.startswith("D4004 rollback: agent 1.0.0 was restored but has not reported healthy")
    assert agent.read_bytes() == agent_script("1.0.0", healthy=False)
    state = UpdateState(str(env.work))
    assert (state.installed("agent"), state.floor("agent")) == ("1.0.0", "2.0.0")
    assert state.component("agent")["history"][-1]["action"] == "rollback"


LOCK_HOLDER = """
import sys
sys.path.insert(0, {root!r})
from daemon_app.update.flow import UpdateLock
with UpdateLock({work!r}).hold("agent", "3.0.0"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.timeout(60)
def test_recovery_leaves_the_journal_alone_while_another_process_holds_the_update_lock(env) -> None:
    """A `daemon update` in another process is mid-way: recovery must not undo that process's work;
    it settles the journal once the lock is free."""
    agent = env.work / "bin" / "agent"
    old = agent.read_bytes()
    proc = run_cli_update(env, env.release("2.0.0"), "after_backup")
    assert proc.returncode == -signal.SIGKILL
    entry = Journal(str(env.work)).read()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER.format(root=str(ROOT), work=str(env.work))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert env.updater().recover(env.progress) is None
        assert Journal(str(env.work)).read() == entry
        assert agent.read_bytes() == old
    finally:
        holder.communicate("", timeout=30)
    result = env.updater().recover(env.progress)
    assert result is not None and result.error.startswith("D4003 update interrupted (backed_up)")
    assert Journal(str(env.work)).read() is None and agent.read_bytes() == old


# --- kill -9 during the health check (journal phase "verifying") --------------------------------

GATED_AGENT = """#!{python}
import os, pathlib, time
version_file = pathlib.Path(os.environ["AGENT_VERSION_FILE"])
with open(version_file.with_name("agent.pids"), "a") as fh:
    fh.write("%d\\n" % os.getpid())
# Silent until the test allows it: the updater is still waiting for this heartbeat when it is killed.
go, deadline = version_file.with_name("go"), time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
version_file.write_text({version!r})
time.sleep(600)
"""

UPDATER_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from daemon_app import config
from daemon_app.update.flow import Updater, UpdateRequest
from tests.update_support import ProcessSupervisor

cfg = config.load({config!r})
sup = ProcessSupervisor(cfg.agent.binary_path, Path({work!r}))
sup.start_agent()
Updater(cfg, supervisor=sup).run(UpdateRequest.from_dir("agent", {release!r}, file={release!r} + "/package"))
"""


def _stop_orphans(work) -> None:
    """A kill -9 of the updater leaves its Agent running; the daemon would adopt it, the test's
    supervisor stand-in cannot, so it is stopped here (as a reboot would)."""
    try:
        pids = [int(p) for p in (work / "agent.pids").read_text().split()]
    except FileNotFoundError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(90)
@pytest.mark.parametrize("heartbeats_after_restart", [True, False], ids=["new-agent-healthy", "still-silent"])
def test_kill_9_during_the_health_check_is_settled_by_checking_again(env, heartbeats_after_restart) -> None:
    agent = env.work / "bin" / "agent"
    agent.write_bytes(agent_script("1.0.0"))
    old = agent.read_bytes()
    rel = env.release("2.0.0", GATED_AGENT.format(python=sys.executable, version="2.0.0").encode())
    cfg_path = write_config(env.work / "daemon.yaml", base_config(
        env.work, agent={"binary_path": str(agent)}, update={"min_free_bytes": 0, "verify_timeout": "60s"}))
    child = subprocess.Popen([sys.executable, "-c", UPDATER_CHILD.format(
        root=str(ROOT), config=cfg_path, work=str(env.work), release=str(rel))], cwd=str(ROOT))
    try:
        wait_until(lambda: (Journal(str(env.work)).read() or {}).get("phase") == "verifying", timeout=30,
                   what="the update to wait for the new Agent's heartbeat")
        child.kill()
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        _stop_orphans(env.work)
    assert agent.read_bytes() == (rel / "package").read_bytes()

    if heartbeats_after_restart:
        (env.work / "go").touch()
    env.reconfigure(verify_timeout="5s" if heartbeats_after_restart else "1s")
    sup = ProcessSupervisor(str(agent), env.work)
    try:
        result = env.updater(supervisor=sup).recover(env.progress)
        assert result is not None
        state = UpdateState(str(env.work))
        if heartbeats_after_restart:
            assert result.success and not result.rolled_back, result.error
            assert "verified after a restart" in result.message
            assert sup.current_version() == "2.0.0" and state.floor("agent") == "2.0.0"
        else:
            assert result.rolled_back and not result.success
            assert result.error.startswith("D4003 update to 2.0.0: interrupted after the swap"), result.error
            assert agent.read_bytes() == old and sup.wait_for_heartbeat("1.0.0", 10)
            assert state.floor("agent") == "1.0.0"
    finally:
        sup.stop_agent()
        _stop_orphans(env.work)
    assert Journal(str(env.work)).read() is None
    assert sorted(os.listdir(agent.parent)) == ["agent"]
