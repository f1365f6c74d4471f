"""The daemon (a real process) against the reference Manager over mutual TLS on loopback."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
from pathlib import Path

import pytest

from daemon_manager import pki
from tests.helpers import wait_until
from tests.integration.manager.conftest import (
    Manager,
    daemon_config,
    file_reports,
    free_port,
    load_ca,
    log_records,
    logged_codes,
    node_tls,
)

OUTAGE_SECONDS = float(os.environ.get("MANAGER_OUTAGE_SECONDS", "30"))


def _node_id(work: Path) -> str:
    return wait_until(lambda: (work / "node_id").exists() and (work / "node_id").read_text().strip(),
                      timeout=15, what="node id")


def _assert_every_report_stored_once(store, work: Path) -> list[dict]:
    """Seqs contiguous from 1, and every report the daemon built (its file reporter) is at the Manager."""
    stored = store.reports(_node_id(work))
    seqs = [r["seq"] for r in stored]
    assert seqs == list(range(1, len(seqs) + 1)), f"gaps or repeats in {seqs}"
    by_time = {r["timestamp"]: r for r in stored}
    assert len(by_time) == len(stored), "a report was stored twice"
    built = file_reports(work)
    missing = [r["timestamp"] for r in built if r["timestamp"] not in by_time]
    assert not missing, f"{len(missing)} of {len(built)} reports never reached the Manager: {missing[:3]}"
    return stored


@pytest.mark.timeout(60)
def test_register_heartbeat_and_reports_arrive_with_the_values_collected(manager, pki_dir, tmp_path,
                                                                         daemon_processes):
    work = tmp_path / "d"
    cfg = daemon_config(work, manager.address, node_tls(pki_dir),
                        collectors={"cpu": {"interval": "1s"}, "memory": {"interval": "1s"}})
    proc = daemon_processes(cfg)
    store = manager.store()
    node_id = _node_id(work)
    wait_until(lambda: len(store.reports(node_id)) >= 3, timeout=20, what="three reports at the Manager")
    node = wait_until(lambda: (n := store.node(node_id)) and n["outbox_depth"] is not None and n,
                      timeout=10, what="a heartbeat")
    assert node["hostname"] == socket.gethostname()
    assert node["cert_cn"] == "node-a" and node["daemon_version"]
    assert node["ip"] == "127.0.0.1"
    assert proc.stop() == 0
    stored = _assert_every_report_stored_once(store, work)
    built = {r["timestamp"]: r for r in file_reports(work)}
    for report in stored:
        original = built[report["timestamp"]]
        assert report["metrics"] == original["metrics"]
        assert report["node_id"] == original["node_id"] == node_id
        assert report["outbox_dropped"] == 0
    assert set(stored[-1]["metrics"]) >= {"cpu", "memory", "disk", "network"}


@pytest.mark.timeout(30)
def test_a_daemon_without_client_certificate_refuses_to_start_and_the_manager_refuses_such_clients(
        manager, pki_dir, tmp_path, daemon_processes):
    import grpc

    from daemon_app.proto import daemon_pb2 as pb
    from daemon_app.proto import daemon_pb2_grpc as pb_grpc

    work = tmp_path / "d"
    tls = dict(node_tls(pki_dir), cert_file=str(tmp_path / "missing.crt"))
    proc = daemon_processes(daemon_config(work, manager.address, tls))
    assert proc.proc.wait(20) == 1
    _, err = proc.output()
    assert "D2001" in err and "missing.crt" in err
    assert "D2001" in logged_codes(work)

    creds = grpc.ssl_channel_credentials(root_certificates=(pki_dir / "ca.crt").read_bytes())
    with grpc.secure_channel(manager.address, creds) as channel:
        stub = pb_grpc.DaemonServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Register(pb.RegisterRequest(node=pb.NodeInfo(node_id="intruder")), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert manager.store().nodes() == []


@pytest.mark.timeout(40)
@pytest.mark.parametrize("case", ["client cert from another CA", "server cert for another name",
                                  "expired client cert"])
def test_rejected_tls_connections_log_d2001_and_store_nothing(case, pki_dir, tmp_path, daemon_processes):
    ca = load_ca(pki_dir)
    tls_dir = tmp_path / "server-tls"
    tls_dir.mkdir()
    (tls_dir / "ca.crt").write_bytes(ca.cert_pem)
    client = tmp_path / "client"
    if case == "server cert for another name":
        ca.issue_server(("wrong.example",)).write(tls_dir / "server.crt", tls_dir / "server.key")
    else:
        ca.issue_server().write(tls_dir / "server.crt", tls_dir / "server.key")
    if case == "client cert from another CA":
        pki.CertificateAuthority.create("some other CA").issue_client("node-a").write(
            client.with_suffix(".crt"), client.with_suffix(".key"))
    elif case == "expired client cert":
        ca.issue_client("node-a", expired=True).write(client.with_suffix(".crt"), client.with_suffix(".key"))
    else:
        ca.issue_client("node-a").write(client.with_suffix(".crt"), client.with_suffix(".key"))
    manager = Manager(str(tmp_path / "manager.db"), tls_dir)
    manager.start(0)
    try:
        work = tmp_path / "d"
        tls = {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(client.with_suffix(".crt")),
               "key_file": str(client.with_suffix(".key"))}
        proc = daemon_processes(daemon_config(work, manager.address, tls))
        wait_until(lambda: any(r.get("code") == "D2001" and "cannot connect" in r["message"]
                               for r in log_records(work)), timeout=20, what="D2001 in the daemon's log")
        assert proc.proc.poll() is None, "the daemon keeps running (and collecting) while it cannot connect"
        assert proc.stop() == 0
        store = manager.store()
        assert store.nodes() == []
        assert store.db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
        if case == "expired client cert":
            assert any("expired" in r["message"] and r.get("code") == "D2001" for r in log_records(work))
    finally:
        manager.stop()


def _outage(manager: Manager, work: Path, seconds: float, kill_daemon=None) -> None:
    """Stop the Manager for `seconds` while the daemon keeps collecting, then bring it back."""
    store = manager.store()
    node_id = _node_id(work)
    wait_until(lambda: len(store.reports(node_id)) >= 2, timeout=20, what="reports before the outage")
    port = manager.port
    manager.stop()
    built_before = len(file_reports(work))
    wait_until(lambda: len(file_reports(work)) >= built_before + seconds / 2, timeout=seconds + 10,
               interval=0.2, what="reports built during the first half of the outage")
    if kill_daemon is not None:
        kill_daemon()
    wait_until(lambda: len(file_reports(work)) >= built_before + seconds, timeout=seconds + 15,
               interval=0.2, what="reports built during the outage")
    assert any(r.get("code") in ("D2001", "D2003") for r in log_records(work))
    manager.start(port)


@pytest.mark.timeout(OUTAGE_SECONDS + 90)
def test_manager_outage_loses_nothing_and_stores_each_report_once(manager, pki_dir, tmp_path,
                                                                  daemon_processes):
    work = tmp_path / "d"
    proc = daemon_processes(daemon_config(work, manager.address, node_tls(pki_dir)))
    _outage(manager, work, OUTAGE_SECONDS)
    store = manager.store()
    node_id = _node_id(work)
    wait_until(lambda: len(store.reports(node_id)) >= len(file_reports(work)) - 1, timeout=30,
               what="the outbox to drain")
    assert proc.stop() == 0
    stored = _assert_every_report_stored_once(store, work)
    assert len(stored) >= OUTAGE_SECONDS
    assert store.node(node_id)["acked_seq"] == stored[-1]["seq"]


@pytest.mark.timeout(OUTAGE_SECONDS + 90)
def test_kill_9_during_an_outage_then_restart_loses_nothing(manager, pki_dir, tmp_path, daemon_processes):
    work = tmp_path / "d"
    cfg = daemon_config(work, manager.address, node_tls(pki_dir))
    procs = [daemon_processes(cfg)]

    def kill_and_restart() -> None:
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].proc.wait(10)
        procs.append(daemon_processes(cfg))

    _outage(manager, work, min(OUTAGE_SECONDS, 12), kill_daemon=kill_and_restart)
    store = manager.store()
    node_id = _node_id(work)
    wait_until(lambda: len(store.reports(node_id)) >= len(file_reports(work)) - 1, timeout=30,
               what="the outbox to drain")
    assert procs[-1].stop() == 0
    _assert_every_report_stored_once(store, work)


@pytest.mark.timeout(60)
def test_a_full_outbox_drops_the_oldest_and_reports_the_count(pki_dir, tmp_path, daemon_processes):
    port = free_port()
    work = tmp_path / "d"
    max_bytes = 12 * 1024
    proc = daemon_processes(daemon_config(
        work, f"127.0.0.1:{port}", node_tls(pki_dir), daemon={"report_interval": "100ms"},
        manager={"outbox": {"max_bytes": max_bytes}}))
    db = work / "outbox.db"
    wait_until(db.exists, timeout=15, what="the outbox file")

    def outbox() -> tuple[int, int]:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            try:
                size = con.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM reports").fetchone()[0]
                row = con.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
            except sqlite3.OperationalError:  # the daemon has created the file but not its tables yet
                return 0, 0
        assert size <= max_bytes
        return size, row[0] if row else 0

    wait_until(lambda: outbox()[1] >= 5, timeout=30, what="the outbox to drop the oldest reports")
    manager = Manager(str(tmp_path / "manager.db"), pki_dir)
    manager.start(port)
    try:
        store = manager.store()
        node_id = _node_id(work)
        stored = wait_until(lambda: store.reports(node_id), timeout=20,
                            what="reports after the Manager came up")
        assert stored[0]["seq"] > 1, "the oldest reports were dropped"
        assert stored[0]["outbox_dropped"] >= 5
        assert proc.stop() == 0
        assert store.node(node_id)["outbox_dropped"] is None or store.node(node_id)["outbox_dropped"] >= 5
    finally:
        manager.stop()


@pytest.mark.timeout(90)
def test_rotated_client_certificates_are_used_on_the_next_connection(pki_dir, tmp_path, daemon_processes):
    ca = load_ca(pki_dir)
    certs = tmp_path / "certs"
    first = ca.issue_client("node-r")
    first.write(certs / "client.crt", certs / "client.key")
    (certs / "ca.crt").write_bytes(ca.cert_pem)
    tls = {"ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"),
           "key_file": str(certs / "client.key")}
    manager = Manager(str(tmp_path / "manager.db"), pki_dir)
    manager.start(0)
    try:
        work = tmp_path / "d"
        daemon_processes(daemon_config(work, manager.address, tls))
        store = manager.store()
        node_id = _node_id(work)
        wait_until(lambda: (n := store.node(node_id)) and n["cert_serial"] == first.serial, timeout=20,
                   what="registration with the first certificate")

        # Same CA, new certificate: picked up without a restart.
        second = ca.issue_client("node-r")
        second.write(certs / "client.crt", certs / "client.key")
        wait_until(lambda: store.node(node_id)["cert_serial"] == second.serial, timeout=30,
                   what="re-registration with the rotated certificate")

        # The Manager moves to a new CA: the old certificate is refused until new files arrive.
        new_tls = tmp_path / "new-pki"
        new_ca = pki.init(new_tls)
        port = manager.port
        manager.stop()
        manager = Manager(str(tmp_path / "manager.db"), new_tls)
        manager.start(port)
        wait_until(lambda: sum(1 for r in log_records(work) if r.get("code") == "D2001") >= 1, timeout=30,
                   what="D2001 with the certificate of the old CA")
        third = new_ca.issue_client("node-r")
        third.write(certs / "client.crt", certs / "client.key")
        (certs / "ca.crt").write_bytes(new_ca.cert_pem)
        store = manager.store()
        wait_until(lambda: (n := store.node(node_id)) and n["cert_serial"] == third.serial, timeout=30,
                   what="registration with the certificate of the new CA")
        before = len(store.reports(node_id))
        wait_until(lambda: len(store.reports(node_id)) > before, timeout=20, what="reports after rotation")
    finally:
        manager.stop()


@pytest.mark.timeout(60)
def test_a_command_is_pushed_at_once_and_its_failure_reported(manager, pki_dir, tmp_path, daemon_processes):
    work = tmp_path / "d"
    daemon_processes(daemon_config(work, manager.address, node_tls(pki_dir)))
    store = manager.store()
    node_id = _node_id(work)
    wait_until(lambda: store.reports(node_id), timeout=20, what="the node to connect")
    # No handler for Agent commands in this daemon (the Agent is disabled): the answer must still come.
    command_id = store.enqueue_command(node_id, {"type": "agent", "action": "restart"})
    command = wait_until(lambda: next((c for c in store.commands(node_id) if c["state"] == "failed"), None),
                         timeout=10, what="the command's final status")
    assert command["id"] == command_id
    assert "no handler" in command["statuses"][-1]["message"]
    assert command["result"]["success"] is False
