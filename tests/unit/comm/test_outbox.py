"""The durable outbox: order, sequence numbers across restarts, the byte bound, acks, durable statuses."""

from __future__ import annotations

import sqlite3

import pytest

from daemon_app.comm.outbox import Outbox


def test_sequence_numbers_grow_and_survive_reopen(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 1 << 20)
    assert [box.enqueue(b"a"), box.enqueue(b"b")] == [1, 2]
    box.close()
    box = Outbox(str(tmp_path / "o.db"), 1 << 20)
    assert box.enqueue(b"c") == 3
    assert box.peek(10) == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert (box.depth, box.bytes) == (3, 3)


def test_ack_removes_everything_up_to_the_seq_and_numbers_never_restart(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 1 << 20)
    for _ in range(5):
        box.enqueue(b"x" * 10)
    assert box.ack(3) == 3
    assert [s for s, _ in box.peek(10)] == [4, 5]
    assert box.acked_seq == 3 and box.depth == 2 and box.bytes == 20
    box.ack(5)
    box.close()
    box = Outbox(str(tmp_path / "o.db"), 1 << 20)
    assert box.depth == 0 and box.enqueue(b"y") == 6


def test_seq_jumps_past_what_the_manager_already_holds(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 1 << 20)
    box.ensure_seq_after(41)
    assert box.enqueue(b"z") == 42


def test_full_outbox_drops_the_oldest_counts_them_and_stays_within_the_bound(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 1000)
    for _ in range(25):
        box.enqueue(b"r" * 100)
        assert box.bytes <= 1000
    assert box.depth == 10
    assert [s for s, _ in box.peek(100)] == list(range(16, 26))
    assert box.dropped == 15
    box.close()
    box = Outbox(str(tmp_path / "o.db"), 1000)
    assert box.dropped == 15 and box.bytes == 1000


def test_a_report_larger_than_any_limit_is_dropped_and_counted(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 10_000, max_item_bytes=500)
    box.enqueue(b"k" * 100)
    seq = box.enqueue(b"h" * 600)
    assert seq == 2 and box.dropped == 1
    assert [s for s, _ in box.peek(10)] == [1]


def test_terminal_statuses_stay_until_removed_across_reopen(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 1000)
    sid = box.put_status("cmd-1", b"status-bytes")
    box.close()
    box = Outbox(str(tmp_path / "o.db"), 1000)
    assert box.pending_statuses() == [(sid, b"status-bytes")]
    assert box.status_count == 1
    box.remove_status(sid)
    assert box.pending_statuses() == [] and box.status_count == 0


def test_a_command_id_is_new_only_once(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 1000)
    assert box.mark_seen("c1") is True
    assert box.mark_seen("c1") is False
    box.close()
    assert Outbox(str(tmp_path / "o.db"), 1000).mark_seen("c1") is False


def test_a_corrupt_outbox_file_is_moved_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(str(path), 1000)
    assert box.enqueue(b"a") == 1
    assert any(p.name.startswith("o.db.corrupt-") for p in tmp_path.iterdir())
    assert any("D2003" in r.getMessage() for r in caplog.records)


def test_the_file_is_in_wal_mode(tmp_path):
    Outbox(str(tmp_path / "o.db"), 1000).enqueue(b"a")
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_counters_kept_in_memory_agree_with_the_file_even_after_a_failed_write(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), 250)
    for _ in range(3):
        box.enqueue(b"m" * 100)
    box.ack(2)
    # A write that SQLite refuses mid-transaction (here: a trigger) must not move any counter.
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'refused'); END")
    before = (box.depth, box.bytes, box.last_seq, box.acked_seq, box.dropped)
    with pytest.raises(sqlite3.IntegrityError):
        box.enqueue(b"n" * 200)
    assert (box.depth, box.bytes, box.last_seq, box.acked_seq, box.dropped) == before == (1, 100, 3, 2, 1)
    box.close()
    again = Outbox(str(tmp_path / "o.db"), 250)
    assert (again.depth, again.bytes, again.last_seq, again.acked_seq, again.dropped) == before
