"""Logging: JSON lines to `daemon.log_file` (size-rotated), readable text on a terminal.

Recent warnings and errors are also kept in a small ring so they can travel with the next report
(seed §4.3 `logs`). Messages that look like key or certificate bodies are redacted.
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


class RecentProblems(logging.Handler):
    """Keeps the last warnings/errors (bounded) until the next report takes them."""

    def __init__(self, capacity: int = 100) -> None:
        super().__init__(logging.WARNING)
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        entry = {
            "level": record.levelname.lower(),
            "message": redact(record.getMessage()),
            "timestamp": rfc3339(record.created),
            "fields": {k: redact(str(v)) for k, v in record_fields(record).items()},
        }
        with self._mutex:
            self._ring.append(entry)

    def drain(self) -> list[dict[str, Any]]:
        with self._mutex:
            out = list(self._ring)
            self._ring.clear()
        return out


recent_problems = RecentProblems()
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
        fh = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                  encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        root.addHandler(fh)
        _installed.append(fh)
    if stderr is None:
        stderr = not log_file or sys.stderr.isatty()
    if stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(TextFormatter() if sys.stderr.isatty() else JsonFormatter())
        root.addHandler(sh)
        _installed.append(sh)


def set_level(level: str) -> None:
    """Change the level in place (a reload that only changes daemon.log_level)."""
    logging.getLogger().setLevel(getattr(logging, level.upper()))


def close() -> None:
    """Flush and close the handlers setup() installed (the last step of a shutdown)."""
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()
