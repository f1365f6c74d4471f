"""ManagerLink in this process (with a small engine stand-in) against the real Manager: commands and
durable command results."""

from __future__ import annotations

import time

import pytest

from daemon_app import config
from daemon_app.comm.link import ManagerLink
from daemon_app.errors import ManagerConnectError
from tests.helpers import base_config, wait_until
from tests.integration.manager.conftest import Manager, free_port, node_tls


class EngineStandIn:
    """The link's Host (daemon_app.host), reduced to what the link uses."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.commands: list[dict] = []

    def run_soon(self, fn) -> None:
        fn()

    def adopt_node_id(self, node_id: str) -> None:
        self.node_id = node_id

    def dispatch_command(self, command: dict) -> bool:
        self.commands.append(command)
        return True


def _in_state(store, state: str):
    return next((c for c in store.commands("link-node") if c["state"] == state), None)


def _link(work, address, pki_dir, node_id="link-node") -> ManagerLink:
    cfg = config.validate(base_config(work, manager={
        "address": address, "tls": node_tls(pki_dir), "reconnect_interval": "50ms", "reconnect_max": "200ms",
        "heartbeat_interval": "1s", "timeout": "3s"}))
    return ManagerLink(cfg, EngineStandIn(node_id), agent=lambda: None, config_hashes=lambda: None)


@pytest.mark.timeout(30)
def test_start_refuses_with_d2001_when_a_tls_file_is_unreadable(tmp_path, pki_dir):
    link = _link(tmp_path, "127.0.0.1:1", pki_dir)
    bad = config.validate(base_config(tmp_path, manager={
        "address": "127.0.0.1:1", "tls": dict(node_tls(pki_dir), key_file=str(tmp_path / "nope.key"))}))
    link.cfg = bad
    with pytest.raises(ManagerConnectError, match=r"^D2001 manager.tls.key_file: cannot read .*nope.key"):
        link.start()


@pytest.mark.timeout(30)
def test_commands_reach_the_engine_as_plain_dicts_once(manager, tmp_path, pki_dir):
    link = _link(tmp_path, manager.address, pki_dir)
    link.start()
    try:
        wait_until(lambda: link.status()["registered"], timeout=10, what="registration")
        store = manager.store()
        manifest = b'{"component": "agent", "version": "2.0.0"}'
        cid = store.enqueue_command("link-node", {"type": "update", "component": "agent",
                                                  "url": "https://127.0.0.1/a", "manifest": manifest,
                                                  "manifest_sig": "c2lnbmF0dXJl"})
        wait_until(lambda: link.host.commands, timeout=5, what="the command at the engine")
        assert link.host.commands == [{"id": cid, "type": "update", "component": "agent",
                                       "url": "https://127.0.0.1/a", "manifest": manifest,
                                       "manifest_sig": "c2lnbmF0dXJl"}]
        # A reconnect re-delivers the unanswered command; the link does not run it twice.
        link._reconnect = True
        link._wake()
        wait_until(lambda: link.status()["registered"] and link._gen > 2, timeout=10, what="reconnection")
        link.send_command_status(cid, "verifying", 40.0, "checking the signature")
        link.send_command_status(cid, "completed", 100.0, "done",
                                 {"success": True, "old_version": "1.0.0", "new_version": "2.0.0",
                                  "component": "agent"})
        command = wait_until(lambda: _in_state(store, "completed"), timeout=10, what="the final status")
        assert command["result"] == {"success": True, "old_version": "1.0.0", "new_version": "2.0.0",
                                     "error": "", "rolled_back": False, "component": "agent"}
        assert len(link.host.commands) == 1
    finally:
        link.stop(time.monotonic() + 5)


@pytest.mark.timeout(30)
def test_the_snapshot_other_parts_read_says_what_the_status_says(manager, tmp_path, pki_dir):
    link = _link(tmp_path, manager.address, pki_dir)
    before = link.snapshot()
    assert (before.state, before.connected, before.registered) == ("stopped", False, False)
    assert before.acked_seq == before.last_seq == before.outbox_depth == 0
    link.start()
    try:
        link.report({"node_id": "link-node", "timestamp": "2026-12-01T00:00:00Z", "metrics": {}, "logs": []})
        wait_until(lambda: link.snapshot().acked_seq >= 1, timeout=10, what="the report acknowledged")
        snap, status = link.snapshot(), link.status()
        assert snap.registered and snap.connected and status["registered"] and status["connected"]
        assert (snap.state, snap.acked_seq, snap.last_seq, snap.outbox_depth) == \
            (status["state"], status["acked_seq"], status["last_seq"], status["outbox_depth"])
    finally:
        link.stop(time.monotonic() + 5)


@pytest.mark.timeout(40)
def test_a_final_command_status_survives_an_outage_and_a_restart(tmp_path, pki_dir):
    port = free_port()
    manager = Manager(str(tmp_path / "manager.db"), pki_dir)
    manager.start(port)
    store = manager.store()
    cid = store.enqueue_command("link-node", {"type": "agent", "action": "restart"})
    manager.stop()

    first = _link(tmp_path, f"127.0.0.1:{port}", pki_dir)
    first.start()
    first.send_command_status(cid, "restarting", 50.0)
    first.send_command_status(cid, "failed", message="D3001 agent did not start",
                              result={"success": False, "error": "D3001 agent did not start"})
    wait_until(lambda: first.status()["state"] == "backoff", timeout=10, what="the link to give up for now")
    first.stop(time.monotonic() + 1)
    assert first.status()["pending_command_statuses"] == 1

    manager.start(port)
    try:
        second = _link(tmp_path, f"127.0.0.1:{port}", pki_dir)
        second.start()
        try:
            command = wait_until(lambda: _in_state(store, "failed"), timeout=15,
                                 what="the durable final status")
            assert command["result"]["error"] == "D3001 agent did not start"
            wait_until(lambda: second.status()["pending_command_statuses"] == 0, timeout=5,
                       what="the status to leave the outbox")
        finally:
            second.stop(time.monotonic() + 5)
    finally:
        manager.stop()


@pytest.mark.timeout(40)
def test_a_manager_that_goes_away_is_noticed_through_the_command_stream_without_traffic(tmp_path, pki_dir):
    port = free_port()
    manager = Manager(str(tmp_path / "manager.db"), pki_dir)
    manager.start(port)
    link = _link(tmp_path, f"127.0.0.1:{port}", pki_dir)
    link.cfg = config.validate(base_config(tmp_path, manager={
        "address": f"127.0.0.1:{port}", "tls": node_tls(pki_dir), "heartbeat_interval": "1h",
        "reconnect_interval": "100ms", "reconnect_max": "300ms"}))
    link.start()
    try:
        wait_until(lambda: link.status()["state"] == "ready", timeout=10, what="the link to be ready")
        manager.stop()
        wait_until(lambda: not link.status()["connected"] and "D2001" in link.status()["last_error"],
                   timeout=10, what="the lost Manager to be noticed")
        manager.start(port)
        wait_until(lambda: link.status()["state"] == "ready", timeout=10, what="the link to come back")
        link.report({"timestamp": "2026-11-29T05:07:19.000001Z", "metrics": {}, "agent_status": None,
                     "logs": []})
        wait_until(lambda: link.status()["outbox_depth"] == 0, timeout=10, what="the report to be acked")
    finally:
        link.stop(time.monotonic() + 5)
        manager.stop()
