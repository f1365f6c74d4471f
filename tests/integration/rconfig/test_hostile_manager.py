"""A Manager written by another team that follows docs/contract.md to the letter but sends odd,
legal-looking or broken `daemon_settings` and `agent_config` commands: each is answered exactly once
with its D-code, and the overlay on disk is what it was. One real daemon (from source) per module,
its real Manager link to the contract suite's independent Manager."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from daemon_app.proto import daemon_pb2 as pb
from tests.contract.conftest import pki_dir  # noqa: F401 - the certificates, made once per module
from tests.contract.independent_manager import IndependentManager
from tests.helpers import DaemonProcess, deep_merge, short_tmpdir, wait_until, write_config
from tests.integration.manager.conftest import log_records
from tests.integration.rconfig.conftest import node_config

TERMINAL = ("completed", "rolled_back", "failed", "rejected")


class Node:
    def __init__(self, manager: IndependentManager, daemon: DaemonProcess, work: Path) -> None:
        self.manager, self.daemon, self.work = manager, daemon, work
        self.overlay = work / "remote_config" / "settings.json"

    def set(self, values: dict[str, str]) -> pb.CommandStatus:
        """Send the settings and wait for their end; exactly one terminal status, checked."""
        cid = f"h-{uuid.uuid4().hex[:8]}"
        self.manager.push(pb.Command(id=cid, daemon_settings=pb.DaemonSettingsCommand(values=values)))
        ends = wait_until(lambda: self.ends(cid), timeout=60, what=f"the end of {cid}")
        return ends[0]

    def ends(self, cid: str) -> list[pb.CommandStatus]:
        with self.manager.lock:
            return [s for s in self.manager.statuses if s.command_id == cid and s.state in TERMINAL]

    def values(self) -> dict:
        return json.loads(self.overlay.read_text())["values"] if self.overlay.exists() else {}


@pytest.fixture(scope="module")
def node(pki_dir, tmp_path_factory):  # noqa: F811 - the imported fixture
    """A daemon without an Agent and with a 1 s verify window, settings `daemon.log_level: info` set."""
    manager = IndependentManager(pki_dir)
    work = Path(short_tmpdir("rh"))
    cfg = node_config(work, tmp_path_factory.mktemp("hostile"), manager.address, pki_dir,
                      **deep_merge({"agent": {"enabled": False}},
                                   {"remote_config": {"verify_timeout": "1s"}}))
    daemon = DaemonProcess(write_config(work / "daemon.yaml", cfg))
    try:
        wait_until(lambda: manager.streams_opened >= 1, timeout=30, what="the command stream")
        n = Node(manager, daemon, work)
        first = n.set({"daemon.log_level": "info"})
        assert first.state == "completed", first.message
        yield n
    finally:
        daemon.kill()
        manager.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", ["collectors.*.enabled", "collectors..enabled", "collectors.cpu?.enabled",
                                 "collectors.[a-z]*.interval", "collectors.cpu*.enabled",
                                 "daemon.report_interval ", "daemon.report_interval.",
                                 "daemon.r\u0435port_interval"])  # a Cyrillic e
def test_a_key_with_a_wildcard_or_an_empty_part_is_refused_not_stored_as_a_phantom_collector(node, key):
    """The allow-list's own pattern `collectors.*.enabled` matches itself: without this check the
    daemon answered `completed` and kept a collector literally named `*` that disables nothing."""
    before = node.values()
    status = node.set({key: "false"})
    assert status.state == "rejected", status.message
    assert status.message.startswith("D6001") and "not a config key" in status.message
    assert key in status.message and "nothing changed" in status.message
    assert node.values() == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_or_infinity_is_not_taken_as_a_number(node, text):
    """JSON's NaN/Infinity extensions (and a float that overflows) would pass a `threshold > x` test
    never (a health check silently off) and write non-standard JSON to the overlay."""
    before = node.values()
    status = node.set({"agent.health_check.cpu_threshold": text})
    assert status.state == "rejected", status.message
    assert status.message.startswith("D1002") and "agent.health_check.cpu_threshold" in status.message
    assert node.values() == before


@pytest.mark.timeout(120)
def test_settings_pushed_while_the_config_file_on_disk_is_broken_fail_with_one_d_code_nothing_changed(node):
    """The operator broke daemon.yaml (not reloaded yet) when the Manager pushes: the answer names
    the file's problem once (it read "D1001 daemon settings c: D1001 config: …")."""
    config = Path(node.daemon.config_path)
    good = config.read_text()
    before = node.values()
    try:
        config.write_text("daemon: [unclosed\n")
        status = node.set({"daemon.log_level": "warning"})
    finally:
        config.write_text(good)
    assert status.state == "failed", status.message
    assert status.message.startswith(f"D1001 daemon settings {status.command_id}: config: "), status.message
    assert status.message.count("D1001") == 1 and "not valid YAML" in status.message
    assert node.values() == before
    assert node.set({"daemon.log_level": "warning"}).state == "completed"  # the file fixed, it goes on
    assert node.set({"daemon.log_level": "info"}).state == "completed"


@pytest.mark.timeout(120)
def test_a_command_id_of_a_mebibyte_is_dropped_with_d2003_and_later_commands_are_still_answered(node):
    """Ids are UUIDs (docs/contract.md). Forty 1 MiB ids used to be remembered, quoted into statuses
    and logs whole: RSS grew by 470 MB, the outbox by 300 MB, and the statuses, too big to send,
    blocked every later answer. Now such an id is logged cut short (D2003) and dropped, unanswerable
    like a command without one."""
    big = [f"{i:02d}" + "i" * (1024 * 1024) for i in range(8)] + ["j" * 257]
    for cid in big:
        node.manager.push(pb.Command(id=cid, daemon_settings=pb.DaemonSettingsCommand(
            values={"daemon.log_level": "loud"})))
    status = node.set({"daemon.log_level": "loud"})  # sent after them: answered, the link not blocked
    assert status.state == "rejected" and status.message.startswith("D1002")
    dropped = wait_until(lambda: [r for r in log_records(node.work)
                                  if r.get("code") == "D2003" and "command id of" in r["message"]],
                         timeout=30, what="the D2003 line for the long ids")
    assert all(len(r["message"]) < 400 for r in dropped)
    assert not any(node.ends(cid) for cid in big)
    assert (node.work / "outbox.db").stat().st_size < 8 * 1024 * 1024
    ok = node.set({"daemon.log_level": "info"})
    assert ok.state == "completed", ok.message


@pytest.mark.timeout(120)
def test_a_3_mib_agent_action_is_rejected_quoted_short_and_later_commands_are_still_answered(node):
    """The rejection quoted the action whole, in `message` and again in `result.error`: 6 MiB, over
    what a Manager accepts (4 MiB), so ReportCommandStatus failed forever and every later command
    went unanswered. A status's texts are now cut to 16 KiB."""
    cid = f"act-{uuid.uuid4().hex[:8]}"
    node.manager.push(pb.Command(id=cid, agent=pb.AgentCommand(action="x" * (3 * 1024 * 1024))))
    status = node.set({"daemon.log_level": "loud"})  # sent after it: answered, the link not blocked
    assert status.state == "rejected" and status.message.startswith("D1002")
    big = wait_until(lambda: node.ends(cid), timeout=30, what="the end of the 3 MiB action")[0]
    assert big.state == "rejected" and big.message.startswith(f"D3001 agent command {cid}: unknown action")
    assert len(big.message) < 1000 and len(big.result.error) < 1000


@pytest.mark.timeout(60)
def test_an_empty_agent_config_is_rejected_not_installed_as_a_blank_file(node):
    cid = f"empty-{uuid.uuid4().hex[:8]}"
    node.manager.push(pb.Command(id=cid, agent_config=pb.AgentConfigCommand(content=b"")))
    ends = wait_until(lambda: node.ends(cid), timeout=30, what="the answer to the empty config")
    assert [s.state for s in ends] == ["rejected"]
    assert ends[0].message.startswith(f"D6001 agent config {cid}: the content is empty")
    assert "nothing changed" in ends[0].message
    assert not (node.work / "remote_config" / "journal.json").exists()
