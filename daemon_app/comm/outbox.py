"""The durable outbox: reports and final command results wait in SQLite (WAL) until the Manager acks them.

Every report gets a sequence number that only grows, across restarts and `kill -9`: the counter
lives in the same transaction as the row. The queue is bounded in bytes; when a new report does
not fit, the oldest go and are counted (the count is persisted and travels with every report).
A report that cannot be written at all (disk full, I/O error) is dropped and counted the same way,
with the reason in the log; the count waits in memory until a write succeeds again. Terminal
command statuses live in a second table and are never dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

from daemon_app import fsutil
from daemon_app.errors import ManagerReportError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS statuses (id INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL,
                                     body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS seen_commands (command_id TEXT PRIMARY KEY, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS command_results (command_id TEXT PRIMARY KEY, body BLOB NOT NULL,
                                            ended_at REAL NOT NULL);
"""
SEEN_COMMANDS_KEPT = 1000


class Outbox:
    """Thread-safe: the engine thread enqueues, the sender thread peeks and acks.

    Counters (depth, bytes, sequence numbers, drops, pending statuses) are kept in memory as well,
    so that status lines and heartbeats read them without touching the database.
    """

    def __init__(self, path: str, max_bytes: int, max_item_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # A report the Manager could never accept would block the queue forever: refuse it up front.
        self.max_item_bytes = max_item_bytes or max_bytes
        self._lock = threading.Lock()
        # Reports that could not be written, not yet added to the persisted count, and why.
        self._unsaved_drops = 0
        self.drop_reason = ""
        self._db: sqlite3.Connection | None = None
        self._depth = self._bytes = self._statuses = 0
        self._metas: dict[str, int] = {}
        self._next_open = 0.0
        # Terminal statuses the disk could not take, by negative id; persisted by the next write.
        self._held_statuses: dict[int, tuple[str, bytes]] = {}
        self._held_id = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o750, exist_ok=True)
        try:
            # SQLite opens these by name and follows symlinks: a planted one is refused, not used.
            fsutil.check_dir(os.path.dirname(os.path.abspath(path)))
            for suffix in ("", "-wal", "-shm", "-journal"):
                fsutil.check_file(path + suffix)
        except fsutil.UnsafePathError as exc:
            raise ManagerReportError(f"outbox: {exc}") from None
        self._connect()

    def _connect(self) -> bool:
        """Open the database; False (and retried at most once a second) while it cannot be opened."""
        if self._db is not None:
            return True
        if time.monotonic() < self._next_open:
            return False
        try:
            db = self._open(self.path)
        except sqlite3.OperationalError as exc:
            # Disk full, I/O error, permissions: the file is not damaged and must not be moved aside
            # (its reports would never be sent). Reports meanwhile are dropped and counted.
            self._next_open = time.monotonic() + 1.0
            self._note_unwritable(f"cannot open {self.path}: {exc}")
            return False
        except sqlite3.DatabaseError as exc:
            # A damaged file must not keep the daemon from reporting: keep it for forensics, start anew.
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.error("D2003 outbox %s is unreadable (%s); moved to %s and started a new one", self.path, exc,
                      aside, extra={"code": ManagerReportError.code})
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.remove(self.path + suffix)
            db = self._open(self.path)
        self._db = db
        self._load_counters()
        return True

    def _note_unwritable(self, reason: str) -> None:
        """Logged when writing starts to fail (or the reason changes), not for every report after."""
        if reason != self.drop_reason:
            log.error("D2003 outbox: %s; reports are dropped and counted until it can be written",
                      reason, extra={"code": ManagerReportError.code})
        self.drop_reason = reason

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss may take the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute("SELECT COUNT(*) FROM reports").fetchone()
        return db

    def _load_counters(self) -> None:
        self._depth, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM reports").fetchone()
        self._metas = {str(k): int(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        self._statuses = self._db.execute("SELECT COUNT(*) FROM statuses").fetchone()[0]

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction under the lock; a failed one leaves the counters as the database has them."""
        with self._lock:
            if not self._connect():
                raise sqlite3.OperationalError(f"outbox {self.path} is not open: {self.drop_reason}")
            assert self._db is not None
            try:
                with self._db:
                    yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._load_counters()
                raise

    def _meta(self, key: str) -> int:
        return self._metas.get(key, 0)

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
        self._metas[key] = value

    # --- reports ---------------------------------------------------------------------------------

    def enqueue(self, body: bytes) -> int:
        """Persist one report; returns its sequence number, or 0 when it could not be written (it is
        then counted as dropped). Drops the oldest when over the bound."""
        try:
            return self._enqueue(body)
        except sqlite3.OperationalError as exc:  # SQLITE_FULL, SQLITE_IOERR, read-only, ...
            self._unsaved_drops += 1
            self._note_unwritable(f"cannot write {self.path}: {exc}")
            return 0

    def _enqueue(self, body: bytes) -> int:
        size = len(body)
        with self._write():
            assert self._db is not None
            unsaved = self._unsaved_drops
            if unsaved:
                self._set_meta("dropped", self._meta("dropped") + unsaved)
            saved = self._save_held_statuses()
            seq = self._enqueue_in(body, size)
        # Committed (a failed commit raised above and reloaded the persisted count).
        self._unsaved_drops -= unsaved
        self._forget_held(saved)
        if unsaved:
            log.warning("outbox %s is writable again; %d report(s) were dropped while it was not (%s)",
                        self.path, unsaved, self.drop_reason, extra={"code": ManagerReportError.code})
            self.drop_reason = ""
        return seq

    def _enqueue_in(self, body: bytes, size: int) -> int:
        assert self._db is not None
        seq = max(self._meta("last_seq"), self._meta("acked_seq")) + 1
        self._set_meta("last_seq", seq)
        if size > min(self.max_bytes, self.max_item_bytes):
            self._set_meta("dropped", self._meta("dropped") + 1)
            log.error("D2003 report %d is too large to send (%d bytes, limit %d); dropped", seq, size,
                      min(self.max_bytes, self.max_item_bytes), extra={"code": ManagerReportError.code})
            return seq
        dropped = 0
        while self._bytes + size > self.max_bytes and self._depth:
            rows = self._db.execute(
                "SELECT seq, LENGTH(body) FROM reports ORDER BY seq LIMIT 64").fetchall()
            upto = None
            for old_seq, old_size in rows:
                if self._bytes + size <= self.max_bytes:
                    break
                self._bytes -= old_size
                self._depth -= 1
                dropped += 1
                upto = old_seq
            if upto is not None:
                self._db.execute("DELETE FROM reports WHERE seq <= ?", (upto,))
        if dropped:
            self._set_meta("dropped", self._meta("dropped") + dropped)
            log.warning("outbox full (%d bytes): dropped the %d oldest report(s)", self.max_bytes,
                        dropped, extra={"code": ManagerReportError.code})
        self._db.execute("INSERT INTO reports(seq, body) VALUES (?, ?)", (seq, body))
        self._depth += 1
        self._bytes += size
        return seq

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` reports, in order."""
        with self._lock:
            if not self._connect():
                return []
            assert self._db is not None
            return self._db.execute("SELECT seq, body FROM reports ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def ack(self, seq: int) -> int:
        """The Manager holds every report up to `seq`: forget them. Returns how many went."""
        with self._write():
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM reports "
                                   "WHERE seq <= ?", (seq,)).fetchone()
            self._db.execute("DELETE FROM reports WHERE seq <= ?", (seq,))
            if seq > self._meta("acked_seq"):
                self._set_meta("acked_seq", seq)
            self._depth -= row[0]
            self._bytes -= row[1]
            return int(row[0])

    def ensure_seq_after(self, seq: int) -> None:
        """Never reuse a number the Manager already holds (e.g. after work_dir was wiped)."""
        with self._write():
            if seq > self._meta("last_seq"):
                self._set_meta("last_seq", seq)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def dropped(self) -> int:
        """Reports dropped ever: pushed out by the bound, too large, or not writable."""
        return self._meta("dropped") + self._unsaved_drops

    @property
    def acked_seq(self) -> int:
        return self._meta("acked_seq")

    @property
    def last_seq(self) -> int:
        return self._meta("last_seq")

    # --- terminal command statuses ---------------------------------------------------------------

    def put_status(self, command_id: str, body: bytes) -> int:
        """Keep a terminal status until the Manager acks it. One the disk cannot take is held in
        memory (negative id) and written with the next write that succeeds: never dropped."""
        try:
            with self._write():
                assert self._db is not None
                saved = self._save_held_statuses()
                cur = self._db.execute("INSERT INTO statuses(command_id, body) VALUES (?, ?)",
                                       (command_id, body))
                self._statuses += 1
            self._forget_held(saved)
            return int(cur.lastrowid or 0)
        except sqlite3.OperationalError as exc:
            self._note_unwritable(f"cannot write {self.path}: {exc}")
            self._held_id -= 1
            self._held_statuses[self._held_id] = (command_id, body)
            return self._held_id

    def _save_held_statuses(self) -> list[int]:
        """Inside a write transaction: statuses held in memory go to the database with it; forget
        them (`_forget_held`) only once it committed."""
        assert self._db is not None
        saved = sorted(self._held_statuses, reverse=True)
        for held_id in saved:
            self._db.execute("INSERT INTO statuses(command_id, body) VALUES (?, ?)",
                             self._held_statuses[held_id])
            self._statuses += 1
        return saved

    def _forget_held(self, saved: list[int]) -> None:
        with self._lock:
            for held_id in saved:
                self._held_statuses.pop(held_id, None)

    def put_result(self, command_id: str, body: bytes) -> bool:
        """Record a command's one terminal status and queue it for the Manager. False, and nothing
        queued, when the command already has one: a command ends exactly once."""
        with self._write():
            cur = self._db.execute("INSERT OR IGNORE INTO command_results(command_id, body, ended_at) "
                                   "VALUES (?, ?, ?)", (command_id, body, time.time()))
            if not cur.rowcount:
                return False
            self._db.execute("DELETE FROM command_results WHERE command_id NOT IN (SELECT command_id FROM "
                             "command_results ORDER BY ended_at DESC LIMIT ?)", (SEEN_COMMANDS_KEPT,))
            self._db.execute("INSERT INTO statuses(command_id, body) VALUES (?, ?)", (command_id, body))
            self._statuses += 1
            return True

    def result_of(self, command_id: str) -> bytes | None:
        """The terminal status recorded for `command_id`, if it has ended (and is among the last
        SEEN_COMMANDS_KEPT to end)."""
        with self._lock:
            row = self._db.execute("SELECT body FROM command_results WHERE command_id = ?",
                                   (command_id,)).fetchone()
        return bytes(row[0]) if row else None

    @property
    def status_count(self) -> int:
        """How many terminal statuses wait for the Manager's ack."""
        return self._statuses + len(self._held_statuses)

    def pending_statuses(self) -> list[tuple[int, bytes]]:
        with self._lock:
            held = [(i, body) for i, (_, body) in sorted(self._held_statuses.items(), reverse=True)]
            if not self._connect():
                return held
            assert self._db is not None
            return self._db.execute("SELECT id, body FROM statuses ORDER BY id").fetchall() + held

    def remove_status(self, status_id: int) -> None:
        if status_id < 0:
            with self._lock:
                self._held_statuses.pop(status_id, None)
            return
        try:
            with self._write():
                assert self._db is not None
                self._statuses -= self._db.execute("DELETE FROM statuses WHERE id = ?",
                                                   (status_id,)).rowcount
        except sqlite3.OperationalError as exc:  # full disk: it stays and is sent again (same id)
            self._note_unwritable(f"cannot write {self.path}: {exc}")

    # --- commands already received (a re-delivered command is not run twice) ---------------------

    def mark_seen(self, command_id: str) -> bool:
        """True the first time a command id is seen, False on any later delivery."""
        with self._write():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen_commands(command_id, received_at) VALUES (?, ?)",
                (command_id, time.time()))
            if cur.rowcount:
                self._db.execute("DELETE FROM seen_commands WHERE command_id NOT IN (SELECT command_id FROM "
                                 "seen_commands ORDER BY received_at DESC LIMIT ?)", (SEEN_COMMANDS_KEPT,))
            return bool(cur.rowcount)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
