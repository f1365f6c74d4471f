"""Logging: JSON lines to `daemon.log_file` (size-rotated), readable text on a terminal.

Recent warnings and errors are also kept in a small ring so they can travel with the next report
(seed §4.3 `logs`). Messages that look like key or certificate bodies are redacted. Repeated
warnings and errors (same code and source) are rate-limited for every handler installed here: the
first is logged, repeats are counted and summarised at most once a minute.
"""

from __future__ import annotations

import collections
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from daemon_app.metrics import rfc3339

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.S)


def redact(text: str) -> str:
    """Never let a key or certificate body reach a log line."""
    return _PEM_RE.sub("[redacted PEM block]", text) if "-----BEGIN" in text else text


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record; string values redacted like the message."""
    return {k: redact(v) if isinstance(v, str) else v
            for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(record_fields(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# What one entry of the ring may hold: entries travel in every report, and a message can quote a
# peer's input (the ring's 100 entries stay under ~300 KiB whatever was logged).
_RING_MESSAGE_MAX = 2048
_RING_FIELD_MAX = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class RecentProblems(logging.Handler):
    """Keeps the last warnings/errors (bounded) until the next report takes them."""

    def __init__(self, capacity: int = 100) -> None:
        super().__init__(logging.WARNING)
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        entry = {
            "level": record.levelname.lower(),
            "message": _clip(redact(record.getMessage()), _RING_MESSAGE_MAX),
            "timestamp": rfc3339(record.created),
            "fields": {k: _clip(redact(str(v)), _RING_FIELD_MAX) for k, v in record_fields(record).items()},
        }
        with self._mutex:
            self._ring.append(entry)

    def drain(self) -> list[dict[str, Any]]:
        with self._mutex:
            out = list(self._ring)
            self._ring.clear()
        return out


_CODE_RE = re.compile(r"D\d{4}\b")
_NUMBERS_RE = re.compile(r"\d+")
# A flood of distinct sources cannot grow the limiter without bound: past this many open windows
# the quiet ones are forgotten (a forgotten source's next record is simply logged again).
_MAX_WINDOWS = 1024


@dataclass
class _Window:
    ends: float  # monotonic time the current window closes
    suppressed: int = 0
    last: logging.LogRecord | None = None  # the latest suppressed record, the model for the summary


class RateLimiter(logging.Filter):
    """Rate limit for repeated warnings and errors: one decision per record, shared by every handler.

    A record's key is its source (logger and call site), its D-code (the `code` field, else a code
    at the start of the message) and its message with every number masked, so thousands of refused
    peers are one key while two collectors failing at the same line of code are two.

    The first record of a key passes and opens a window of `interval` seconds; repeats within the
    window are counted, not logged. When a window with repeats closes, one summary record goes out
    ("<last message> … repeated 35,698 times in 60s", field `repeated`) through the same handlers,
    and a new window opens, so a flood that goes on costs one line a minute. Summaries are sent by a
    short-lived timer thread (or by the next record of that key, or by flush()), so the last count
    of a flood that stopped is not lost.
    """

    def __init__(self, interval: float = 60.0, level: int = logging.WARNING) -> None:
        super().__init__()
        self.interval = interval
        self.level = level
        self._lock = threading.Lock()
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._timer: threading.Timer | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_rate_limited", None)
        if decided is not None:  # another handler of ours already decided for this record
            return not decided
        if record.levelno < self.level:
            return True
        key = _record_key(record)
        now = time.monotonic()
        summaries: list[logging.LogRecord] = []
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now >= window.ends:
                if window.suppressed:
                    summaries.append(self._summary(window, now))
                    window = self._windows[key] = _Window(now + self.interval)
                else:
                    del self._windows[key]
                    window = None
            if window is None:
                summaries += self._make_room(now)
                self._windows[key] = _Window(now + self.interval)
                limited = False
            else:
                window.suppressed += 1
                window.last = record
                limited = True
                self._arm(window.ends - now)
        record._rate_limited = limited  # type: ignore[attr-defined]
        _send(summaries)
        return not limited

    def flush(self) -> None:
        """Send the summary of every window with repeats now, and forget every window."""
        now = time.monotonic()
        with self._lock:
            summaries = [self._summary(w, now) for w in self._windows.values() if w.suppressed]
            self._windows.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        _send(summaries)

    def _on_timer(self) -> None:
        now = time.monotonic()
        summaries: list[logging.LogRecord] = []
        with self._lock:
            self._timer = None
            for key, window in list(self._windows.items()):
                if now < window.ends:
                    continue
                if window.suppressed:
                    summaries.append(self._summary(window, now))
                    self._windows[key] = _Window(now + self.interval)
                else:
                    del self._windows[key]
            pending = [w.ends for w in self._windows.values() if w.suppressed]
            if pending:
                self._arm(min(pending) - now)
        _send(summaries)

    def _arm(self, delay: float) -> None:
        """Make sure a timer fires by `delay` seconds from now (called with the lock held)."""
        if self._timer is not None:
            return  # an armed timer fires at the earliest window end: windows only open later
        self._timer = threading.Timer(max(0.0, delay), self._on_timer)
        self._timer.name = "log-rate-limit"
        self._timer.daemon = True
        self._timer.start()

    def _make_room(self, now: float) -> list[logging.LogRecord]:
        """Keep the number of windows bounded (called with the lock held): forget the quiet ones,
        and if every one holds repeats, summarise them all early rather than grow."""
        if len(self._windows) < _MAX_WINDOWS:
            return []
        for key in [k for k, w in self._windows.items() if not w.suppressed]:
            del self._windows[key]
        if len(self._windows) < _MAX_WINDOWS:
            return []
        summaries = [self._summary(w, now) for w in self._windows.values()]
        self._windows.clear()
        return summaries

    def _summary(self, window: _Window, now: float) -> logging.LogRecord:
        last = window.last
        assert last is not None
        seconds = self.interval - max(0.0, window.ends - now)
        summary = logging.makeLogRecord(vars(last))
        summary.msg = "%s … repeated %s times in %ds"
        summary.args = (last.getMessage(), f"{window.suppressed:,}", round(seconds))
        summary.exc_info = summary.exc_text = None  # the first record carried the traceback
        summary.created = time.time()
        summary.repeated = window.suppressed  # type: ignore[attr-defined]
        summary._rate_limited = False  # type: ignore[attr-defined]
        return summary


def _record_key(record: logging.LogRecord) -> tuple[Any, ...]:
    """Same logger, call site, level, D-code and message apart from its numbers: one source saying
    the same thing (peer pids, byte counts and ports vary; a collector's or file's name does not)."""
    message = record.getMessage()
    code = getattr(record, "code", None)
    if not isinstance(code, str):
        match = _CODE_RE.match(message)
        code = match.group() if match else None
    return (record.name, record.pathname, record.lineno, record.levelno, code,
            _NUMBERS_RE.sub("#", message[:200]))


def _send(summaries: list[logging.LogRecord]) -> None:
    for summary in summaries:
        logging.getLogger(summary.name).handle(summary)


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """The size-rotated JSON log file. When it cannot be written (a full disk), the records are
    counted and one line a minute on stderr says so, instead of logging's traceback per record."""

    report_every = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = 0  # records that could not be written, since the start
        self._lost_unreported = 0
        self._last_report: float | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        self.lost += 1
        self._lost_unreported += 1
        now = time.monotonic()
        if self._last_report is not None and now - self._last_report < self.report_every:
            return
        self._last_report = now
        exc = sys.exc_info()[1]
        try:
            sys.stderr.write(f"daemon: cannot write log file {self.baseFilename}: {exc}; "
                             f"{self._lost_unreported} record(s) not written\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        self._lost_unreported = 0

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:  # a full disk must not break a reload or the shutdown that flushes us
            self.handleError(logging.makeLogRecord({}))

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            self.stream = None  # type: ignore[assignment]


recent_problems = RecentProblems()
rate_limiter = RateLimiter()
recent_problems.addFilter(rate_limiter)
# Handlers setup() installed, so close() and the next setup() touch only ours (not a test runner's).
_installed: list[logging.Handler] = []


def setup(level: str = "info", log_file: str = "", max_bytes: int = 10 * 1024 * 1024,
          backups: int = 5, *, stderr: bool | None = None) -> None:
    """(Re)configure the root logger; called at start and again on reload."""
    close()
    root = logging.getLogger()
    set_level(level)
    if recent_problems not in root.handlers:
        root.addHandler(recent_problems)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = LogFileHandler(log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        fh.addFilter(rate_limiter)
        root.addHandler(fh)
        _installed.append(fh)
    if stderr is None:
        stderr = not log_file or sys.stderr.isatty()
    if stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(TextFormatter() if sys.stderr.isatty() else JsonFormatter())
        sh.addFilter(rate_limiter)
        root.addHandler(sh)
        _installed.append(sh)


def set_level(level: str) -> None:
    """Change the level in place (a reload that only changes daemon.log_level)."""
    logging.getLogger().setLevel(getattr(logging, level.upper()))


def close() -> None:
    """Flush and close the handlers setup() installed (the last step of a shutdown); pending
    repeat counts are written first."""
    rate_limiter.flush()
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()
