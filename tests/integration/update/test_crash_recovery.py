"""kill -9 at each phase of an update, then recover(): exactly one complete version is installed,
no temp files or downloads are left, and the floor matches what is installed."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from daemon_app.update.state import Journal, UpdateState
from tests.helpers import ROOT, daemon_cmd, write_config
from tests.update_support import ProcessSupervisor, agent_script, base_config


def run_cli_update(env, rel, crash_at: str) -> subprocess.CompletedProcess[bytes]:
    raw = base_config(env.work, agent={"binary_path": str(env.work / "bin" / "agent")},
                      update={"min_free_bytes": 0})
    path = write_config(env.work / "daemon.yaml", raw)
    environ = dict(os.environ, PYTHONPATH=str(ROOT), DAEMON_TEST_CRASH_AT=crash_at)
    return subprocess.run(daemon_cmd("-c", path, "update", "--component", "agent", "--file",
                                     str(rel / "package"), "--manifest", str(rel)),
                          env=environ, capture_output=True, timeout=60, cwd=str(ROOT))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("crash_at", "journal_phase", "installed"), [
    ("after_download", "downloaded", "old"),
    ("after_backup", "backed_up", "old"),
    # killed between the rename and the journal's record of it: recovery believes the disk
    ("swap_window", "backed_up", "new"),
    ("after_swap", "swapped", "new"),
])
def test_kill_9_at_each_phase_then_recover_leaves_one_complete_version(env, crash_at, journal_phase,
                                                                       installed) -> None:
    agent = env.work / "bin" / "agent"
    old = agent.read_bytes()
    rel = env.release("2.0.0")
    new = (rel / "package").read_bytes()
    proc = run_cli_update(env, rel, crash_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert Journal(str(env.work)).read()["phase"] == journal_phase

    result = env.updater().recover(env.progress)
    assert result is not None
    assert agent.read_bytes() == (new if installed == "new" else old)
    assert os.stat(agent).st_mode & 0o777 == 0o755
    assert sorted(os.listdir(agent.parent)) == ["agent"]
    assert os.listdir(env.cfg.update.download_dir) == []
    assert Journal(str(env.work)).read() is None
    state = UpdateState(str(env.work))
    if installed == "new":
        assert result.success and state.floor("agent") == "2.0.0"
    else:
        assert not result.success and result.error.startswith("D4003")
        assert state.floor("agent") == "1.0.0"
    assert env.updater().recover() is None


@pytest.mark.timeout(60)
def test_crash_after_swap_with_an_agent_that_fails_its_check_is_rolled_back_on_recovery(env) -> None:
    agent = env.work / "bin" / "agent"
    agent.write_bytes(agent_script("1.0.0"))
    old = agent.read_bytes()
    rel = env.release("2.0.0", agent_script("2.0.0", healthy=False))
    proc = run_cli_update(env, rel, "after_swap")
    assert proc.returncode == -signal.SIGKILL
    sup = ProcessSupervisor(str(agent), env.work)
    env.reconfigure(verify_timeout="2s")
    try:
        result = env.updater(supervisor=sup).recover(env.progress)
        assert result is not None and result.rolled_back and not result.success
        assert agent.read_bytes() == old
        assert sup.wait_for_heartbeat("1.0.0", 10)
    finally:
        sup.stop_agent()
    assert UpdateState(str(env.work)).floor("agent") == "1.0.0"
    assert env.states[-1][0] == "rolled_back"


@pytest.mark.timeout(60)
def test_an_interrupted_update_is_settled_before_the_next_one_runs(env) -> None:
    proc = run_cli_update(env, env.release("2.0.0"), "after_backup")
    assert proc.returncode == -signal.SIGKILL
    result = env.updater().run(env.request(env.release("2.1.0")), env.progress)
    assert result.success, result.error
    assert UpdateState(str(env.work)).floor("agent") == "2.1.0"
    assert "failed" in [s[0] for s in env.states]
