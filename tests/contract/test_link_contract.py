"""What a Manager built from the proto and docs may rely on: reports that survive the Manager's own
storage outage while heartbeats go on, a command stream that heals, interval overrides that reset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from daemon_app.proto import daemon_pb2 as pb
from daemon_manager import pki
from tests.e2e.conftest import PYZ
from tests.helpers import sample_agent_executable, wait_until
from tests.integration.manager.conftest import log_records


def _contiguous(manager) -> list[int]:
    with manager.lock:
        return sorted(manager.reports)


@pytest.mark.timeout(90)
def test_reports_refused_for_10_s_then_accepted_no_gap_no_duplicate_and_heartbeats_go_on(
        independent, run_daemon, tmp_path):
    daemon = run_daemon(independent.address)
    wait_until(lambda: len(independent.reports) >= 2, timeout=30, what="the first reports")
    independent.refuse_reports_until = time.monotonic() + 10
    beats_before = independent.heartbeat_count()
    refused_from = time.monotonic()
    wait_until(lambda: time.monotonic() - refused_from > 10, timeout=15, what="the outage")
    with independent.lock:
        beats = [t for t, _ in independent.heartbeats if t > refused_from]
    # Heartbeats every second all through the Manager's outage: at most one late beat, no gap.
    assert len(beats) >= 7, f"only {len(beats)} heartbeats in the 10 s outage"
    gaps = [b - a for a, b in zip([refused_from] + beats, beats, strict=False)]
    assert max(gaps) < 3.5, f"heartbeats stopped for {max(gaps):.1f} s"
    assert independent.heartbeat_count() > beats_before
    assert len(independent.registers) == 1, "the daemon left the connection and registered again"
    wait_until(lambda: (s := _contiguous(independent)) and len(s) >= 30, timeout=30,
               what="the backlog after the outage")
    assert daemon.stop() == 0
    seqs = _contiguous(independent)
    assert seqs == list(range(1, len(seqs) + 1)), "a gap in the reports"
    reports = [independent.reports[s] for s in seqs]
    assert len({r.timestamp for r in reports}) == len(reports), "a report stored twice"
    errors = [r for r in log_records(tmp_path / "d") if r.get("code") == "D2003" and r["level"] == "error"]
    assert 1 <= len(errors) <= 2, f"the outage was logged {len(errors)} times, not once a minute"
    assert "UNAVAILABLE: storage is down" in errors[0]["message"]


@pytest.mark.timeout(60)
def test_garbage_on_the_command_stream_is_logged_and_a_later_command_still_arrives(independent, run_daemon,
                                                                                   tmp_path):
    daemon = run_daemon(independent.address)
    wait_until(lambda: independent.streams_opened >= 1, timeout=30, what="the command stream")
    independent.push(b"\x0a\xff\xff\xff")  # a truncated protobuf: field 1 with a length past the end
    wait_until(lambda: independent.streams_opened >= 2, timeout=15, what="the stream re-opened")
    independent.push(pb.Command(id="after-garbage", agent=pb.AgentCommand(action="restart")))
    logged = wait_until(lambda: [r for r in log_records(tmp_path / "d") if "after-garbage" in r["message"]],
                        timeout=10, what="the valid command to be received")
    assert logged
    errors = [r for r in log_records(tmp_path / "d") if r.get("code") == "D2001" and r["level"] == "error"]
    assert any("is not a daemon.v1.Command" in r["message"] and "re-opening" in r["message"]
               for r in errors), errors
    assert len(independent.registers) == 1
    stream = _status(daemon)["manager"]["command_stream"]
    assert stream["state"] == "open" and stream["reopens"] >= 1 and stream["opened_at"].endswith("Z")
    assert "is not a daemon.v1.Command" in stream["last_error"]


def _status(daemon) -> dict:
    out = subprocess.run([sys.executable, str(PYZ), "-c", daemon.config_path, "status", "--format", "json"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.timeout(60)
def test_a_heartbeat_interval_override_and_its_reset_with_0(independent, run_daemon):
    # A configured 0.5 s against a 2.5 s override: 5 times apart, so a loaded machine cannot blur them.
    run_daemon(independent.address, heartbeat_interval="500ms")
    wait_until(lambda: independent.heartbeat_count() >= 2, timeout=30, what="heartbeats")
    independent.next_interval_ms = 2500
    wait_until(lambda: independent.heartbeat_count() >= 4, timeout=10, what="the override to be answered")
    with independent.lock:
        start = len(independent.heartbeats)
    t0 = time.monotonic()
    wait_until(lambda: independent.heartbeat_count() >= start + 2, timeout=20, what="two slow heartbeats")
    slow = (time.monotonic() - t0) / 2
    assert slow > 2.0, f"the 2.5 s override was not followed ({slow:.1f} s)"
    independent.next_interval_ms = 0
    wait_until(lambda: independent.heartbeat_count() >= start + 4, timeout=15, what="the reset")
    with independent.lock:
        count = len(independent.heartbeats)
    t1 = time.monotonic()
    wait_until(lambda: independent.heartbeat_count() >= count + 3, timeout=10, what="fast heartbeats again")
    assert (time.monotonic() - t1) / 3 < 1.5, "0 did not restore the configured 0.5 s"


def _answers(manager, command_id: str) -> list[pb.CommandStatus]:
    with manager.lock:
        return [s for s in manager.statuses if s.command_id == command_id]


@pytest.mark.timeout(60)
def test_unknown_kind_unknown_action_and_a_resent_command_each_get_one_terminal_answer(
        independent, run_daemon, tmp_path):
    run_daemon(independent.address)
    wait_until(lambda: independent.streams_opened >= 1, timeout=30, what="the command stream")
    independent.push(pb.Command(id="no-kind"))
    independent.push(pb.Command(id="bad-action", agent=pb.AgentCommand(action="dance")))
    independent.push(pb.Command(id="no-agent", agent=pb.AgentCommand(action="restart")))
    for cid in ("no-kind", "bad-action", "no-agent"):
        wait_until(lambda cid=cid: _answers(independent, cid), timeout=15, what=f"an answer to {cid}")
    assert [s.state for s in _answers(independent, "no-kind")] == ["rejected"]
    assert _answers(independent, "no-kind")[0].message.startswith("D2003 command no-kind has no kind")
    bad = _answers(independent, "bad-action")[0]
    assert (bad.state, bad.result.success) == ("rejected", False)
    assert bad.message.startswith("D3001 agent command bad-action: unknown action 'dance'")
    # This daemon supervises no Agent: the command is answered failed, with the reason.
    assert [s.state for s in _answers(independent, "no-agent")] == ["failed"]
    assert "D3001 no handler for command type 'agent'" in _answers(independent, "no-agent")[0].message

    # The Manager ends the stream and sends all three again on the next one, as one that missed the
    # answers would.
    opened = independent.streams_opened
    independent.end_streams()
    wait_until(lambda: independent.streams_opened > opened, timeout=15, what="a new command stream")
    for cid in ("no-kind", "bad-action", "no-agent"):
        independent.push(pb.Command(id=cid, agent=pb.AgentCommand(action="restart")))
    for cid in ("no-kind", "bad-action", "no-agent"):
        wait_until(lambda cid=cid: len(_answers(independent, cid)) == 2, timeout=15,
                   what=f"{cid} answered again")
        first, again = _answers(independent, cid)
        assert again == first, "a resent command got a different answer"
    records = log_records(tmp_path / "d")
    assert sum("command no-agent (agent) received" in r["message"] for r in records) == 1, "run twice"
    assert sum("has ended; sending its status again" in r["message"] for r in records) == 3


@pytest.mark.timeout(90)
def test_agent_commands_are_answered_with_their_outcome_not_when_queued(independent, run_daemon, tmp_path):
    binary = tmp_path / "agent-bin"  # this test's own copy: it deletes it below
    shutil.copy2(sample_agent_executable(), binary)
    run_daemon(independent.address, agent={"enabled": True, "binary_path": str(binary),
                                           "args": ["--interval", "0.5"]})
    wait_until(lambda: independent.streams_opened >= 1, timeout=30, what="the command stream")
    agent_pid = tmp_path / "d" / "agent.pid"
    wait_until(lambda: agent_pid.exists(), timeout=30, what="the Agent's pid file")
    first = agent_pid.read_text().strip()
    independent.push(pb.Command(id="restart-1", agent=pb.AgentCommand(action="restart")))
    wait_until(lambda: _answers(independent, "restart-1"), timeout=30, what="the restart's answer")
    (done,) = _answers(independent, "restart-1")
    assert (done.state, done.message, done.result.success) == ("completed", "agent restart: done", True)
    wait_until(lambda: agent_pid.exists() and agent_pid.read_text().strip() != first, timeout=30,
               what="a new Agent after the restart")

    # The binary disappears (a careless deploy): a start now fails, and says why.
    independent.push(pb.Command(id="stop-1", agent=pb.AgentCommand(action="stop")))
    wait_until(lambda: _answers(independent, "stop-1"), timeout=30, what="the stop's answer")
    binary.unlink()
    independent.push(pb.Command(id="start-1", agent=pb.AgentCommand(action="start")))
    wait_until(lambda: _answers(independent, "start-1"), timeout=30, what="the start's answer")
    (failed,) = _answers(independent, "start-1")
    assert failed.state == "failed" and not failed.result.success
    assert failed.message.startswith("agent start: D3001"), failed.message


@pytest.mark.timeout(60)
def test_a_manager_certificate_from_another_ca_is_refused_with_d2001(independent, run_daemon, tmp_path):
    other = tmp_path / "other-ca"
    pki.init(other, [])
    run_daemon(independent.address, tls={"ca_file": str(other / "ca.crt")})
    error = wait_until(lambda: [r for r in log_records(tmp_path / "d") if r.get("code") == "D2001"],
                       timeout=20, what="a D2001")[0]
    assert error["message"].startswith(f"D2001 cannot connect to manager {independent.address}: "
                                       "the Manager's certificate was refused: unable to get local issuer "
                                       "certificate")
    assert independent.registers == []


@pytest.mark.timeout(60)
def test_a_client_certificate_the_manager_refuses_is_one_d2001_that_says_so(independent, run_daemon,
                                                                           tmp_path):
    other = tmp_path / "other-ca"
    pki.init(other, ["node-a"])
    run_daemon(independent.address, tls={"cert_file": str(other / "node-a.crt"),
                                         "key_file": str(other / "node-a.key")})
    error = wait_until(lambda: [r for r in log_records(tmp_path / "d") if r.get("code") == "D2001"],
                       timeout=20, what="a D2001")[0]
    assert "refused this daemon's client certificate (manager.tls.cert_file" in error["message"]
    t0 = time.monotonic()  # reconnects every 0.2-1 s: let several attempts fail
    wait_until(lambda: time.monotonic() - t0 > 4, timeout=10, what="more attempts")
    logged = [r for r in log_records(tmp_path / "d") if r.get("code") == "D2001" and r["level"] == "error"]
    assert len(logged) == 1, "the refusal is logged once, then rate-limited"
    assert independent.registers == []


@pytest.mark.timeout(90)
def test_a_node_id_the_manager_assigns_is_adopted_for_everything_and_kept_across_a_restart(
        independent, run_daemon, tmp_path):
    independent.node_id = "assigned-7"
    independent.refuse_reports_until = time.monotonic() + 3  # reports built before it was assigned
    daemon = run_daemon(independent.address)
    wait_until(lambda: len(independent.reports) >= 6, timeout=30, what="reports")
    own = (tmp_path / "d" / "node_id").read_text().strip()
    assert independent.registers[0].node.node_id == own != "assigned-7"
    with independent.lock:
        assert {r.node_id for r in independent.reports.values()} == {"assigned-7"}
        assert min(independent.reports) == 1, "the reports queued before the assignment are not all there"
        assert {h.node_id for _, h in independent.heartbeats[-2:]} == {"assigned-7"}
    assert (tmp_path / "d" / "node_id.manager").read_text().strip() == "assigned-7"
    assert daemon.stop() == 0
    run_daemon(independent.address)
    wait_until(lambda: len(independent.registers) >= 2, timeout=30, what="the second registration")
    assert independent.registers[1].node.node_id == "assigned-7"


@pytest.mark.timeout(60)
def test_a_malformed_assigned_node_id_is_refused_with_d2002_and_the_own_id_kept(independent, run_daemon,
                                                                               tmp_path):
    independent.node_id = "../../etc/passwd"
    run_daemon(independent.address)
    wait_until(lambda: len(independent.reports) >= 2, timeout=30, what="reports")
    own = (tmp_path / "d" / "node_id").read_text().strip()
    with independent.lock:
        assert {r.node_id for r in independent.reports.values()} == {own}
    assert not (tmp_path / "d" / "node_id.manager").exists()
    assert any(r.get("code") == "D2002" and "'../../etc/passwd' is not 1-128 characters" in r["message"]
               for r in log_records(tmp_path / "d"))


@pytest.mark.timeout(60)
def test_a_partial_ack_gets_the_rest_resent_without_gap_or_duplicate(independent, run_daemon):
    independent.refuse_reports_until = time.monotonic() + 4  # a backlog, so batches hold several reports
    independent.ack_at_most = 2
    daemon = run_daemon(independent.address)
    wait_until(lambda: len(independent.reports) >= 16, timeout=40, what="reports acked two at a time")
    assert daemon.stop() == 0
    seqs = _contiguous(independent)
    assert seqs == list(range(1, len(seqs) + 1))
    assert max(independent.batch_sizes) > 2, "no batch was larger than the ack: nothing was partial"
    reports = [independent.reports[s] for s in seqs]
    assert len({r.timestamp for r in reports}) == len(reports)
