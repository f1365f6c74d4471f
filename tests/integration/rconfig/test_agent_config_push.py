"""Remote Agent config, end to end: a real daemon (from source), the real sample Agent and the
contract suite's independent Manager. Each push ends in exactly one terminal status."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import uuid
from pathlib import Path

import pytest

from daemon_app.proto import daemon_pb2 as pb
from tests.contract.conftest import pki_dir  # noqa: F401 - the certificates, made once per module
from tests.contract.independent_manager import IndependentManager
from tests.helpers import DaemonProcess, end_process, short_tmpdir, wait_until, write_config
from tests.integration.manager.conftest import log_records
from tests.integration.rconfig.conftest import node_config, restart_with_freeze_plugin
from tests.live_update import kill_agent

TERMINAL = ("completed", "rolled_back", "failed", "rejected")
GOOD = b"# agent settings v2\nlevel: debug\n"
CRASH = b"exit-at-start: 2\n"
SILENT = b"no-heartbeat: true\n"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Node:
    def __init__(self, manager: IndependentManager, daemon: DaemonProcess, work: Path, config_file: Path):
        self.manager, self.daemon, self.work, self.config_file = manager, daemon, work, config_file

    def push(self, content: bytes, cid: str | None = None, timeout: float = 60) -> pb.CommandStatus:
        cid = cid or f"cfg-{uuid.uuid4().hex[:8]}"
        self.manager.push(pb.Command(id=cid, agent_config=pb.AgentConfigCommand(content=content)))
        return wait_until(lambda: self.terminal(cid), timeout=timeout, what=f"the end of {cid}")[0]

    def terminal(self, cid: str) -> list[pb.CommandStatus]:
        with self.manager.lock:
            return [s for s in self.manager.statuses if s.command_id == cid and s.state in TERMINAL]

    def agent_pid(self) -> int:
        return int(json.loads((self.work / "agent.pid").read_text())["pid"])

    def wait_healthy(self) -> None:
        """A heartbeat to the Manager that says the Agent is RUNNING (after the last status)."""
        seen = self.manager.heartbeat_count()

        def running() -> bool:
            with self.manager.lock:
                beats = [hb for _, hb in self.manager.heartbeats[seen:]]
            return any(hb.agent_status.state == "RUNNING" for hb in beats)

        wait_until(running, timeout=30, what="a heartbeat with the Agent RUNNING")


@pytest.fixture
def start_node(pki_dir, tmp_path):  # noqa: F811 - the imported fixture
    """start_node(**config_overrides): a daemon with the sample Agent, healthy, its stream open."""
    started: list[tuple[IndependentManager, DaemonProcess, Path]] = []

    def start(**overrides) -> Node:
        manager = IndependentManager(pki_dir)
        work = Path(short_tmpdir("rc"))
        cfg = node_config(work, tmp_path, manager.address, pki_dir, **overrides)
        daemon = DaemonProcess(write_config(work / "daemon.yaml", cfg))
        started.append((manager, daemon, work))
        n = Node(manager, daemon, work, Path(cfg["agent"]["config_file"]))
        wait_until(lambda: manager.streams_opened >= 1, timeout=30, what="the command stream")
        n.wait_healthy()
        return n

    yield start
    for manager, daemon, work in started:
        daemon.kill()
        kill_agent(work)  # the daemon leaves its Agent running on exit, by design
        manager.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def node(start_node):
    return start_node()


@pytest.mark.timeout(120)
def test_a_valid_config_is_committed_written_0600_and_the_agent_restarted_with_it(node):
    before = node.agent_pid()
    status = node.push(GOOD)
    assert status.state == "completed", status.message
    assert "committed" in status.message
    assert status.result.component == "agent_config" and status.result.success
    assert status.result.old_version == "" and status.result.new_version == sha(GOOD)
    assert node.config_file.read_bytes() == GOOD
    assert stat.S_IMODE(os.stat(node.config_file).st_mode) == 0o600
    assert node.agent_pid() != before, "the Agent was not restarted with the new config"
    progress = [s.state for s in node.manager.statuses if s.command_id == status.command_id]
    assert progress[:2] == ["verifying", "installing"] and progress[-1] == "completed"
    seen = node.manager.heartbeat_count()
    wait_until(lambda: any(hb.agent_config_hash == sha(GOOD) for _, hb in node.manager.heartbeats[seen:]),
               timeout=30, what="a heartbeat carrying the committed config's hash")


@pytest.mark.timeout(120)
def test_the_same_push_twice_is_a_no_op_completed_and_the_agent_is_not_restarted(node):
    assert node.push(GOOD).state == "completed"
    pid = node.agent_pid()
    again = node.push(GOOD)
    assert again.state == "completed" and "already effective" in again.message
    assert again.result.old_version == again.result.new_version == sha(GOOD)
    assert node.agent_pid() == pid


@pytest.mark.timeout(120)
def test_a_config_the_check_rejects_changes_nothing_and_the_check_output_is_in_the_status(node):
    assert node.push(GOOD).state == "completed"
    pid = node.agent_pid()
    status = node.push(b"forbidden: yes\n")
    assert status.state == "rejected"
    assert status.message.startswith("D6001") and "exit code 4" in status.message
    assert "'forbidden' is not a setting" in status.message and "nothing changed" in status.message
    assert node.config_file.read_bytes() == GOOD
    assert node.agent_pid() == pid


@pytest.mark.timeout(120)
def test_an_oversize_config_is_rejected_and_nothing_changes(node):
    assert node.push(GOOD).state == "completed"
    pid = node.agent_pid()
    status = node.push(b"x" * 4097)
    assert status.state == "rejected" and status.message.startswith("D6001")
    assert "4097 bytes" in status.message and "max_agent_config_bytes" in status.message
    assert node.config_file.read_bytes() == GOOD
    assert node.agent_pid() == pid


@pytest.mark.timeout(120)
def test_a_config_that_crashes_the_agent_is_rolled_back_with_both_hashes_and_the_agent_is_healthy(node):
    assert node.push(GOOD).state == "completed"
    status = node.push(CRASH)
    assert status.state == "rolled_back", status.message
    assert status.result.rolled_back and not status.result.success
    assert status.result.old_version == sha(GOOD) and status.result.new_version == sha(CRASH)
    assert "exit with code 2 twice" in status.message
    assert hashlib.sha256(GOOD).hexdigest()[:12] in status.message
    assert hashlib.sha256(CRASH).hexdigest()[:12] in status.message
    assert status.message.endswith("healthy")
    assert node.config_file.read_bytes() == GOOD
    node.wait_healthy()
    with node.manager.lock:
        assert node.manager.heartbeats[-1][1].agent_config_hash == sha(GOOD), "another config reported"
    warnings = [r for r in log_records(node.work) if r.get("code") == "D6001"]
    assert warnings, "the rollback was not logged with its D-code"


@pytest.mark.timeout(120)
def test_a_config_that_stops_heartbeats_is_rolled_back(node):
    assert node.push(GOOD).state == "completed"
    status = node.push(SILENT)
    assert status.state == "rolled_back", status.message
    assert "heartbeat" in status.message
    assert node.config_file.read_bytes() == GOOD
    node.wait_healthy()


@pytest.mark.timeout(120)
def test_a_symlink_planted_at_the_config_file_is_refused_and_its_target_untouched(node, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep me\n")
    node.config_file.parent.mkdir(parents=True, exist_ok=True)
    node.config_file.symlink_to(target)
    status = node.push(GOOD)
    assert status.state == "failed" and status.message.startswith("D6001")
    assert target.read_bytes() == b"keep me\n"
    assert node.config_file.is_symlink()


@pytest.mark.timeout(120)
def test_a_config_check_that_hangs_is_killed_at_check_timeout_and_the_push_rejected(start_node, tmp_path):
    hang = tmp_path / "hang.py"
    hang.write_text("import time\nprint('checking...', flush=True)\ntime.sleep(600)\n")
    n = start_node(agent={"config_check": [sys.executable, str(hang)]}, remote_config={"check_timeout": "1s"})
    pid = n.agent_pid()
    status = n.push(GOOD)
    assert status.state == "rejected" and "timed out after 1s" in status.message
    assert "checking..." in status.message
    assert not n.config_file.exists() and n.agent_pid() == pid


@pytest.mark.timeout(120)
def test_with_remote_config_off_a_push_fails_with_d6001_and_nothing_is_written(start_node):
    n = start_node(remote_config={"enabled": False})
    status = n.push(GOOD)
    assert status.state == "failed" and status.message.startswith("D6001")
    assert "agent_config" in status.message
    assert not n.config_file.exists()


@pytest.mark.timeout(150)
def test_kill_9_of_the_daemon_during_verify_is_settled_at_the_next_start_with_one_consistent_config(
        start_node):
    n = start_node(remote_config={"verify_timeout": "60s"})
    cid = "cfg-killed"
    n.manager.push(pb.Command(id=cid, agent_config=pb.AgentConfigCommand(content=CRASH)))
    wait_until(lambda: n.config_file.exists() and n.config_file.read_bytes() == CRASH, timeout=30,
               what="the pushed file in place")
    n.daemon.proc.kill()  # SIGKILL in the middle of verification
    n.daemon.proc.wait(10)
    assert not n.terminal(cid)
    config = Path(n.daemon.config_path)
    config.write_text(config.read_text().replace("verify_timeout: 60s", "verify_timeout: 3s"))
    again = DaemonProcess(str(config))
    try:
        status = wait_until(lambda: n.terminal(cid), timeout=60, what="the interrupted push settled")[0]
        assert status.state == "rolled_back", status.message
        assert "the daemon stopped during the push" in status.message and status.message.endswith("healthy")
        assert status.result.old_version == "" and status.result.new_version == sha(CRASH)
        assert not n.config_file.exists(), "the file before the push (none) was not restored"
        assert not (n.work / "remote_config" / "journal.json").exists()
        n.wait_healthy()
        assert len(n.terminal(cid)) == 1
        assert n.push(GOOD).state == "completed", "a push after the recovery"
    finally:
        again.kill()


@pytest.mark.timeout(150)
def test_kill_9_of_the_daemon_during_config_check_is_answered_failed_at_the_next_start_nothing_changed(
        start_node, tmp_path):
    slow = tmp_path / "slow.py"
    pid_file = tmp_path / "check.pid"
    slow.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                    "time.sleep(600)\n")
    n = start_node(agent={"config_check": [sys.executable, str(slow)]}, remote_config={"check_timeout": "5m"})
    pid = n.agent_pid()
    cid = "cfg-killed-in-check"
    n.manager.push(pb.Command(id=cid, agent_config=pb.AgentConfigCommand(content=GOOD)))
    wait_until(lambda: any(s.command_id == cid and s.state == "verifying" for s in n.manager.statuses),
               timeout=30, what="the check running")
    n.daemon.proc.kill()
    n.daemon.proc.wait(10)
    again = DaemonProcess(n.daemon.config_path)
    try:
        status = wait_until(lambda: n.terminal(cid), timeout=60, what="the interrupted push answered")[0]
        assert status.state == "failed" and "before it was installed; nothing changed" in status.message
        assert not n.config_file.exists() and n.agent_pid() == pid
    finally:
        again.kill()
        end_process(int(pid_file.read_text()))  # the check the killed daemon left behind


@pytest.mark.timeout(120)
def test_one_crash_during_verify_is_tolerated_and_the_config_committed(node, tmp_path):
    marker = tmp_path / "crashed-once"
    content = f"crash-once: {marker}\n".encode()
    status = node.push(content)
    assert status.state == "completed", status.message
    assert marker.exists(), "the Agent did not crash once: the tolerance was not exercised"
    assert node.config_file.read_bytes() == content


@pytest.mark.timeout(120)
def test_a_pre_config_plugin_vetoes_a_push_and_post_config_sees_every_answer(start_node):
    n = start_node()
    try:
        results = restart_with_freeze_plugin(n, 'return "change freeze" if request["size"] == 13 else None')
        vetoed = n.push(b"thirteen byte")
        assert vetoed.state == "rejected" and "vetoed by plugin 'freeze': change freeze" in vetoed.message
        assert not n.config_file.exists()
        assert n.push(GOOD).state == "completed"
        seen = wait_until(lambda: results.exists() and results.read_text().splitlines(), timeout=10,
                          what="post_config calls")
        states = [json.loads(line)["state"] for line in seen]
        assert states == ["rejected", "completed"]
        assert json.loads(seen[-1])["new_version"] == sha(GOOD)
    finally:
        n.daemon.kill()


@pytest.mark.timeout(120)
def test_a_reload_that_turns_remote_config_off_stops_taking_pushes(node):
    assert node.push(GOOD).state == "completed"
    config = Path(node.daemon.config_path)
    config.write_text(config.read_text().replace("enabled: true\n  max_agent_config_bytes",
                                                 "enabled: false\n  max_agent_config_bytes"))
    node.daemon.signal(signal.SIGHUP)
    wait_until(lambda: any("configuration reloaded" in r["message"] and "remote_config" in r["message"]
                           for r in log_records(node.work)), timeout=30, what="the reload")
    status = node.push(b"level: warn\n")
    assert status.state == "failed" and "no handler for command type 'agent_config'" in status.message
    assert node.config_file.read_bytes() == GOOD


@pytest.mark.timeout(120)
def test_with_config_reload_sighup_the_running_agent_rereads_and_a_crashing_config_is_still_rolled_back(
        start_node):
    n = start_node(agent={"config_reload": "sighup"})
    pid = n.agent_pid()
    status = n.push(GOOD)
    assert status.state == "completed", status.message
    assert n.agent_pid() == pid, "the Agent was restarted instead of signalled"
    assert "SIGHUP: re-read" in (n.work / "agent" / "stderr.log").read_text()
    bad = n.push(CRASH)
    assert bad.state == "rolled_back", bad.message
    assert "exit with code 2 twice" in bad.message and bad.message.endswith("healthy")
    assert n.config_file.read_bytes() == GOOD
    n.wait_healthy()


@pytest.mark.timeout(120)
def test_an_update_or_rollback_while_a_push_is_verifying_is_refused_naming_the_push(start_node):
    from daemon_app import control
    from daemon_app.errors import ControlError

    node = start_node(remote_config={"verify_timeout": "20s"})  # long enough to be sure it is held
    cid = "cfg-held"
    node.manager.push(pb.Command(id=cid, agent_config=pb.AgentConfigCommand(content=b"level: info\n")))
    wait_until(lambda: any(s.command_id == cid and s.state == "installing" for s in node.manager.statuses),
               timeout=30, what="the push installing (then verifying for verify_timeout)")
    # An update from the Manager: refused before anything is downloaded (its URL is never tried).
    node.manager.push(pb.Command(id="upd-during-push", update=pb.UpdateCommand(
        component="agent", url="https://127.0.0.1:9/agent", manifest=b"{}", manifest_sig=b"AA==")))
    refused = wait_until(lambda: node.terminal("upd-during-push"), timeout=30, what="the update refused")[0]
    assert refused.state == "failed", refused.message
    assert refused.message.startswith(
        "D4003 a remote config push is in progress (agent config push cfg-held)"), refused.message
    assert "nothing changed" in refused.message and refused.result.error == refused.message
    # A rollback from the control socket (what `daemon rollback` sends): refused the same way.
    with pytest.raises(ControlError) as info:
        control.request(str(node.work / "control.sock"), "rollback", {"component": "agent"})
    assert "D4003" in str(info.value) and "agent config push cfg-held" in str(info.value)
    assert not node.terminal(cid), "the push ended before the refusals: the window was not held"
    ended = wait_until(lambda: node.terminal(cid), timeout=60, what="the push's end")[0]
    assert ended.state == "completed", f"the push in flight was disturbed: {ended.message}"
    assert node.config_file.read_bytes() == b"level: info\n"


@pytest.mark.timeout(120)
def test_with_sighup_a_heartbeat_racing_the_signal_does_not_commit_a_config_that_silences_the_agent(
        start_node):
    # heartbeat_timeout beyond the verify window (as with the defaults, 90 s and 60 s): the health
    # check cannot catch the silent Agent in time, only the verify rule can.
    n = start_node(agent={"config_reload": "sighup", "health_check": {"heartbeat_timeout": "60s"}})
    racing = b"heartbeat-before-reread: true\n"
    assert n.push(racing).state == "completed"
    pid = n.agent_pid()
    status = n.push(racing + SILENT)  # on SIGHUP: one heartbeat under the old config, then silence
    assert status.state == "rolled_back", status.message
    assert "heartbeat" in status.message and status.message.endswith("healthy")
    assert status.result.old_version == sha(racing) and status.result.new_version == sha(racing + SILENT)
    assert n.config_file.read_bytes() == racing
    assert n.agent_pid() == pid, "the Agent was restarted: the race was not exercised in SIGHUP mode"
    stderr = (n.work / "agent" / "stderr.log").read_text()
    assert stderr.count("SIGHUP: re-read") >= 3, "the Agent did not re-read the push and the rollback"
    n.wait_healthy()
