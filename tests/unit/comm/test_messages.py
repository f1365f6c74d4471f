"""Report and command conversions between the daemon's dicts and daemon.v1 messages."""

from __future__ import annotations

import pytest

from daemon_app.comm import messages
from daemon_app.proto import daemon_pb2 as pb


def _report():
    return {
        "node_id": "n1",
        "timestamp": "2026-11-29T05:07:19.123456Z",
        "metrics": {
            "cpu": {"name": "cpu", "timestamp": "2026-11-29T05:07:19.100000Z",
                    "values": {"usage_percent": 12.5, "cores": 4, "model": "x"}},
            "network": {"name": "network", "timestamp": "2026-11-29T05:07:19.100000Z",
                        "values": {"interfaces": [{"interface": "lo", "bytes_sent": 2**62}]}},
        },
        "agent_status": {"pid": 7, "state": "RUNNING", "version": "1.2.3", "start_time": None,
                         "cpu_percent": 0.5, "memory_bytes": 1024, "restart_count": 2, "last_restart": None,
                         "last_exit": {"code": 1}},
        "logs": [{"level": "error", "message": "D5001 x", "timestamp": "2026-11-29T05:07:19Z",
                  "fields": {"code": "D5001"}}],
        "custom": {"k": 1},
    }


def test_report_round_trip_keeps_every_value_exactly():
    report = _report()
    msg = pb.Report.FromString(messages.report_to_pb(report).SerializeToString())
    msg.seq, msg.node_id, msg.outbox_dropped = 9, "n1", 3
    back = messages.report_from_pb(msg)
    assert back["metrics"] == report["metrics"]
    assert isinstance(back["metrics"]["cpu"]["values"]["cores"], int)
    assert back["logs"] == report["logs"]
    assert back["custom"] == {"k": 1}
    assert back["seq"] == 9 and back["outbox_dropped"] == 3
    assert back["agent_status"]["last_exit"] == {"code": 1}
    assert back["agent_status"]["state"] == "RUNNING" and back["agent_status"]["pid"] == 7


def test_report_without_agent_has_no_agent_status():
    report = dict(_report(), agent_status=None)
    assert messages.report_from_pb(messages.report_to_pb(report))["agent_status"] is None


@pytest.mark.parametrize("d", [
    {"id": "u1", "type": "update", "component": "agent", "url": "https://m/a", "manifest": b'{"a":1}',
     "manifest_sig": "c2ln"},
    {"id": "r1", "type": "rollback", "component": "daemon"},
    {"id": "a1", "type": "agent", "action": "restart"},
])
def test_command_dicts_round_trip(d):
    assert messages.command_to_dict(messages.command_from_dict(d)) == d


def test_unknown_command_type_is_refused():
    with pytest.raises(ValueError, match="unknown command type"):
        messages.command_from_dict({"type": "reboot"})


@pytest.mark.parametrize(("state", "status"), [
    ("RUNNING", "running"), ("STARTING", "running"), ("STOPPING", "running"), ("STOPPED", "stopped"),
    ("BACKOFF", "stopped"), ("EXITED", "stopped"), ("FATAL", "stopped"), ("", "unknown"), ("odd", "unknown")])
def test_agent_status_carries_the_seeds_status_beside_the_supervisor_state(state, status):
    msg = messages.agent_status_to_pb({"pid": 7, "state": state})
    assert (msg.state, msg.status) == (state, status)
    assert messages.agent_status_from_pb(msg)["status"] == status


def test_a_status_quoting_megabytes_is_cut_to_stay_far_below_what_a_manager_accepts():
    huge = "D6001 " + "x" * (5 * 1024 * 1024)
    msg = messages.status_to_pb("n", "c-1", "failed", 0.0, huge, {"success": False, "error": huge})
    assert len(msg.SerializeToString()) < 64 * 1024
    assert msg.message.startswith("D6001 x") and msg.message.endswith("characters cut)")
    assert msg.result.error == msg.message
    short = messages.status_to_pb("n", "c-1", "failed", 0.0, "D6001 short", {"error": "D6001 short"})
    assert short.message == short.result.error == "D6001 short"
