"""A full disk under work_dir, on a real small filesystem (a tmpfs mounted by the test; skipped when
it cannot mount): reports that cannot be queued are counted as dropped, with the reason, in status,
heartbeats and the next report; the reports file holds whole lines only; both recover on their own
when space returns; the outbox database stays intact (PRAGMA integrity_check)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from daemon_app.comm.outbox import Outbox
from daemon_app.reporters.file import FileReporter
from daemon_manager.server import ThreadedManager
from tests.helpers import SmallFS, daemon_cmd, mount_small_fs, wait_until, write_config
from tests.live_update import NODE, make_site

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_fs() -> Iterator[SmallFS]:
    yield from mount_small_fs()


def integrity(db: Path) -> str:
    con = sqlite3.connect(str(db))
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# --- the outbox ----------------------------------------------------------------------------------


def test_outbox_counts_what_a_full_disk_cannot_queue_and_recovers(small_fs, caplog) -> None:
    path = small_fs.path / "outbox.db"
    box = Outbox(str(path), 64 << 20)
    for _ in range(5):
        assert box.enqueue(os.urandom(2000))
    small_fs.fill()
    with caplog.at_level(logging.ERROR):
        seqs = [box.enqueue(os.urandom(2000)) for _ in range(20)]
    assert seqs == [0] * 20
    assert (box.depth, box.dropped) == (5, 20)
    assert "database or disk is full" in box.drop_reason and str(path) in box.drop_reason
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("D2003 outbox: cannot write"), errors  # once

    small_fs.free()
    assert box.enqueue(b"after") == 6  # the numbers the drops would have had were never used
    assert (box.depth, box.dropped, box.drop_reason) == (6, 20, "")
    box.close()
    again = Outbox(str(path), 64 << 20)
    assert (again.depth, again.dropped) == (6, 20)  # the count was persisted with the next report
    again.close()
    assert integrity(path) == "ok"


def test_outbox_opened_on_a_full_disk_is_kept_and_used_once_space_returns(small_fs) -> None:
    path = small_fs.path / "outbox.db"
    box = Outbox(str(path), 64 << 20)
    for _ in range(10):
        box.enqueue(os.urandom(2000))
    box.close()
    small_fs.fill()
    box = Outbox(str(path), 64 << 20)  # a daemon starting on the full disk: no exception
    assert box.enqueue(b"lost") == 0 and box.dropped == 1
    assert not [n for n in os.listdir(small_fs.path) if "corrupt" in n]  # not moved aside as damaged
    small_fs.free()
    attempts: list[int] = []

    def report() -> int:  # a report every 0.2 s, as the engine would make them
        attempts.append(box.enqueue(b"kept"))
        return attempts[-1]

    seq = wait_until(report, timeout=10, interval=0.2, what="the outbox to reopen (retried once a second)")
    assert seq == 11
    assert (box.depth, box.dropped) == (11, 1 + attempts.count(0))  # each one that failed was counted
    assert [s for s, _ in box.peek(100)] == list(range(1, 12))
    box.close()
    assert integrity(path) == "ok"


def test_terminal_command_statuses_are_held_not_dropped_while_the_disk_is_full(small_fs) -> None:
    path = small_fs.path / "outbox.db"
    box = Outbox(str(path), 64 << 20)
    box.put_status("cmd-1", b"completed 1")
    small_fs.fill()
    held = [box.put_status(f"cmd-{n}", f"failed {n}".encode()) for n in (2, 3)]
    assert all(i < 0 for i in held) and box.status_count == 3
    assert [body for _, body in box.pending_statuses()] == [b"completed 1", b"failed 2", b"failed 3"]
    box.remove_status(held[0])  # the Manager got it straight from memory
    assert box.status_count == 2
    small_fs.free()
    box.enqueue(b"report")  # the next write that succeeds takes the held one with it
    box.close()
    again = Outbox(str(path), 64 << 20)
    assert [body for _, body in again.pending_statuses()] == [b"completed 1", b"failed 3"]
    again.close()
    assert integrity(path) == "ok"


# --- the file reporter ---------------------------------------------------------------------------


def lines(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), raw[-80:]
    return [json.loads(line) for line in raw.splitlines()]


def test_file_reporter_writes_whole_lines_or_nothing_on_a_full_disk(small_fs) -> None:
    path = small_fs.path / "reports.jsonl"
    reporter = FileReporter(str(path), 64 << 20)
    reporter.report({"n": 0, "pad": "x" * 100})
    small_fs.fill(leave=4096)  # one free page: a 10 kB line can only be written in part
    big = "y" * 10_000
    for n in range(1, 4):
        reporter.report({"n": n, "pad": big})
    assert [r["n"] for r in lines(path)] == [0]
    assert reporter.dropped == 3 and "No space left on device" in reporter.drop_reason
    small_fs.free()
    reporter.report({"n": 4, "pad": big})
    assert [r["n"] for r in lines(path)] == [0, 4]
    assert reporter.drop_reason == ""


def test_file_reporter_cuts_a_torn_last_line_before_writing(tmp_path) -> None:
    path = tmp_path / "reports.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2}\n{"n":3,"pad":"half a recor')
    FileReporter(str(path), 1 << 20).report({"n": 4})
    assert [r["n"] for r in lines(path)] == [1, 2, 4]
    path.write_bytes(b'{"torn from the first byte')
    FileReporter(str(path), 1 << 20).report({"n": 5})
    assert [r["n"] for r in lines(path)] == [5]


# --- the daemon, its Manager down, then back ------------------------------------------------------


def status(config: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(daemon_cmd("-c", config, "status", "--format", "json"), capture_output=True,
                         text=True, timeout=30, env=env, cwd=str(ROOT))
    return json.loads(res.stdout)["manager"] if res.returncode == 0 else {}


@pytest.fixture
def site(tmp_path):
    site = make_site(tmp_path)
    yield site
    site.stop()


@pytest.mark.timeout(120)
def test_daemon_on_a_full_disk_counts_dropped_reports_and_tells_the_manager(site, small_fs, tmp_path,
                                                                             daemon_processes) -> None:
    site.work = small_fs.path  # work_dir (outbox, state, control socket) on the small filesystem
    address = site.address
    cfg = yaml.safe_load(Path(site.daemon_config(agent=False)).read_text())
    # The log file stays off the full disk: this test is about the reports.
    cfg["daemon"].update(log_file=str(tmp_path / "daemon.log"), report_interval="200ms")
    config = write_config(tmp_path / "daemon.yaml", cfg)
    proc = daemon_processes(config)
    wait_until(lambda: site.node(), timeout=30, what="the node registered")
    site.manager.stop()  # the Manager goes down: reports pile up in the outbox

    wait_until(lambda: status(config).get("outbox_depth", 0) >= 3, timeout=30, what="reports queued")
    small_fs.fill()
    full = wait_until(lambda: at_least(status(config), "dropped", 5), timeout=30,
                      what="reports counted as dropped")
    assert status(config)["outbox_depth"] == full["outbox_depth"]  # nothing queued, nothing lost silently

    small_fs.free()
    wait_until(lambda: at_least(status(config), "outbox_depth", full["outbox_depth"] + 3), timeout=30,
               what="reports queued again once space returned")
    dropped = status(config)["dropped"]

    site.manager = ThreadedManager(site.db, str(site.pki_dir), address)  # back, on the same address
    site.manager.start()
    wait_until(lambda: status(config).get("outbox_depth") == 0, timeout=60, what="the outbox drained")
    wait_until(lambda: at_least(site.node() or {}, "outbox_dropped", dropped), timeout=30,
               what="a heartbeat carrying the drop count")
    store = site.store()
    try:
        reports = store.reports(NODE)
    finally:
        store.close()
    assert max(r["outbox_dropped"] for r in reports) >= dropped  # and the reports carry it too
    seqs = [r["seq"] for r in reports]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert proc.stop() == 0
    assert integrity(small_fs.path / "outbox.db") == "ok"
    assert "D2003 outbox: cannot write" in (tmp_path / "daemon.log").read_text()


def at_least(data: dict, key: str, value: int) -> dict | None:
    return data if (data.get(key) or 0) >= value else None
