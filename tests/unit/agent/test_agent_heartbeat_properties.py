"""Property-based tests of the heartbeat line parser: any input parses or raises InvalidHeartbeat
(D3003), never another exception, and parsing one line stays within a bounded amount of memory."""

from __future__ import annotations

import json
import tracemalloc

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon_app.agent.heartbeat import (
    MAX_DEPTH,
    MAX_LINE,
    InvalidHeartbeat,
    Peer,
    json_depth,
    parse_heartbeat,
)
from daemon_app.errors import AgentHealthError

PEER = Peer(10, 0, 0)
GOOD = {"pid": 4242, "timestamp": "2026-05-01T12:00:00.5Z", "version": "1.2.3", "status": "running"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)
# Bytes drawn mostly from JSON's structural characters: the inputs a depth scanner gets wrong.
structural = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"1", b"a", b" "]),
                      max_size=400).map(b"".join)


def parses_or_refuses(line: bytes) -> None:
    try:
        hb = parse_heartbeat(line, PEER)
    except InvalidHeartbeat as exc:
        assert isinstance(exc, AgentHealthError) and str(exc).startswith("D3003 ")
        assert len(str(exc)) < 400, "the reason must quote at most a short excerpt of the line"
    else:
        assert hb.pid > 0 and hb.cpu >= 0 and hb.memory >= 0


def real_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((real_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((real_depth(v) for v in value.values()), default=0)
    return 0


@SETTINGS
@given(st.binary(max_size=2000))
@example(b"[" * 60000)
@example(b'{"pid": 1' + b"0" * 400 + b"}")
@example(b'{"a": "' + b'\\"' * 3000)
def test_any_bytes_parse_or_raise_invalid_heartbeat(line):
    parses_or_refuses(line)


@SETTINGS
@given(structural)
def test_any_bracket_soup_parses_or_raises_invalid_heartbeat(line):
    parses_or_refuses(line)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["pid", "timestamp", "version", "status", "cpu", "memory", "x"]),
                       json_values, max_size=7))
def test_any_json_object_with_the_heartbeat_fields_parses_or_raises_invalid_heartbeat(fields):
    line = json.dumps(dict(GOOD, **fields), allow_nan=True).encode()
    parses_or_refuses(line)


@SETTINGS
@given(json_values, st.integers(min_value=0, max_value=2 * MAX_DEPTH))
def test_the_depth_limit_counts_nesting_exactly_and_ignores_brackets_inside_strings(value, extra):
    wrapped: object = value
    for _ in range(extra):
        wrapped = [wrapped, "]]]{{\\\"["]
    line = json.dumps(dict(GOOD, x=wrapped)).encode()
    depth = 1 + real_depth(wrapped)
    assert json_depth(line) in (0, depth)  # 0: skipped, because it cannot exceed the limit
    assert (json_depth(line) > MAX_DEPTH) == (depth > MAX_DEPTH)


def test_parsing_a_hostile_line_of_the_maximum_size_stays_within_a_few_mb():
    lines = [b"[" * MAX_LINE, b"1" * MAX_LINE, b'"' + b"\\u00e9" * (MAX_LINE // 6),
             b'{"a":' * (MAX_LINE // 5), json.dumps(dict(GOOD, x=[0] * (MAX_LINE // 3))).encode()[:MAX_LINE]]
    tracemalloc.start()
    try:
        for line in lines:
            tracemalloc.reset_peak()
            parses_or_refuses(line)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 4 * 1024 * 1024, f"{peak} bytes to parse {line[:20]!r}..."
    finally:
        tracemalloc.stop()
