"""`daemon run` stand-alone: collects on schedule, the file reporter writes reports, signals stop it."""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import base_config, wait_until, write_config


def fast_config(tmp_path, **extra):
    fast = {"interval": "200ms"}
    return write_config(tmp_path / "daemon.yaml", base_config(
        tmp_path,
        daemon={"report_interval": "300ms", "shutdown_timeout": "5s"},
        collectors={name: fast for name in ("cpu", "memory", "disk", "network")},
        **extra,
    ))


def read_reports(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_standalone_writes_reports_and_stops_cleanly_on_signal(tmp_path, daemon_processes, sig):
    daemon = daemon_processes(fast_config(tmp_path))
    reports_file = tmp_path / "reports.jsonl"
    reports = wait_until(lambda: len(r := read_reports(reports_file)) >= 3 and r, timeout=30,
                         what="three reports")
    daemon.signal(sig)
    assert daemon.stop(timeout=20) == 0
    node_id = (tmp_path / "node_id").read_text().strip()
    for report in reports:
        assert report["node_id"] == node_id
        assert {"timestamp", "metrics", "agent_status", "logs"} <= set(report)
    assert set(reports[-1]["metrics"]) == {"cpu", "memory", "disk", "network"}
    assert reports[-1]["metrics"]["memory"]["values"]["total"] > 0
    log_lines = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines()]
    messages = [entry["message"] for entry in log_lines]
    assert any("starting" in m for m in messages) and messages[-1] == "daemon stopped"
    assert all({"timestamp", "level", "logger", "message"} <= set(e) for e in log_lines)


@pytest.mark.timeout(60)
def test_file_reporter_stays_bounded(tmp_path, daemon_processes):
    daemon = daemon_processes(fast_config(tmp_path, reporters={"file": {"max_bytes": 2048}}))
    reports_file = tmp_path / "reports.jsonl"
    wait_until(lambda: (tmp_path / "reports.jsonl.1").exists() and len(read_reports(reports_file)) >= 1,
               timeout=30, what="a rotation of reports.jsonl")
    assert daemon.stop(timeout=20) == 0
    # One report may exceed max_bytes alone; rotation keeps one old file, so disk use stays bounded.
    assert not (tmp_path / "reports.jsonl.2").exists()
    assert len(read_reports(tmp_path / "reports.jsonl.1")) >= 1
