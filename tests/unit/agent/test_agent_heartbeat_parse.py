"""Heartbeat line validation (docs/agent-protocol.md): what is accepted and what is refused, and why."""

from __future__ import annotations

import json

import pytest

from daemon_app.agent.heartbeat import InvalidHeartbeat, Peer, parse_heartbeat

PEER = Peer(10, 0, 0)
GOOD = {"pid": 4242, "timestamp": "2026-05-01T12:00:00.5Z", "version": "1.2.3", "status": "running",
        "cpu": 3.5, "memory": 123456}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_a_complete_heartbeat_is_parsed():
    hb = parse_heartbeat(line(GOOD), PEER)
    assert (hb.pid, hb.version, hb.status, hb.cpu, hb.memory) == (4242, "1.2.3", "running", 3.5, 123456)
    assert hb.peer == PEER


def test_optional_fields_default_and_unknown_fields_are_ignored():
    minimal = {k: GOOD[k] for k in ("pid", "timestamp", "version", "status")}
    hb = parse_heartbeat(line(dict(minimal, extra={"x": 1}, timestamp="2026-05-01T12:00:00+02:00")), PEER)
    assert hb.cpu == 0.0 and hb.memory == 0


@pytest.mark.parametrize(("payload", "why"), [
    (b"\xff\xfe\x00", "not JSON"),
    (b"{nope", "not JSON"),
    (b"[]", "JSON object"),
    (b'"text"', "JSON object"),
    (line(dict(GOOD, pid="4242")), "pid"),
    (line(dict(GOOD, pid=True)), "pid"),
    (line(dict(GOOD, pid=-1)), "pid"),
    (line({k: v for k, v in GOOD.items() if k != "pid"}), "pid"),
    (line(dict(GOOD, version=1)), "version"),
    (line(dict(GOOD, version="")), "version"),
    (line(dict(GOOD, status="x" * 300)), "status"),
    (line(dict(GOOD, timestamp="tuesday")), "RFC 3339"),
    (line(dict(GOOD, cpu="lots")), "cpu"),
    (line(dict(GOOD, cpu=-1)), "cpu"),
    (line(dict(GOOD, memory=1.5)), "memory"),
    (line(dict(GOOD, memory=False)), "memory"),
    (line(dict(GOOD, memory=2**70)), "memory"),
    (line(dict(GOOD, version="1.0\x1b[2J")), "printable"),
    (line(dict(GOOD, status="ok\nD3001 forged log line")), "printable"),
    (line(dict(GOOD, pid=10**400)), "pid"),
    (line(dict(GOOD, pid=2**40)), "pid"),
    (line(dict(GOOD, cpu=float("nan"))), "NaN"),
    (line(dict(GOOD, cpu=float("inf"))), "Infinity"),
    (line(dict(GOOD, cpu=1e300)), "cpu"),
    (line(GOOD)[:-1] + b', "cpu": 1e999}', "out of range"),
    (b"[" * 60000, "nested deeper than 32"),
    (b"x" * (64 * 1024 + 1), "longer than"),
])
def test_invalid_lines_are_refused_with_the_reason(payload, why):
    with pytest.raises(InvalidHeartbeat, match=why) as caught:
        parse_heartbeat(payload, PEER)
    assert caught.value.code == "D3003" and len(str(caught.value)) < 200
