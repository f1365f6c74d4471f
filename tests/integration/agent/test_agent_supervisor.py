"""The supervisor in-process with real sample Agents: lifecycle, restarts, backoff, adoption, health."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from daemon_app.agent.process import start_ticks
from tests.helpers import wait_until
from tests.integration.agent.conftest import alive

pytestmark = pytest.mark.timeout(60)


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        items = [kv.split(b"=", 1) for kv in fh.read().split(b"\0") if kv]
    return {k.decode(): v.decode() for k, v in items}


def test_agent_reaches_running_with_pid_file_clean_env_and_own_session(harness, monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "INVOCATION_ID", "JOURNAL_STREAM"):
        monkeypatch.setenv(name, "from-systemd")
    sup, rec = harness.supervisor()
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(sup.pid)
    with open(sup.pid_file) as fh:
        record = json.load(fh)
    assert record["pid"] == pid and record["start_ticks"] == start_ticks(pid)
    env = environ_of(pid)
    assert set(env) == {"PATH", "LANG", "AGENT_SOCKET", "AGENT_CONFIG"}
    assert env["AGENT_SOCKET"] == sup.cfg.agent.socket_path
    assert env["AGENT_CONFIG"] == sup.cfg.agent.config_file
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert os.path.isdir(sup.cfg.agent.work_dir)
    assert os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(sup.cfg.agent.work_dir)
    assert os.readlink(f"/proc/{pid}/fd/2") == sup.stderr_log
    assert sup.wait_for_heartbeat(None, 5)
    status = sup.agent_status()
    assert status["state"] == "RUNNING" and status["pid"] == pid and status["version"] == "1.0.0"
    assert status["heartbeats_received"] >= 1 and status["last_heartbeat"]
    assert rec.types()[:2] == ["started", "running"]
    first = rec.of("started")[0]
    assert first["pid"] == pid and first["state"] == "STARTING" and first["timestamp"].endswith("Z")
    mode = stat.S_IMODE(os.stat(sup.cfg.agent.socket_path).st_mode)
    assert mode == 0o600


def test_kill9_restarts_a_new_agent_within_one_second(harness):
    sup, rec = harness.supervisor()
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    old = harness.track(sup.pid)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: sup.pid not in (0, old) and alive(sup.pid), 1.0, interval=0.005,
               what="a new Agent")
    harness.track(sup.pid)
    started = rec.wait_for("started", 2)
    assert started["_mono"] - killed_at < 1.0
    exited = rec.of("exited")[0]
    assert exited["pid"] == old and exited["signal"] == signal.SIGKILL and exited["exit_code"] is None
    assert any("started" in line for line in exited["stderr_tail"])
    types = rec.types()
    assert types[types.index("exited"):types.index("exited") + 3] == ["exited", "restarting", "started"]
    assert rec.of("restarting")[0]["delay"] == 0.0
    assert sup.agent_status()["restart_count"] == 1
    assert sup.agent_status()["last_exit"]["signal"] == signal.SIGKILL


def test_crash_loop_follows_backoff_schedule_then_fatal_until_reset(harness):
    sup, rec = harness.supervisor(
        args=["--exit-at-start", "7"],
        restart={"max_retries": 5, "backoff_base": "150ms", "backoff_max": "400ms"})
    fatal = rec.wait_for("fatal", 1, timeout=20)
    assert sup.state == "FATAL" and fatal["restart_count"] == 5
    delays = [e["delay"] for e in rec.of("restarting")]
    assert delays == [0.0, 0.15, 0.15, 0.4, 0.4]  # 0, base, base, min(3·base, max), ...
    assert [e["delay"] for e in rec.of("backoff")] == [0.15, 0.15, 0.4, 0.4]
    exits, starts = rec.of("exited"), rec.of("started")
    assert len(starts) == 6 and len(exits) == 6
    for exit_event, next_start, delay in zip(exits, starts[1:], delays, strict=False):
        assert next_start["_mono"] - exit_event["_mono"] >= delay - 0.01
    assert all(e["exit_code"] == 7 for e in exits)
    assert any("code 7" in line for line in exits[-1]["stderr_tail"])
    # The shape of one crash: exited, restarting, backoff (when delayed), started; the end: fatal.
    types = rec.types()
    assert types[:5] == ["started", "exited", "restarting", "started", "exited"]
    assert types[-2:] == ["exited", "fatal"]
    assert types.count("running") == 0
    # FATAL stays FATAL: nothing is scheduled to restart it ...
    assert sup.state == "FATAL" and not set(sup._timers) - {"logs"}
    # ... until an operator acts; the count starts over.
    sup.reset()
    rec.wait_for("started", 7)
    rec.wait_for("exited", 7)
    assert rec.wait_for("restarting", 6)["delay"] == 0.0


def test_pid_file_naming_an_unrelated_process_is_ignored_and_that_process_left_alone(harness):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_until(lambda: start_ticks(sleeper.pid), 5, what="sleeper")
        # An old Agent's pid file whose pid now belongs to someone else: same pid, other start time.
        os.makedirs(harness.dir, exist_ok=True)
        with open(os.path.join(harness.dir, "agent.pid"), "w") as fh:
            json.dump({"pid": sleeper.pid, "start_ticks": start_ticks(sleeper.pid) - 1}, fh)
        sup, rec = harness.supervisor()
        wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
        harness.track(sup.pid)
        assert sup.pid != sleeper.pid
        assert sleeper.poll() is None
        assert "adopted" not in rec.types()
        with open(sup.pid_file) as fh:
            assert json.load(fh)["pid"] == sup.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_adopts_a_running_agent_instead_of_starting_a_second_one(harness):
    first, _ = harness.supervisor()
    wait_until(lambda: first.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(first.pid)
    first.stop(time.monotonic() + 5)  # the service stops watching; the Agent lives on
    assert alive(pid)
    second, rec = harness.supervisor()
    assert second.pid == pid and second.state == "RUNNING"
    assert rec.types() == ["adopted"]
    assert second.status()["adopted"] is True
    assert second.wait_for_heartbeat(None, 5)  # it reconnected to the new socket
    # Exit of an adopted (non-child) Agent is still seen at once, with the status unknown.
    os.kill(pid, signal.SIGKILL)
    exited = rec.wait_for("exited", 1, timeout=5)
    assert exited["exit_known"] is False and exited["exit_code"] is None
    rec.wait_for("started", 1)
    assert harness.track(second.pid) != pid


def test_no_heartbeats_restart_with_reason_heartbeat_timeout(harness):
    sup, rec = harness.supervisor(args=["--no-heartbeat"], health_check={"heartbeat_timeout": "600ms"})
    unhealthy = rec.wait_for("unhealthy", 1, timeout=10)
    assert unhealthy["reason"] == "heartbeat_timeout"
    rec.wait_for("started", 2)
    assert rec.types()[:6] == ["started", "running", "unhealthy", "exited", "restarting", "started"]
    exited = rec.of("exited")[0]
    assert exited["reason"] == "heartbeat_timeout" and exited["exit_code"] == 0  # SIGTERM, clean exit
    assert rec.of("restarting")[0]["reason"] == "heartbeat_timeout"
    assert rec.of("running")[0]["via"] == "start_seconds"


def test_cpu_over_threshold_for_the_duration_restarts_with_reason(harness):
    sup, rec = harness.supervisor(args=["--interval", "0.2", "--burn-cpu"],
                                  health_check={"cpu_threshold": 20.0, "threshold_duration": "500ms"})
    unhealthy = rec.wait_for("unhealthy", 1, timeout=15)
    assert unhealthy["reason"] == "cpu_threshold"
    restarting = rec.wait_for("restarting", 1)
    assert restarting["reason"] == "cpu_threshold"
    types = rec.types()
    assert types[types.index("unhealthy"):types.index("unhealthy") + 3] == ["unhealthy", "exited",
                                                                            "restarting"]


def test_memory_over_threshold_for_the_duration_restarts_with_reason(harness):
    sup, rec = harness.supervisor(args=["--interval", "0.2", "--grow-memory", "30"],
                                  health_check={"memory_threshold": "60MiB", "threshold_duration": "500ms"})
    unhealthy = rec.wait_for("unhealthy", 1, timeout=15)
    assert unhealthy["reason"] == "memory_threshold"
    assert rec.wait_for("restarting", 1)["reason"] == "memory_threshold"


def test_brief_cpu_spike_shorter_than_the_duration_does_not_restart(harness):
    sup, rec = harness.supervisor(args=["--interval", "0.2", "--burn-cpu", "--burn-for", "0.3"],
                                  health_check={"cpu_threshold": 20.0, "threshold_duration": "1500ms"})
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(sup.pid)
    peak = 0.0

    def spike_seen_then_calm() -> bool:
        nonlocal peak
        cpu = sup.status()["cpu_percent"]  # None until the first health check measured it
        if cpu is None:
            return False
        peak = max(peak, cpu)
        return peak > 20.0 and cpu < 5.0

    wait_until(spike_seen_then_calm, 10, what="a CPU spike then calm")
    checks = sup.status()["health_checks"]
    # Well past the duration, counted in health ticks rather than slept.
    wait_until(lambda: sup.status()["health_checks"] >= checks + 20, 10, what="20 more health checks")
    assert sup.pid == pid and "unhealthy" not in rec.types()


def test_stop_agent_stays_stopped_and_start_agent_and_heartbeat_wait(harness):
    sup, rec = harness.supervisor()
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(sup.pid)
    sup.stop_agent()
    assert sup.state == "STOPPED" and sup.pid == 0 and not alive(pid)
    assert not os.path.exists(sup.pid_file)
    stopped = rec.of("stopped")[0]
    assert stopped["exit_code"] == 0 and stopped["pid"] == pid
    checks = sup.status()["health_checks"]
    wait_until(lambda: sup._timers.keys() <= {"logs"}, 2, what="no pending restart")
    assert sup.state == "STOPPED" and sup.status()["health_checks"] == checks
    sup.start_agent()
    harness.track(sup.pid)
    assert sup.state in ("STARTING", "RUNNING") and sup.pid not in (0, pid)
    assert sup.wait_for_heartbeat("1.0.0", 5)
    assert sup.current_version() == "1.0.0"
    assert not sup.wait_for_heartbeat("9.9.9", 0.5)
    event = sup.emit("updated", old_version="1.0.0", new_version="1.0.0")
    assert rec.of("updated")[0] == dict(event, _mono=rec.of("updated")[0]["_mono"])
    assert event["state"] == sup.state and event["pid"] == sup.pid
    assert rec.types()[-4:] == ["stopped", "started", "running", "updated"]
    before = sup.pid
    sup.restart_agent()
    assert harness.track(sup.pid) not in (0, before) and sup.state in ("STARTING", "RUNNING")
    rec.wait_for("started", 3)
    assert rec.types()[rec.types().index("updated") + 1:][:3] == ["exited", "restarting", "started"]
    assert rec.of("restarting")[-1]["reason"] == "requested"


def test_stop_escalates_to_sigkill_for_the_whole_group(harness):
    script = os.path.join(harness.dir, "stubborn.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\ntrap '' TERM\nsleep 60 &\necho stubborn >&2\nwhile :; do sleep 0.05; done\n")
    os.chmod(script, 0o755)
    sup, rec = harness.supervisor(binary_path=script, args=[], start_seconds="0s")
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    pid = harness.track(sup.pid)
    wait_until(lambda: len(os.popen(f"pgrep -g {pid}").read().split()) >= 2, 5, what="group members")
    began = time.monotonic()
    sup.stop_agent(timeout=0.3)
    assert time.monotonic() - began >= 0.3
    assert rec.of("stopped")[0]["signal"] == signal.SIGKILL
    wait_until(lambda: not os.popen(f"pgrep -g {pid}").read().split(), 5, what="the group gone")


def test_manager_commands_start_stop_restart_reset(harness):
    sup, rec = harness.supervisor()
    engine = sup.host
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    first = harness.track(sup.pid)
    assert engine.dispatch_command({"type": "agent", "action": "restart", "id": "c1"})
    wait_until(lambda: sup.pid not in (0, first) and sup.state == "RUNNING", 10, what="restarted")
    harness.track(sup.pid)
    assert rec.of("restarting")[0]["reason"] == "requested"
    assert sup.agent_status()["restart_count"] == 0  # an operator restart is not a failure
    engine.dispatch_command({"type": "agent", "action": "stop", "id": "c2"})
    wait_until(lambda: sup.state == "STOPPED", 10, what="STOPPED")
    engine.dispatch_command({"type": "agent", "action": "bogus", "id": "c3"})
    engine.dispatch_command({"type": "agent", "action": "start", "id": "c4"})
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING again")
    harness.track(sup.pid)
    engine.dispatch_command({"type": "agent", "action": "reset", "id": "c5"})
    wait_until(lambda: sup.agent_status()["restart_count"] == 0, 5, what="count reset")
    assert rec.types().count("stopped") == 1


def test_start_failure_is_reported_and_retried_with_backoff(harness):
    missing = os.path.join(harness.dir, "no-such-agent")
    sup, rec = harness.supervisor(binary_path=missing, restart={"max_retries": 2})
    rec.wait_for("fatal", 1, timeout=10)
    exited = rec.of("exited")
    assert len(exited) == 3 and "D3001" in exited[0]["error"] and missing in exited[0]["error"]
    assert sup.agent_status()["last_exit"]["error"].startswith("D3001")


def test_stable_running_resets_the_restart_count(harness):
    sup, rec = harness.supervisor(restart={"stable_after": "700ms"})
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    os.kill(harness.track(sup.pid), signal.SIGKILL)
    rec.wait_for("running", 2)
    assert sup.agent_status()["restart_count"] == 1
    wait_until(lambda: sup.agent_status()["restart_count"] == 0, 5, what="count reset after stable run")
    os.kill(harness.track(sup.pid), signal.SIGKILL)
    assert rec.wait_for("restarting", 2)["delay"] == 0.0  # back to the start of the schedule


def test_reload_applies_new_health_timings_and_a_new_socket(harness):
    sup, rec = harness.supervisor(args=["--no-heartbeat"], health_check={"heartbeat_timeout": "60s"})
    wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
    harness.track(sup.pid)
    new_socket = os.path.join(harness.dir, "other.sock")
    sup.reload(harness.config(args=["--no-heartbeat"], socket_path=new_socket,
                              health_check={"heartbeat_timeout": "500ms"}))
    assert rec.wait_for("unhealthy", 1, timeout=10)["reason"] == "heartbeat_timeout"
    assert stat.S_ISSOCK(os.stat(new_socket).st_mode)
    assert not os.path.exists(os.path.join(harness.dir, "agent.sock"))
    rec.wait_for("started", 2)
    assert environ_of(harness.track(sup.pid))["AGENT_SOCKET"] == new_socket
