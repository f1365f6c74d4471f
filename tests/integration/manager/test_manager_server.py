"""The reference Manager as a gRPC server: validation, duplicates, garbage, command delivery."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from daemon_app.proto import daemon_pb2 as pb
from daemon_app.proto import daemon_pb2_grpc as pb_grpc
from tests.helpers import wait_until


def _channel(manager, pki_dir, node="node-a"):
    creds = grpc.ssl_channel_credentials(root_certificates=(pki_dir / "ca.crt").read_bytes(),
                                         private_key=(pki_dir / f"{node}.key").read_bytes(),
                                         certificate_chain=(pki_dir / f"{node}.crt").read_bytes())
    return grpc.secure_channel(manager.address, creds)


def _report(seq, node="n1", values='{"usage_percent": 1.5}', timestamp="2026-11-29T05:07:19.000001Z"):
    r = pb.Report(node_id=node, seq=seq, timestamp=timestamp)
    r.metrics["cpu"].CopyFrom(pb.MetricGroup(name="cpu", timestamp=timestamp, values_json=values))
    return r


def _code(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


@pytest.mark.timeout(30)
def test_garbage_and_oversized_messages_are_rejected_and_the_manager_keeps_serving(manager, pki_dir):
    with _channel(manager, pki_dir) as channel:
        raw = channel.unary_unary("/daemon.v1.DaemonService/ReportMetrics")
        garbage = b"\xff\xfe\x00garbage\x12\x99"
        assert _code(lambda: raw(garbage, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: raw(b"\x0a" + b"\x00" * (5 * 1024 * 1024), timeout=10)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        stub = pb_grpc.DaemonServiceStub(channel)
        for bad in ("", "../../etc", "x" * 200, "bad id"):
            assert _code(lambda b=bad: stub.Register(pb.RegisterRequest(node=pb.NodeInfo(node_id=b)),
                                                     timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
        big_labels = pb.NodeInfo(node_id="n1", labels={f"k{i}": "v" for i in range(100)})
        assert _code(lambda: stub.Register(pb.RegisterRequest(node=big_labels), timeout=5)) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: stub.ReportMetrics(pb.ReportBatch(node_id="n1", reports=[_report(1)]),
                                                timeout=5)) == grpc.StatusCode.FAILED_PRECONDITION
        # Still healthy: a proper node registers and reports.
        reg = stub.Register(pb.RegisterRequest(node=pb.NodeInfo(node_id="n1", hostname="h")), timeout=5)
        assert reg.node_id == "n1"
        ack = stub.ReportMetrics(pb.ReportBatch(node_id="n1", reports=[_report(1)]), timeout=5)
        assert (ack.acked_seq, ack.stored) == (1, 1)
    store = manager.store()
    assert [n["node_id"] for n in store.nodes()] == ["n1"]
    assert [r["seq"] for r in store.reports("n1")] == [1]


@pytest.mark.timeout(30)
def test_invalid_reports_are_refused_one_by_one_and_duplicates_stored_once(manager, pki_dir):
    with _channel(manager, pki_dir) as channel:
        stub = pb_grpc.DaemonServiceStub(channel)
        stub.Register(pb.RegisterRequest(node=pb.NodeInfo(node_id="n1")), timeout=5)
        batch = pb.ReportBatch(node_id="n1", reports=[
            _report(1), _report(2, values="{not json"), _report(3, timestamp="yesterday"),
            _report(4, values="[1, 2]"), _report(5, node="other"), _report(6)])
        ack = stub.ReportMetrics(batch, timeout=5)
        assert list(ack.rejected_seqs) == [2, 3, 4, 5] and ack.error
        assert (ack.acked_seq, ack.stored) == (6, 2)
        again = stub.ReportMetrics(pb.ReportBatch(node_id="n1", reports=[_report(6), _report(7)]), timeout=5)
        assert (again.acked_seq, again.stored, again.duplicates) == (7, 1, 1)
        reg = stub.Register(pb.RegisterRequest(node=pb.NodeInfo(node_id="n1")), timeout=5)
        assert reg.acked_seq == 7
        status = pb.CommandStatus(node_id="n1", command_id="c", state="exploded")
        assert _code(lambda: stub.ReportCommandStatus(status, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    stored = manager.store().reports("n1")
    assert [r["seq"] for r in stored] == [1, 6, 7]
    assert stored[0]["metrics"]["cpu"]["values"] == {"usage_percent": 1.5}


@pytest.mark.timeout(30)
def test_a_node_id_stays_bound_to_the_certificate_that_registered_it(manager, pki_dir):
    with _channel(manager, pki_dir, "node-a") as a, _channel(manager, pki_dir, "node-b") as b:
        pb_grpc.DaemonServiceStub(a).Register(pb.RegisterRequest(node=pb.NodeInfo(node_id="n1")), timeout=5)
        other = pb_grpc.DaemonServiceStub(b)
        request = pb.RegisterRequest(node=pb.NodeInfo(node_id="n1"))
        assert _code(lambda: other.Register(request, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: other.ReportMetrics(pb.ReportBatch(node_id="n1", reports=[_report(1)]),
                                                 timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert manager.store().reports("n1") == []


@pytest.mark.timeout(30)
def test_commands_queued_by_another_process_are_pushed_promptly_and_redelivered_until_answered(
        manager, pki_dir):
    with _channel(manager, pki_dir) as channel:
        stub = pb_grpc.DaemonServiceStub(channel)
        stub.Register(pb.RegisterRequest(node=pb.NodeInfo(node_id="n1")), timeout=5)
        received: list[tuple[float, pb.Command]] = []
        call = stub.Commands(pb.CommandStreamRequest(node_id="n1"), timeout=20)

        def read():
            try:
                for cmd in call:
                    received.append((time.monotonic(), cmd))
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.3)  # let the stream settle into waiting; the timing below is what is measured
        queued_at = time.monotonic()
        command_id = manager.store().enqueue_command("n1", {"type": "rollback", "component": "agent"})
        wait_until(lambda: received, timeout=5, what="the pushed command")
        assert received[0][1].id == command_id and received[0][1].rollback.component == "agent"
        assert received[0][0] - queued_at < 1.5
        call.cancel()
        reader.join(5)
        assert manager.store().commands("n1")[0]["state"] == "sent"

        again = next(iter(stub.Commands(pb.CommandStreamRequest(node_id="n1"), timeout=5)))
        assert again.id == command_id, "an unanswered command is delivered again on the next stream"
        stub.ReportCommandStatus(pb.CommandStatus(node_id="n1", command_id=command_id, state="downloading",
                                                  percent=10), timeout=5)
        stub.ReportCommandStatus(pb.CommandStatus(node_id="n1", command_id=command_id, state="completed",
                                                  result=pb.UpdateResult(success=True, new_version="2")),
                                 timeout=5)
    command = manager.store().commands("n1")[0]
    assert command["state"] == "completed" and command["result"]["new_version"] == "2"
    assert [s["state"] for s in command["statuses"]] == ["downloading", "completed"]
