"""The Agent's stdout and stderr files: where they are, their rotation, and the stderr tail of an exit."""

from __future__ import annotations

import logging
import os

from daemon_app.agent.process import rotate_copy_truncate, tail_lines

log = logging.getLogger(__name__)

# Copy-truncate rotation is polled: a file may overshoot its limit by what the Agent writes in this
# time. Every 2 s cost the idle daemon ~0.01 % CPU.
ROTATE_CHECK_EVERY = 10.0
STDERR_TAIL_LINES = 20


class AgentOutput:
    """The two files every Agent process of this daemon writes to (kept across restarts)."""

    def __init__(self, work_dir: str) -> None:
        self.stdout_log = os.path.join(work_dir, "agent", "stdout.log")
        self.stderr_log = os.path.join(work_dir, "agent", "stderr.log")

    def rotate(self, max_bytes: int, backups: int) -> None:
        """Rotate each file past `max_bytes` (copy-truncate: the Agent keeps its file descriptors)."""
        for path in (self.stdout_log, self.stderr_log):
            try:
                if rotate_copy_truncate(path, max_bytes, backups):
                    log.info("rotated agent log %s", path)
            except OSError as exc:
                log.warning("cannot rotate agent log %s: %s", path, exc)

    def stderr_tail(self, since: int) -> list[str]:
        """The last lines the Agent wrote to stderr after offset `since` (its start)."""
        return tail_lines(self.stderr_log, STDERR_TAIL_LINES, since=since)
