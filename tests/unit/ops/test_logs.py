"""Local logs: size rotation and retention, level, and no key or certificate body in any log."""

from __future__ import annotations

import json
import logging

import pytest

from daemon_app import logs

PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
       "-----END PRIVATE KEY-----")


@pytest.fixture
def logfile(work_dir):
    path = work_dir / "log" / "daemon.log"
    yield path
    logs.close()
    logging.getLogger().removeHandler(logs.recent_problems)
    logging.getLogger().setLevel(logging.WARNING)
    logs.recent_problems.drain()


def test_rotation_keeps_size_and_count_bounded(logfile):
    logs.setup("info", str(logfile), max_bytes=4096, backups=2, stderr=False)
    log = logging.getLogger("daemon_app.test")
    for i in range(400):
        log.info("line %d %s", i, "x" * 40)
    logs.close()
    names = sorted(p.name for p in logfile.parent.iterdir())
    assert names == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    for p in logfile.parent.iterdir():
        assert p.stat().st_size <= 4096
    last = logfile.read_text().splitlines()[-1]
    assert json.loads(last)["message"].startswith("line 399 ")


def test_level_filters_and_lines_are_json(logfile):
    logs.setup("warning", str(logfile), stderr=False)
    log = logging.getLogger("daemon_app.test")
    log.info("quiet")
    log.error("D2001 loud", extra={"code": "D2001"})
    logs.set_level("debug")
    log.debug("now visible")
    logs.close()
    entries = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert [e["message"] for e in entries] == ["D2001 loud", "now visible"]
    assert entries[0]["code"] == "D2001" and entries[0]["level"] == "error"


def test_no_key_body_reaches_the_file_the_ring_or_an_exception_trace(logfile):
    logs.setup("info", str(logfile), stderr=False)
    logs.recent_problems.drain()
    log = logging.getLogger("daemon_app.test")
    log.warning("loaded key %s", PEM)
    log.warning("context", extra={"body": "cert: " + PEM})
    try:
        raise ValueError(PEM)
    except ValueError:
        log.exception("failed to parse")
    logs.close()
    text = logfile.read_text()
    ring = json.dumps(logs.recent_problems.drain())
    for out in (text, ring):
        assert "MIIEvQ" not in out and "BEGIN PRIVATE KEY" not in out
        assert "[redacted PEM block]" in out


def test_redact_leaves_ordinary_text_alone():
    assert logs.redact("key file /etc/daemon/certs/client.key") == "key file /etc/daemon/certs/client.key"
    assert logs.redact("a " + PEM + " b") == "a [redacted PEM block] b"


def test_a_key_file_given_as_config_does_not_leak_its_body(work_dir):
    from daemon_app import config
    from daemon_app.errors import DaemonError

    key = work_dir / "client.key"
    key.write_text(PEM + "\n")
    with pytest.raises(DaemonError) as info:
        config.load(key)
    assert "MIIEvQ" not in str(info.value)
    assert str(info.value).startswith("D1002 ")
