"""Agent updates through the supervisor interface, with a real Agent process: health-checked swap,
automatic rollback, and the operator's `rollback`."""

from __future__ import annotations

import os

import pytest

from daemon_app.update import install
from daemon_app.update.state import UpdateState
from tests.update_support import ProcessSupervisor, agent_script


@pytest.fixture
def running(env):
    agent = env.work / "bin" / "agent"
    agent.write_bytes(agent_script("1.0.0"))
    os.chmod(agent, 0o755)
    sup = ProcessSupervisor(str(agent), env.work)
    sup.start_agent()
    assert sup.wait_for_heartbeat("1.0.0", 10)
    env.reconfigure(verify_timeout="5s")
    yield sup
    sup.stop_agent()


@pytest.mark.timeout(60)
def test_agent_update_restarts_into_the_new_version_and_waits_for_its_heartbeat(env, running) -> None:
    new = agent_script("2.0.0")
    result = env.updater(supervisor=running).run(env.request(env.release("2.0.0", new)), env.progress)
    assert result.success, result.error
    assert (result.old_version, result.new_version, result.rolled_back) == ("1.0.0", "2.0.0", False)
    assert running.current_version() == "2.0.0"
    assert [e[0] for e in running.events] == ["updated"]
    states = [s[0] for s in env.states if s[0] != "downloading"]
    assert states.index("installing") < states.index("restarting") < states.index("watching")
    assert states[-1] == "completed"
    assert UpdateState(str(env.work)).floor("agent") == "2.0.0"


@pytest.mark.timeout(60)
def test_agent_that_never_heartbeats_is_rolled_back_and_the_old_one_restarted(env, running) -> None:
    env.reconfigure(verify_timeout="1s")
    before = (env.work / "bin" / "agent").read_bytes()
    result = env.updater(supervisor=running).run(
        env.request(env.release("2.0.0", agent_script("2.0.0", healthy=False))), env.progress)
    assert not result.success and result.rolled_back
    assert result.error.startswith("D4003 agent 2.0.0:") and "restored 1.0.0" in result.error
    assert (env.work / "bin" / "agent").read_bytes() == before
    assert running.wait_for_heartbeat("1.0.0", 10)
    assert [e[0] for e in running.events] == ["rolled_back"]
    assert env.states[-1][0] == "rolled_back"
    assert UpdateState(str(env.work)).floor("agent") == "1.0.0"
    assert os.listdir(env.cfg.update.download_dir) == []


@pytest.mark.timeout(60)
def test_rollback_restores_the_previous_version_and_keeps_the_floor(env, running) -> None:
    updater = env.updater(supervisor=running)
    assert updater.run(env.request(env.release("2.0.0", agent_script("2.0.0"))), env.progress).success
    result = updater.rollback("agent", env.progress)
    assert result.success and result.rolled_back, result.error
    assert (result.old_version, result.new_version) == ("2.0.0", "1.0.0")
    assert running.current_version() == "1.0.0"
    state = UpdateState(str(env.work))
    assert state.floor("agent") == "2.0.0" and state.installed("agent") == "1.0.0"
    assert state.component("agent")["history"][-1]["action"] == "rollback"
    assert install.list_backups(env.cfg.update.backup_dir, "agent") == []
    again = updater.rollback("agent", env.progress)
    assert not again.success and again.error.startswith("D4004 rollback: no backup of agent")


def test_backups_are_pruned_to_max_backups(env) -> None:
    env.reconfigure(max_backups=2)
    for version in ("1.1.0", "1.2.0", "1.3.0", "1.4.0"):
        assert env.updater().run(env.request(env.release(version)), env.progress).success
    backups = install.list_backups(env.cfg.update.backup_dir, "agent")
    assert [b.version for b in backups] == ["1.3.0", "1.2.0"]
