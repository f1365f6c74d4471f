"""File reporter: appends each report as one JSON line, rotated to `.1` past `max_bytes`."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from daemon_app.hookspecs import hookimpl


class FileReporter:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    @hookimpl
    def report(self, report: dict[str, Any]) -> None:
        line = (json.dumps(report, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            try:
                size = os.path.getsize(self.path)
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                os.replace(self.path, self.path + ".1")
            # One write of a whole line with O_APPEND: a reader never sees half a report.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
