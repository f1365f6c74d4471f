"""File reporter: appends each report as one JSON line, rotated to `.1` past `max_bytes`.

A line is written whole or not at all: a write the disk cannot take (ENOSPC, EIO) is cut back to
where the file ended, the report is counted as dropped with the reason, and the next report tries
again. A torn last line left by a crash or power cut is cut off before the first write.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from daemon_app import fsutil
from daemon_app.errors import ManagerReportError
from daemon_app.hookspecs import hookimpl

log = logging.getLogger(__name__)
CODE = ManagerReportError.code  # the code every `report` hook failure carries (plugins.HOOK_ERROR_CODES)


class FileReporter:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0
        self.drop_reason = ""
        self._repaired = False
        self._lock = threading.Lock()

    @hookimpl
    def report(self, report: dict[str, Any]) -> None:
        line = (json.dumps(report, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                self._append(line)
            except OSError as exc:
                self._dropped(f"cannot write {self.path}: {exc.strerror or exc}")
                return
        if self.drop_reason:
            log.warning("reports file %s is writable again; %d report(s) were dropped while it was not "
                        "(%s)", self.path, self.dropped, self.drop_reason, extra={"code": CODE})
            self.drop_reason = ""

    def _append(self, line: bytes) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o750, exist_ok=True)
        fsutil.check_dir(directory)
        fd = fsutil.open_nofollow(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if not self._repaired:
                size = _cut_torn_line(fd, size)
                self._repaired = True
            if size and size + len(line) > self.max_bytes:
                os.replace(self.path, self.path + ".1")
                os.close(fd)
                fd = fsutil.open_nofollow(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
                size = 0
            try:
                fsutil.write_all(fd, line)
            except OSError:
                # Half a line would corrupt every reader of the file: take it back.
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _dropped(self, reason: str) -> None:
        self.dropped += 1
        if reason != self.drop_reason:  # once per cause, not once per report
            log.error("%s reports file: %s; reports are dropped and counted until it can be written",
                      CODE, reason, extra={"code": CODE})
        self.drop_reason = reason


def _cut_torn_line(fd: int, size: int) -> int:
    """Cut a last line without its newline (a write a crash interrupted); return the new size."""
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    log.warning("reports file: cut a torn last line (%d bytes) left by an interrupted write", size - keep,
                extra={"code": CODE})
    return keep
