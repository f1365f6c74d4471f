"""`daemon status` against a real daemon, and without one."""

from __future__ import annotations

import json

import pytest

from .conftest import cli, stand_alone, wait_ready, write

TOP_LEVEL = ("version", "pid", "uptime_s", "node_id", "config", "manager", "agent", "collectors",
             "plugins", "update")


@pytest.mark.timeout(60)
def test_status_json_has_every_field_and_text_reads_well(ops_dir, daemon_processes):
    raw = stand_alone(ops_dir, collectors={"network": {"enabled": False}})
    path = write(ops_dir, raw)
    proc = daemon_processes(path)
    wait_ready(ops_dir)

    result = cli("-c", path, "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    for key in TOP_LEVEL:
        assert key in status, key
    assert status["pid"] == proc.pid
    assert status["node_id"] == (ops_dir / "node_id").read_text().strip()
    assert status["config"] == path
    assert status["manager"] is None and status["agent"] is None and status["update"] is None
    assert set(status["collectors"]) == {"cpu", "memory", "disk"}
    for entry in status["collectors"].values():
        assert entry["ok"] is True and entry["error"] == "" and entry["duration_ms"] >= 0
        assert entry["last_run"].endswith("Z")
    assert {p["name"] for p in status["plugins"]} >= {"cpu", "memory", "disk", "network", "file-reporter"}
    assert status["reports_built"] >= 1
    threads = status["threads"]
    names = [t["name"] for t in threads["threads"]]
    assert threads["count"] == len(names) and "MainThread" in names and "control" in names
    assert all(t["reason"] != "unlisted" for t in threads["threads"]), threads
    assert threads["os_threads"] >= threads["count"]

    text = cli("-c", path, "status")
    assert text.returncode == 0
    assert text.stdout.startswith(f"daemon {status['version']} (pid {proc.pid}) running, up ")
    assert "manager    none (stand-alone)" in text.stdout
    assert "update     none in progress" in text.stdout
    assert "  threads    " in text.stdout

    # A broken config file on disk does not keep status from finding the daemon.
    write(ops_dir, dict(raw, daemon=dict(raw["daemon"], report_interval="soon")))
    assert cli("-c", path, "status").returncode == 0
    assert proc.stop() == 0


def test_status_without_a_daemon_says_so_and_exits_3(ops_dir):
    path = write(ops_dir, stand_alone(ops_dir))
    result = cli("-c", path, "status", "--format", "json")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.strip() == (f"D1004 the daemon is not running (no control socket answers at "
                                     f"{ops_dir / 'control.sock'}); asked the control socket from -c {path}")
    other = cli("status", "--socket", str(ops_dir / "elsewhere.sock"))
    assert other.returncode == 3
