"""Daemon settings set by a Manager (`daemon_settings`): the allow-list, schema checks, a reload
that applies them, the daemon watched for the verify window (commit or roll back), and the overlay
kept across restarts. Real daemon, real Manager link, the real sample Agent where it matters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from daemon_app.proto import daemon_pb2 as pb
from tests.contract.conftest import pki_dir  # noqa: F401 - the certificates, made once per module
from tests.contract.independent_manager import IndependentManager
from tests.helpers import ROOT, DaemonProcess, daemon_cmd, deep_merge, short_tmpdir, wait_until, write_config
from tests.integration.manager.conftest import log_records
from tests.integration.rconfig.conftest import node_config, restart_with_freeze_plugin
from tests.live_update import kill_agent

TERMINAL = ("completed", "rolled_back", "failed", "rejected")


class Node:
    def __init__(self, manager: IndependentManager, daemon: DaemonProcess, work: Path) -> None:
        self.manager, self.daemon, self.work = manager, daemon, work
        self.overlay = work / "remote_config" / "settings.json"

    def set(self, cid: str = "", **values: str) -> pb.CommandStatus:
        cid = self.send(cid, **values)
        return wait_until(lambda: self.terminal(cid), timeout=60, what=f"the end of {cid}")[0]

    def send(self, cid: str = "", **values: str) -> str:
        cid = cid or f"set-{uuid.uuid4().hex[:8]}"
        values = {k.replace("__", "."): v for k, v in values.items()}
        self.manager.push(pb.Command(id=cid, daemon_settings=pb.DaemonSettingsCommand(values=values)))
        return cid

    def terminal(self, cid: str) -> list[pb.CommandStatus]:
        with self.manager.lock:
            return [s for s in self.manager.statuses if s.command_id == cid and s.state in TERMINAL]

    def agent_pid(self) -> int:
        return int(json.loads((self.work / "agent.pid").read_text())["pid"])

    def wait_agent_running(self) -> None:
        """A heartbeat to the Manager, after this call, that says the Agent is RUNNING."""
        seen = self.manager.heartbeat_count()

        def running() -> bool:
            with self.manager.lock:
                return any(hb.agent_status.state == "RUNNING" for _, hb in self.manager.heartbeats[seen:])

        wait_until(running, timeout=30, what="a heartbeat with the Agent RUNNING")

    def shown(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(daemon_cmd("-c", self.daemon.config_path, "config", "show"), capture_output=True,
                             text=True, timeout=60, cwd=str(ROOT), env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture
def start_node(pki_dir, tmp_path):  # noqa: F811 - the imported fixture
    started: list[tuple[IndependentManager, DaemonProcess, Path]] = []

    def start(with_agent: bool = False, **overrides) -> Node:
        manager = IndependentManager(pki_dir)
        work = Path(short_tmpdir("rs"))
        cfg = node_config(work, tmp_path, manager.address, pki_dir,
                          **deep_merge({"agent": {"enabled": with_agent}}, overrides))
        daemon = DaemonProcess(write_config(work / "daemon.yaml", cfg))
        n = Node(manager, daemon, work)
        started.append((manager, daemon, work, n))
        wait_until(lambda: manager.streams_opened >= 1, timeout=30, what="the command stream")
        if with_agent:
            n.wait_agent_running()
        return n

    yield start
    for manager, daemon, work, n in started:
        daemon.kill()
        n.daemon.kill()  # a test may have started another daemon in place of the first
        kill_agent(work)  # the daemon leaves its Agent running on exit, by design
        manager.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(120)
def test_an_allowed_setting_is_checked_applied_by_a_reload_and_kept_across_a_restart(start_node):
    n = start_node()
    status = n.set(daemon__report_interval="2s", collectors__disk__enabled="false")
    assert status.state == "completed", status.message
    assert "daemon.report_interval" in status.message and "collectors.disk.enabled" in status.message
    assert status.result.component == "daemon_settings" and status.result.new_version.startswith("sha256:")
    assert stat.S_IMODE(os.stat(n.overlay).st_mode) == 0o600
    seen = n.manager.heartbeat_count()
    wait_until(lambda: any(hb.daemon_settings_hash == status.result.new_version
                           for _, hb in n.manager.heartbeats[seen:]), timeout=30,
               what="a heartbeat carrying the settings' hash")
    shown = n.shown()  # what the daemon loads at its next start: the file with the settings over it
    assert "report_interval: 2s" in shown
    again = n.set(daemon__report_interval="2s")
    assert again.state == "completed" and "already in effect" in again.message


@pytest.mark.timeout(120)
def test_a_command_with_one_key_not_allowed_is_rejected_whole_naming_the_key(start_node):
    n = start_node(remote_config={"allowed_keys": ["*"]})  # even "*" never opens code, files or trust
    status = n.set(daemon__report_interval="2s", agent__binary_path="/bin/sh", manager__address="evil:1")
    assert status.state == "rejected" and status.message.startswith("D6001")
    assert "agent.binary_path, manager.address" in status.message and "nothing changed" in status.message
    assert not n.overlay.exists()
    assert "report_interval: 2s" not in n.shown()


@pytest.mark.timeout(120)
def test_an_invalid_value_is_rejected_by_the_schema_with_its_d1002_path(start_node):
    n = start_node()
    status = n.set(daemon__report_interval="soon", daemon__log_level="loud")
    assert status.state == "rejected" and status.message.startswith("D1002")
    assert "daemon.report_interval" in status.message and "daemon.log_level" in status.message
    assert not n.overlay.exists()


@pytest.mark.timeout(120)
def test_a_key_outside_the_default_allow_list_is_refused(start_node):
    n = start_node()
    status = n.set(agent__stop_timeout="1s")
    assert status.state == "rejected" and "agent.stop_timeout" in status.message


@pytest.mark.timeout(120)
def test_good_settings_are_committed_only_after_the_daemon_and_its_agent_stayed_healthy_for_the_window(
        start_node):
    n = start_node(with_agent=True)
    pid = n.agent_pid()
    began = time.monotonic()
    # report_interval stays 1 s, so a report is due within the 3 s window and must be built.
    status = n.set(daemon__log_level="info", agent__health_check__memory_threshold="1GiB")
    assert status.state == "completed", status.message
    assert time.monotonic() - began >= 3.0, "answered before the 3 s verify window ended"
    assert "agent.health_check.memory_threshold" in status.message and "daemon.log_level" in status.message
    assert status.message.endswith("the daemon stayed healthy for 3s")
    assert n.agent_pid() == pid, "the Agent was restarted by the settings"
    progress = [s.state for s in n.manager.statuses if s.command_id == status.command_id]
    assert progress == ["installing", "completed"]


@pytest.mark.timeout(150)
def test_too_tight_agent_health_thresholds_are_rolled_back_with_both_hashes_and_the_agent_healthy_again(
        start_node):
    n = start_node(with_agent=True)
    good = n.set(daemon__report_interval="2s")
    assert good.state == "completed", good.message
    before = n.overlay.read_bytes()
    # The sample Agent's RSS is several MiB: a 1 MiB threshold, judged at once, fails the first check.
    status = n.set(agent__health_check__memory_threshold="1MiB", agent__health_check__threshold_duration="0s")
    assert status.state == "rolled_back", status.message
    assert status.result.rolled_back and not status.result.success
    assert status.result.component == "daemon_settings"
    assert status.result.old_version == good.result.new_version != ""
    assert status.result.new_version not in ("", status.result.old_version)
    assert status.message.startswith("D6001 daemon settings")
    assert "after a failed health check" in status.message or "went down" in status.message
    for digest in (status.result.old_version, status.result.new_version):
        assert digest[len("sha256:"):][:12] in status.message
    assert status.message.endswith("healthy")
    assert n.overlay.read_bytes() == before, "the previous settings were not restored"
    assert "memory_threshold: 1MiB" not in n.shown()
    unhealthy = [r for r in log_records(n.work)
                 if "memory_threshold" in r["message"] and "unhealthy" in r["message"]]
    assert unhealthy, "the Agent was not found unhealthy: the thresholds were not exercised"
    n.wait_agent_running()
    pid = n.agent_pid()
    assert n.set(daemon__log_level="info").state == "completed", "a push after the rollback"
    assert n.agent_pid() == pid


@pytest.mark.timeout(150)
def test_kill_9_of_the_daemon_while_it_verifies_settings_restores_the_previous_ones_at_its_next_start(
        start_node):
    n = start_node()
    first = n.set(daemon__report_interval="2s")
    assert first.state == "completed", first.message
    before = n.overlay.read_bytes()
    config = Path(n.daemon.config_path)
    config.write_text(config.read_text().replace("verify_timeout: 3s", "verify_timeout: 60s"))
    n.daemon.signal(signal.SIGHUP)
    wait_until(lambda: any("configuration reloaded" in r["message"] and "verify_timeout" in r["message"]
                           for r in log_records(n.work)), timeout=30, what="the 60 s window reloaded")
    cid = n.send(daemon__report_interval="3s", daemon__log_level="info")
    wait_until(lambda: any(s.command_id == cid and s.state == "installing" for s in n.manager.statuses),
               timeout=30, what="the settings applied and being verified")
    wait_until(lambda: b"3s" in n.overlay.read_bytes(), timeout=10, what="the new settings kept")
    n.daemon.proc.kill()  # SIGKILL in the middle of the verify window
    n.daemon.proc.wait(10)
    assert not n.terminal(cid)
    config.write_text(config.read_text().replace("verify_timeout: 60s", "verify_timeout: 3s"))
    n.daemon = DaemonProcess(str(config))
    status = wait_until(lambda: n.terminal(cid), timeout=60, what="the interrupted settings settled")[0]
    assert status.state == "rolled_back", status.message
    assert "were not verified: the daemon stopped during the push" in status.message
    assert status.message.endswith("healthy")
    assert status.result.old_version == first.result.new_version
    assert n.overlay.read_bytes() == before
    assert not (n.work / "remote_config" / "journal.json").exists()
    assert len(n.terminal(cid)) == 1
    assert "report_interval: 2s" in n.shown()


@pytest.mark.timeout(120)
def test_a_rollback_asked_while_settings_are_verified_is_refused_naming_the_settings_push(start_node):
    from daemon_app import control
    from daemon_app.errors import ControlError

    n = start_node(remote_config={"verify_timeout": "15s"})  # long enough to be sure it is held
    cid = n.send(daemon__report_interval="2s")
    wait_until(lambda: any(s.command_id == cid and s.state == "installing" for s in n.manager.statuses),
               timeout=30, what="the settings being applied and verified")
    with pytest.raises(ControlError) as info:
        control.request(str(n.work / "control.sock"), "rollback", {"component": "agent"})
    assert str(info.value).startswith("D4003 a remote config push is in progress (daemon settings push "
                                      f"{cid}); nothing changed"), str(info.value)
    assert not n.terminal(cid), "the push ended before the refusal: the window was not held"
    status = wait_until(lambda: n.terminal(cid), timeout=60, what="the settings' end")[0]
    assert status.state == "completed", status.message


@pytest.mark.timeout(120)
def test_a_pre_config_plugin_vetoes_daemon_settings_and_post_config_sees_the_answer(start_node):
    n = start_node()
    try:
        results = restart_with_freeze_plugin(
            n, 'frozen = request["kind"] == "daemon_settings" and "daemon.log_level" in request["values"]\n'
               'return "log level is frozen" if frozen else None')
        vetoed = n.set(daemon__log_level="warning")
        assert vetoed.state == "rejected"
        assert "vetoed by plugin 'freeze': log level is frozen" in vetoed.message
        assert not n.overlay.exists() and "log_level: warning" not in n.shown()
        seen = wait_until(lambda: results.exists() and results.read_text().splitlines(), timeout=10,
                          what="the post_config call")
        assert [(r["kind"], r["state"]) for r in map(json.loads, seen)] == [("daemon_settings", "rejected")]
    finally:
        n.daemon.kill()  # the fixture stops the daemon it started, not this one
