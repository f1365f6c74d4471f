"""One daemon per work_dir and per pid file: a second one refuses to start, clearly, with exit 1."""

from __future__ import annotations

import pytest

from .conftest import cli, stand_alone, wait_ready, write


@pytest.mark.timeout(60)
def test_a_second_daemon_on_the_same_work_dir_or_pid_file_refuses(ops_dir, daemon_processes):
    first_dir = ops_dir / "first"
    first_dir.mkdir()
    raw = stand_alone(first_dir)
    first = daemon_processes(write(first_dir, raw))
    wait_ready(first_dir)

    same_work_dir = dict(raw, daemon=dict(raw["daemon"], pid_file=str(ops_dir / "other.pid")))
    second = cli("-c", write(ops_dir, same_work_dir, "second.yaml"), "run")
    assert second.returncode == 1
    assert f"D1003 another daemon (pid {first.pid}) is already running with daemon.work_dir" in second.stderr

    other_dir = ops_dir / "third"
    same_pid_file = stand_alone(other_dir, daemon={"pid_file": raw["daemon"]["pid_file"]})
    other_dir.mkdir()
    third = cli("-c", write(other_dir, same_pid_file), "run")
    assert third.returncode == 1
    assert f"D1003 another daemon (pid {first.pid}) is already running with daemon.pid_file" in third.stderr
    assert not (other_dir / "control.sock").exists()

    # The refused ones left the running daemon alone: its control socket still answers.
    status = cli("-c", write(first_dir, raw), "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert first.proc.poll() is None
    assert first.stop() == 0
    assert (first_dir / "daemon.pid").read_text() == ""


def test_an_unusable_control_socket_path_stops_the_start_with_a_config_error(ops_dir):
    raw = stand_alone(ops_dir, daemon={"control_socket": str(ops_dir / ("s" * 120))})
    result = cli("-c", write(ops_dir, raw), "run")
    assert result.returncode == 2
    assert "D1002 config: daemon.control_socket:" in result.stderr
    assert "a Unix socket path must be at most 107" in result.stderr
    # Nothing is left locked: the same work_dir starts fine afterwards.
    assert (ops_dir / "daemon.pid").read_text() == ""
