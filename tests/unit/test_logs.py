"""Logging: JSON lines to a size-rotated file, readable text on a terminal, no key material."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys

import pytest

from daemon_app import logs
from tests.helpers import ROOT


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler is not logs.recent_problems:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logs.recent_problems.drain()


def test_log_file_gets_json_lines_with_code_and_fields(tmp_path, restore_logging):
    path = tmp_path / "sub" / "daemon.log"
    logs.setup("info", str(path), stderr=False)
    log = logging.getLogger("daemon_app.test")
    log.debug("not at info")
    log.error("D5001 collector disk: timed out", extra={"code": "D5001", "collector": "disk"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("with traceback")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["message"] for e in entries] == ["D5001 collector disk: timed out", "with traceback"]
    first = entries[0]
    assert first["level"] == "error" and first["logger"] == "daemon_app.test"
    assert first["code"] == "D5001" and first["collector"] == "disk"
    assert first["timestamp"].endswith("Z")
    assert "ValueError: bad" in entries[1]["exception"]


def test_log_file_is_rotated_by_size_and_keeps_the_configured_backups(tmp_path, restore_logging):
    path = tmp_path / "daemon.log"
    logs.setup("info", str(path), max_bytes=4096, backups=2, stderr=False)
    log = logging.getLogger("daemon_app.test")
    for i in range(200):
        log.info("line %d %s", i, "x" * 100)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 4096
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line)  # every line of every file is whole JSON
    last = json.loads((tmp_path / "daemon.log").read_text().splitlines()[-1])
    assert last["message"].startswith("line 199 ")


def test_pem_blocks_never_reach_the_log(tmp_path, restore_logging):
    path = tmp_path / "daemon.log"
    logs.setup("info", str(path), stderr=False)
    secret = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    logging.getLogger("daemon_app.test").warning("loaded %s", secret)
    text = path.read_text()
    assert "MIIEvQ" not in text and "[redacted PEM block]" in text


def test_recent_warnings_and_errors_are_kept_for_the_next_report(restore_logging):
    logs.setup("info", "", stderr=False)
    logs.recent_problems.drain()
    log = logging.getLogger("daemon_app.test")
    log.info("routine")
    log.warning("careful", extra={"code": "D2001"})
    drained = logs.recent_problems.drain()
    assert [(e["level"], e["message"]) for e in drained] == [("warning", "careful")]
    assert drained[0]["fields"] == {"code": "D2001"}
    assert logs.recent_problems.drain() == []


SNIPPET = (
    "import logging; from daemon_app import logs; logs.setup('info', ''); "
    "logging.getLogger('daemon_app.x').warning('D2001 manager down', extra={'code': 'D2001'})"
)


def test_terminal_gets_human_text_and_a_pipe_gets_json():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", SNIPPET], stderr=slave, env=env, timeout=30)
        assert proc.returncode == 0
        text = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "WARNING daemon_app.x: D2001 manager down" in text and "{" not in text

    piped = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env,
                           timeout=30)
    entry = json.loads(piped.stderr)
    assert entry["message"] == "D2001 manager down" and entry["code"] == "D2001"


def test_debug_level_keeps_the_http2_libraries_frame_by_frame_lines_out(tmp_path):
    log_file = tmp_path / "daemon.log"
    logs.setup("debug", str(log_file), stderr=False)
    try:
        logging.getLogger("hpack.hpack").debug("Encoding 3 with 7 bits")
        logging.getLogger("h2.connection").debug("frame received")
        logging.getLogger("daemon_app.engine").debug("own debug line")
        logging.getLogger("grpclib.client").warning("library warning")
    finally:
        logs.close()
    text = log_file.read_text()
    assert "own debug line" in text and "library warning" in text
    assert "Encoding 3" not in text and "frame received" not in text
