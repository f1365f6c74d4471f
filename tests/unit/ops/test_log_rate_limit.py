"""Repeated log records (issue #10 item 2): the first is logged, repeats are counted and summarised
once per window, in the log file and in the recent-problems list that travels with reports."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket

import pytest

from daemon_app import logs
from daemon_app.agent.heartbeat import HeartbeatServer
from tests.helpers import short_tmpdir, wait_until

WINDOW = 0.5  # seconds; the daemon's is 60


@pytest.fixture
def logfile(tmp_path, monkeypatch):
    monkeypatch.setattr(logs.rate_limiter, "interval", WINDOW)
    path = tmp_path / "daemon.log"
    logs.setup("info", str(path), stderr=False)
    logs.recent_problems.drain()
    yield path
    logs.close()
    logging.getLogger().removeHandler(logs.recent_problems)
    logging.getLogger().setLevel(logging.WARNING)
    logs.recent_problems.drain()


def entries(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def refuse(log: logging.Logger, i: int) -> None:
    log.warning("D5001 peer %d refused", i, extra={"code": "D5001"})  # one call site for every i


def test_a_flood_of_one_record_is_one_line_then_one_summary_in_the_file_and_the_report(logfile,
                                                                                       monkeypatch):
    monkeypatch.setattr(logs.rate_limiter, "interval", 5.0)  # the whole flood fits in one window
    log = logging.getLogger("daemon_app.test")
    for i in range(10_000):
        refuse(log, i)
    assert [e["message"] for e in entries(logfile)] == ["D5001 peer 0 refused"]
    wait_until(lambda: len(entries(logfile)) == 2, 20, what="the summary line")
    summary = entries(logfile)[1]
    assert summary["message"].startswith("D5001 peer 9999 refused … repeated 9,999 times in ")
    assert summary["repeated"] == 9999 and summary["code"] == "D5001" and summary["level"] == "warning"
    problems = logs.recent_problems.drain()
    assert [p["message"] for p in problems] == [e["message"] for e in entries(logfile)]
    assert problems[1]["fields"]["repeated"] == "9999"


def test_other_sources_and_codes_are_not_held_back_by_a_flood(logfile):
    log = logging.getLogger("daemon_app.test")
    for i in range(100):
        refuse(log, i)
        log.error("D2001 link down", extra={"code": "D2001"})
        logging.getLogger("daemon_app.other").warning("D5001 peer %d refused", i, extra={"code": "D5001"})
        for name in ("disk", "boom"):  # one call site, two sources named in the message
            log.error("D5001 collector %s: timed out after %dms", name, 300 + i, extra={"code": "D5001"})
    log.info("routine info is never limited")
    log.info("routine info is never limited")
    messages = [e["message"] for e in entries(logfile)]
    assert messages == ["D5001 peer 0 refused", "D2001 link down", "D5001 peer 0 refused",
                        "D5001 collector disk: timed out after 300ms",
                        "D5001 collector boom: timed out after 300ms",
                        "routine info is never limited", "routine info is never limited"]


def test_a_flood_that_goes_on_costs_one_summary_per_window_and_loses_no_count(logfile):
    log = logging.getLogger("daemon_app.test")
    sent = 0

    def one_more() -> int:
        nonlocal sent
        refuse(log, sent)
        sent += 1
        return len(entries(logfile))

    for windows in range(2, 5):  # the first line, then a summary at the end of each window
        wait_until(lambda n=windows: one_more() >= n, 10, interval=0.001, what=f"summary {windows - 1}")
    logs.close()  # writes what is still pending
    found = entries(logfile)
    assert found[0]["message"] == "D5001 peer 0 refused" and "repeated" not in found[0]
    assert all(e["repeated"] > 0 for e in found[1:]) and len(found) in (4, 5)
    assert 1 + sum(e["repeated"] for e in found[1:]) == sent


def test_close_writes_the_pending_count_at_once(logfile):
    log = logging.getLogger("daemon_app.test")
    for i in range(5):
        refuse(log, i)
    logs.close()
    found = entries(logfile)
    assert len(found) == 2 and found[1]["repeated"] == 4


def test_a_traceback_is_logged_once_and_not_repeated_in_the_summary(logfile):
    log = logging.getLogger("daemon_app.test")
    for _ in range(3):
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            log.exception("D5001 cannot write report", extra={"code": "D5001"})
    logs.close()
    first, summary = entries(logfile)
    assert "No space left" in first["exception"] and "exception" not in summary
    assert summary["repeated"] == 2


@pytest.mark.skipif(os.getuid() != 0, reason="a refused peer needs another uid: root only")
@pytest.mark.timeout(60)
def test_thousands_of_refused_heartbeat_peers_log_one_warning_and_one_summary(logfile):
    work = short_tmpdir("rl")
    server = HeartbeatServer(os.path.join(work, "hb.sock"), 0o666, "", lambda hb: None, lambda pid: False)
    server.start()
    os.chmod(work, 0o755)
    attempts = 2000
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: a stranger hammering the socket
            try:
                os.setgid(4321)
                os.setuid(4321)
                for _ in range(attempts):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(server.path)
                    except OSError:
                        pass
                    s.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        wait_until(lambda: server.counters.rejected >= attempts * 0.9, 20, what="the rejections")
        wait_until(lambda: server.counters.rejected == attempts or len(entries(logfile)) >= 3, 5,
                   what="every rejection processed")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    logs.close()
    rejected = [e for e in entries(logfile) if "rejected peer" in e["message"]]
    # One first line, then summaries (one per 0.5 s window here; one a minute in the daemon).
    assert 2 <= len(rejected) <= 2 + 20 / WINDOW
    assert 1 + sum(e.get("repeated", 0) for e in rejected) == server.counters.rejected


def test_an_entry_of_the_recent_problems_ring_is_bounded_whatever_was_logged(logfile):
    log = logging.getLogger("daemon_app.test")
    log.warning("peer said %s", "x" * 1_000_000, extra={"peer": "y" * 10_000})
    (entry,) = logs.recent_problems.drain()
    assert len(entry["message"]) <= 2048 and entry["message"].startswith("peer said xxx")
    assert len(entry["fields"]["peer"]) <= 256


def test_the_limiter_stays_bounded_when_every_record_says_something_different_twice(logfile):
    log = logging.getLogger("daemon_app.test")
    words = ["".join(chr(97 + (i >> (4 * k)) % 16) for k in range(4)) for i in range(3000)]
    for word in words:  # 3,000 sources, each repeated once: 3,000 windows with a count
        for _ in range(2):
            log.warning("command %s failed", word)
        assert len(logs.rate_limiter._windows) <= 1024
    logs.close()
    found = entries(logfile)
    assert len(found) == 6000  # nothing lost: each first line, and each repeat in a summary
    assert sum(e.get("repeated", 0) for e in found) == 3000


def test_a_log_file_that_cannot_be_written_costs_one_stderr_line_not_a_traceback_per_record(capsys):
    logs.setup("info", "/dev/full", stderr=False)  # every write fails with ENOSPC, like a full disk
    try:
        log = logging.getLogger("daemon_app.test")
        for i in range(500):
            log.info("report %d queued", i)  # info: not rate-limited, each one reaches the file
        handler = next(h for h in logging.getLogger().handlers if isinstance(h, logs.LogFileHandler))
        assert handler.lost == 500
    finally:
        logs.close()
        logging.getLogger().removeHandler(logs.recent_problems)
        logging.getLogger().setLevel(logging.WARNING)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("daemon: cannot write log file /dev/full: [Errno 28] No space left on device")
