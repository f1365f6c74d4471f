"""Reload of a real daemon: SIGHUP and `daemon reload` apply a valid config, refuse an invalid one."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import wait_until

from .conftest import cli, log_text, reports, stand_alone, wait_ready, write


@pytest.mark.timeout(60)
def test_sighup_with_a_valid_config_takes_effect_without_restart(ops_dir, daemon_processes):
    raw = stand_alone(ops_dir, daemon={"report_interval": "60s", "log_level": "info"})
    path = write(ops_dir, raw)
    proc = daemon_processes(path)
    wait_ready(ops_dir)
    assert len(reports(ops_dir)) == 1
    assert "handed to the reporters" not in log_text(ops_dir), "debug lines are off at level info"

    raw["daemon"].update(report_interval="200ms", log_level="debug")
    write(ops_dir, raw)
    proc.signal(signal.SIGHUP)
    wait_until(lambda: len(reports(ops_dir)) >= 4, timeout=15, what="reports at the new 200ms pace")
    text = log_text(ops_dir)
    assert "configuration reloaded (SIGHUP): daemon.log_level, daemon.report_interval" in text
    assert "handed to the reporters" in text, "the new log level is in force"
    assert proc.proc.poll() is None, "reload, not restart"
    assert proc.stop() == 0


@pytest.mark.timeout(60)
def test_invalid_config_is_refused_and_the_old_one_stays(ops_dir, daemon_processes):
    raw = stand_alone(ops_dir, daemon={"report_interval": "60s", "log_level": "info"})
    path = write(ops_dir, raw)
    proc = daemon_processes(path)
    wait_ready(ops_dir)

    bad = dict(raw, daemon=dict(raw["daemon"], report_interval="soon"))
    write(ops_dir, bad)
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload (SIGHUP) refused" in log_text(ops_dir), timeout=15)
    expected = "D1002 config: daemon.report_interval: must be a duration like 30s, got 'soon'"
    assert expected in log_text(ops_dir)

    # `daemon reload` reaches the daemon even though the file on disk is broken, and says why.
    refused = cli("-c", path, "reload")
    assert refused.returncode == 1
    assert "reload refused; the running configuration stays in force" in refused.stderr
    assert "D1002 config: daemon.report_interval" in refused.stderr

    write(ops_dir, dict(raw, daemon=dict(raw["daemon"], report_interval="200ms")))
    ok = cli("-c", path, "reload")
    assert ok.returncode == 0, ok.stderr
    assert "reloaded" in ok.stdout and "daemon.report_interval" in ok.stdout
    wait_until(lambda: len(reports(ops_dir)) >= 3, timeout=15, what="reports at the new pace")
    assert proc.proc.poll() is None
    assert proc.stop() == 0


def test_reload_without_a_daemon_exits_3(ops_dir):
    result = cli("-c", write(ops_dir, stand_alone(ops_dir)), "reload")
    assert result.returncode == 3
    assert "D1004 the daemon is not running" in result.stderr
