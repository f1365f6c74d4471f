"""Daemon settings set by a Manager (`daemon_settings`): the allow-list, schema checks, a reload
that applies them, and the overlay kept across restarts. Real daemon, real Manager link."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from daemon_app.proto import daemon_pb2 as pb
from tests.contract.conftest import pki_dir  # noqa: F401 - the certificates, made once per module
from tests.contract.independent_manager import IndependentManager
from tests.helpers import ROOT, DaemonProcess, daemon_cmd, short_tmpdir, wait_until, write_config
from tests.integration.rconfig.conftest import node_config

TERMINAL = ("completed", "rolled_back", "failed", "rejected")


class Node:
    def __init__(self, manager: IndependentManager, daemon: DaemonProcess, work: Path) -> None:
        self.manager, self.daemon, self.work = manager, daemon, work
        self.overlay = work / "remote_config" / "settings.json"

    def set(self, **values: str) -> pb.CommandStatus:
        cid = f"set-{uuid.uuid4().hex[:8]}"
        values = {k.replace("__", "."): v for k, v in values.items()}
        self.manager.push(pb.Command(id=cid, daemon_settings=pb.DaemonSettingsCommand(values=values)))

        def ended() -> list[pb.CommandStatus]:
            with self.manager.lock:
                return [s for s in self.manager.statuses if s.command_id == cid and s.state in TERMINAL]

        return wait_until(ended, timeout=60, what=f"the end of {cid}")[0]

    def shown(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(daemon_cmd("-c", self.daemon.config_path, "config", "show"), capture_output=True,
                             text=True, timeout=60, cwd=str(ROOT), env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture
def start_node(pki_dir, tmp_path):  # noqa: F811 - the imported fixture
    started: list[tuple[IndependentManager, DaemonProcess, Path]] = []

    def start(**overrides) -> Node:
        manager = IndependentManager(pki_dir)
        work = Path(short_tmpdir("rs"))
        cfg = node_config(work, tmp_path, manager.address, pki_dir, agent={"enabled": False}, **overrides)
        daemon = DaemonProcess(write_config(work / "daemon.yaml", cfg))
        started.append((manager, daemon, work))
        wait_until(lambda: manager.streams_opened >= 1, timeout=30, what="the command stream")
        return Node(manager, daemon, work)

    yield start
    for manager, daemon, work in started:
        daemon.kill()
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
def test_settings_a_killed_daemon_had_kept_are_answered_completed_at_its_next_start(start_node):
    from daemon_app import remote_settings
    from daemon_app.rconfig.store import ConfigStore

    n = start_node()
    n.daemon.proc.kill()  # SIGKILL, then leave on disk what a kill between keeping and answering leaves
    n.daemon.proc.wait(10)
    values = {"daemon.report_interval": "3s"}
    store = ConfigStore(str(n.work / "agent" / "agent.conf"), str(n.work))
    store.write_journal("swapping", command_id="set-killed", kind="daemon_settings", old="",
                        new=remote_settings.digest(values))
    remote_settings.write(str(n.work), values)
    n.daemon = DaemonProcess(n.daemon.config_path)
    try:
        def ended() -> list[pb.CommandStatus]:
            with n.manager.lock:
                return [s for s in n.manager.statuses if s.command_id == "set-killed" and s.state in TERMINAL]

        status = wait_until(ended, timeout=60, what="the interrupted settings answered")[0]
        assert status.state == "completed" and "stopped during the push" in status.message
        assert status.result.new_version == remote_settings.digest(values)
        assert store.journal() is None
    finally:
        n.daemon.kill()
