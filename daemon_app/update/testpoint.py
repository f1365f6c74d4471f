"""Named points in an update where a test can stop the daemon, so a crash test reaches the exact
moment it means instead of guessing a delay (docs/updates.md, "Kill points"). Nothing else sets
these variables; unset, a point costs one environment lookup.

- DAEMON_TEST_CRASH_AT=<point>: the daemon SIGKILLs itself there.
- DAEMON_TEST_PAUSE_AT=<point> with DAEMON_TEST_PAUSE_FILE=<path>: the first process to reach the
  point creates <path> with its pid in it and stops there for good (the test kills it, alone or
  with its watcher); any later arrival finds <path> and goes on. build/unpack.py does the same for
  the point `unpack`, which runs before this package is importable.
"""

from __future__ import annotations

import os
import signal
import time

CRASH_ENV = "DAEMON_TEST_CRASH_AT"
PAUSE_ENV, PAUSE_FILE_ENV = "DAEMON_TEST_PAUSE_AT", "DAEMON_TEST_PAUSE_FILE"


def reached(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) != name or not os.environ.get(PAUSE_FILE_ENV):
        return
    try:
        fd = os.open(os.environ[PAUSE_FILE_ENV], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    os.write(fd, b"%d\n" % os.getpid())
    os.close(fd)
    while True:
        time.sleep(3600)
