"""Agent updates end to end: `daemon-manager push-update` -> a real Manager (mutual TLS, gRPC command
stream, HTTPS package server) -> a real daemon -> the real sample Agent, and back to `updates`."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from daemon_app import control
from daemon_app.update.state import Journal, UpdateState
from tests.helpers import ROOT, daemon_cmd, wait_until
from tests.live_update import kill_agent, make_site, sample_agent


@pytest.fixture
def site(tmp_path):
    """Request it before `daemon_processes`: the daemons are killed first, then their Agent."""
    site = make_site(tmp_path)
    site.install_agent("1.0.0")
    yield site
    kill_agent(site.work)
    site.stop()


def start_daemon(site, daemon_processes, **kw):
    proc = daemon_processes(site.daemon_config(), **kw)
    wait_until(lambda: site.agent_version() == "1.0.0", timeout=30,
               what="node registered, Agent 1.0.0 heartbeating")
    return proc


@pytest.mark.timeout(60)
def test_push_update_installs_the_new_agent_and_updates_shows_completed(site, daemon_processes) -> None:
    start_daemon(site, daemon_processes)
    pkg, rel = site.release("a2", "agent", "2.0.0", sample_agent("2.0.0"))
    cid = site.push_update(pkg, rel)

    done = site.wait_final(cid)
    assert done["state"] == "completed", done
    assert done["result"]["success"] and done["result"]["new_version"] == "2.0.0"
    assert done["result"]["old_version"] == "1.0.0"
    wait_until(lambda: site.agent_version() == "2.0.0", timeout=10, what="the Manager to see Agent 2.0.0")
    assert (site.work / "bin" / "agent").read_bytes() == pkg.read_bytes()
    assert UpdateState(str(site.work)).floor("agent") == "2.0.0"

    shown = next(u for u in site.updates() if u["id"] == cid)
    states = [s["state"] for s in shown["statuses"]]
    assert states[-1] == "completed"
    for state in ("downloading", "verifying", "installing", "restarting", "watching"):
        assert state in states, states
    assert shown["url"].startswith("https://127.0.0.1:") and shown["version"] == "2.0.0"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["exit_at_start", "no_heartbeat"])
def test_a_broken_agent_is_rolled_back_and_the_old_one_runs_again(site, daemon_processes, fault) -> None:
    start_daemon(site, daemon_processes)
    old = (site.work / "bin" / "agent").read_bytes()
    pkg, rel = site.release("bad", "agent", "2.0.0", sample_agent("2.0.0", fault))
    cid = site.push_update(pkg, rel)

    done = site.wait_final(cid)
    assert done["state"] == "rolled_back", done
    assert done["result"]["rolled_back"] and not done["result"]["success"]
    assert done["result"]["error"].startswith("D4003 agent 2.0.0:")
    assert (site.work / "bin" / "agent").read_bytes() == old
    wait_until(lambda: site.agent_version() == "1.0.0", timeout=10, what="Agent 1.0.0 heartbeating again")
    assert UpdateState(str(site.work)).floor("agent") is None  # nothing was ever raised
    assert next(u for u in site.updates() if u["id"] == cid)["state"] == "rolled_back"


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("crash_at", "outcome", "running"), [
    ("after_download", "failed", "1.0.0"),
    ("after_backup", "failed", "1.0.0"),
    ("after_swap", "completed", "2.0.0"),
])
def test_kill_9_during_a_pushed_update_is_settled_and_reported_by_the_next_daemon(
        site, daemon_processes, crash_at, outcome, running) -> None:
    proc = start_daemon(site, daemon_processes, extra_env={"DAEMON_TEST_CRASH_AT": crash_at})
    old = (site.work / "bin" / "agent").read_bytes()
    pkg, rel = site.release("a2", "agent", "2.0.0", sample_agent("2.0.0"))
    cid = site.push_update(pkg, rel)
    assert proc.proc.wait(30) == -signal.SIGKILL
    assert Journal(str(site.work)).read() is not None

    daemon_processes(site.daemon_config())
    done = site.wait_final(cid)
    assert done["state"] == outcome, done
    installed = (site.work / "bin" / "agent").read_bytes()
    assert installed == (pkg.read_bytes() if running == "2.0.0" else old)
    assert sorted(p.name for p in (site.work / "bin").iterdir()) == ["agent"]  # no temp file left
    wait_until(lambda: site.agent_version() == running, timeout=15, what=f"Agent {running} heartbeating")
    assert Journal(str(site.work)).read() is None
    assert UpdateState(str(site.work)).floor("agent") == ("2.0.0" if outcome == "completed" else None)
    if outcome == "failed":
        assert "interrupted" in done["result"]["error"] and done["result"]["error"].startswith("D4003")


def daemon_cli(site, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(daemon_cmd("-c", str(site.work / "daemon.yaml"), *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.timeout(60)
def test_daemon_update_and_rollback_go_through_the_running_daemon(site, daemon_processes) -> None:
    start_daemon(site, daemon_processes)
    old = (site.work / "bin" / "agent").read_bytes()
    pkg, rel = site.release("a2", "agent", "2.0.0", sample_agent("2.0.0"))

    code, result, err = finish(daemon_cli(site, "update", "--component", "agent", "--file", str(pkg),
                                          "--manifest", str(rel)))
    assert code == 0, err
    assert result["success"] and result["new_version"] == "2.0.0"
    assert "running in the daemon" in err and "watching" in err and "completed" in err
    wait_until(lambda: site.agent_version() == "2.0.0", timeout=10, what="Agent 2.0.0")

    code, result, err = finish(daemon_cli(site, "rollback", "--component", "agent"))
    assert code == 0, err
    assert result["rolled_back"] and (result["old_version"], result["new_version"]) == ("2.0.0", "1.0.0")
    assert (site.work / "bin" / "agent").read_bytes() == old
    wait_until(lambda: site.agent_version() == "1.0.0", timeout=10, what="Agent 1.0.0 after the rollback")
    state = UpdateState(str(site.work))
    assert state.floor("agent") == "2.0.0" and state.installed("agent") == "1.0.0"


@pytest.mark.timeout(60)
def test_a_second_update_while_one_runs_in_the_daemon_is_refused_with_d4003(site, daemon_processes) -> None:
    start_daemon(site, daemon_processes)
    slow_pkg, slow_rel = site.release("slow", "agent", "2.0.0", sample_agent("2.0.0", "no_heartbeat"))
    pkg, rel = site.release("a3", "agent", "3.0.0", sample_agent("3.0.0"))
    first = daemon_cli(site, "update", "--component", "agent", "--file", str(slow_pkg),
                       "--manifest", str(slow_rel))

    def in_progress() -> bool:
        status = control.request(str(site.work / "control.sock"), "status")
        return bool(status["update"]) and status["update"]["state"] == "watching"

    wait_until(in_progress, timeout=20, what="the first update to be watching its Agent")
    code, result, err = finish(daemon_cli(site, "update", "--component", "agent", "--file", str(pkg),
                                          "--manifest", str(rel)))
    assert code == 1
    assert result["error"].startswith("D4003 another update is in progress"), result
    assert "D4003" in err

    code, result, err = finish(first)
    assert code == 1 and result["rolled_back"], err
    assert "rolled_back" in err
    wait_until(lambda: site.agent_version() == "1.0.0", timeout=10, what="Agent 1.0.0 again")


@pytest.mark.timeout(60)
def test_a_second_pushed_update_while_one_runs_is_reported_failed_with_d4003(site, daemon_processes) -> None:
    start_daemon(site, daemon_processes)
    slow_pkg, slow_rel = site.release("slow", "agent", "2.0.0", sample_agent("2.0.0", "no_heartbeat"))
    pkg, rel = site.release("a3", "agent", "3.0.0", sample_agent("3.0.0"))
    first = site.push_update(slow_pkg, slow_rel)
    wait_until(lambda: site.command(first)["state"] == "watching", timeout=20,
               what="the first update watching")
    second = site.push_update(pkg, rel)

    refused = site.wait_final(second)
    assert refused["state"] == "failed"
    error = refused["result"]["error"]
    assert error.startswith("D4003 another update is in progress (update of agent"), error
    assert site.wait_final(first)["state"] == "rolled_back"
    assert (site.work / "bin" / "agent").read_bytes() != pkg.read_bytes()
