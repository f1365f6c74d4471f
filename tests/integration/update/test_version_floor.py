"""The version floor counts what actually runs: a validly signed older release never installs over an
Agent that was put there before the daemon ever updated it; only `rollback` goes down."""

from __future__ import annotations

import os
import shutil

import pytest

from daemon_app.update.state import UpdateState
from tests.helpers import wait_until
from tests.live_update import kill_agent, make_site, sample_agent
from tests.update_support import ProcessSupervisor, agent_script, snapshot


@pytest.fixture
def fresh(env):
    """Like `env`, but no update was ever recorded: state.json does not exist."""
    shutil.rmtree(env.work / "update")
    assert UpdateState(str(env.work)).floor("agent") is None
    return env


@pytest.fixture
def agent2(fresh):
    """Agent 2.0.0 installed by hand and running (its heartbeat says 2.0.0); nothing recorded."""
    agent = fresh.work / "bin" / "agent"
    agent.write_bytes(agent_script("2.0.0"))
    os.chmod(agent, 0o755)
    sup = ProcessSupervisor(str(agent), fresh.work)
    sup.start_agent()
    assert sup.wait_for_heartbeat("2.0.0", 10)
    yield sup
    sup.stop_agent()


@pytest.mark.timeout(60)
def test_signed_older_release_is_refused_when_the_running_agent_is_newer(fresh, agent2) -> None:
    before = snapshot(fresh.cfg)
    started = list(agent2.started_versions)
    result = fresh.updater(supervisor=agent2).run(fresh.request(fresh.release("1.0.0")), fresh.progress)
    assert not result.success and not result.rolled_back
    assert result.error.startswith("D4002 manifest: agent 1.0.0 is older than 2.0.0, the version running now")
    assert "rollback" in result.error
    assert snapshot(fresh.cfg) == before
    assert agent2.current_version() == "2.0.0" and agent2.started_versions == started  # never stopped
    assert fresh.states[-1][0] == "failed"


def test_signed_older_release_is_refused_when_the_install_record_is_newer(fresh) -> None:
    # e.g. an operator `rollback` recorded 2.0.0 without raising a floor; no daemon runs the Agent
    UpdateState(str(fresh.work)).record("agent", "rollback", "2.0.0", raise_floor=False)
    before = snapshot(fresh.cfg)
    result = fresh.updater().run(fresh.request(fresh.release("1.5.0")), fresh.progress)
    assert result.error.startswith("D4002 manifest: agent 1.5.0 is older than 2.0.0, "
                                   "the version recorded as installed")
    assert snapshot(fresh.cfg) == before


@pytest.mark.timeout(60)
def test_newer_release_still_installs_over_a_hand_installed_agent(fresh, agent2) -> None:
    release = fresh.release("2.1.0", agent_script("2.1.0"))
    result = fresh.updater(supervisor=agent2).run(fresh.request(release), fresh.progress)
    assert result.success, result.error
    assert agent2.current_version() == "2.1.0"
    assert UpdateState(str(fresh.work)).floor("agent") == "2.1.0"


def test_a_running_version_that_is_not_a_version_does_not_block_or_crash(fresh) -> None:
    class Odd(ProcessSupervisor):
        def current_version(self) -> str:
            return "dev-build"

    sup = Odd(str(fresh.work / "bin" / "agent"), fresh.work)
    result = fresh.updater().run(fresh.request(fresh.release("0.5.0")), fresh.progress)
    assert result.success, result.error  # no floor anywhere: installs
    assert fresh.updater(supervisor=sup).version_floor("agent", sup.current_version()) is not None


@pytest.mark.timeout(90)
def test_live_daemon_refuses_a_pushed_signed_downgrade_of_a_hand_installed_agent(tmp_path, daemon_processes
                                                                               ) -> None:
    site = make_site(tmp_path)
    try:
        site.install_agent("2.0.0")
        daemon_processes(site.daemon_config())
        wait_until(lambda: site.agent_version() == "2.0.0", timeout=30, what="Agent 2.0.0 heartbeating")
        assert UpdateState(str(site.work)).floor("agent") is None
        installed = (site.work / "bin" / "agent").read_bytes()
        pkg, rel = site.release("old", "agent", "1.0.0", sample_agent("1.0.0"))
        done = site.wait_final(site.push_update(pkg, rel))
        assert done["state"] == "failed", done
        assert done["result"]["error"].startswith("D4002 manifest: agent 1.0.0 is older than 2.0.0")
        assert (site.work / "bin" / "agent").read_bytes() == installed
        assert site.agent_version() == "2.0.0"
    finally:
        kill_agent(site.work)
        site.stop()
