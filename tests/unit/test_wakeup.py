"""WakePipe: the one signal into a select loop; a wake-up after close() must go nowhere."""

from __future__ import annotations

import os
import select

import pytest

from daemon_app.wakeup import WakePipe

pytestmark = pytest.mark.timeout(30)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_wake_makes_it_readable_until_drained_and_many_wakes_never_block():
    pipe = WakePipe()
    try:
        assert not readable(pipe.fileno())
        for _ in range(100_000):  # far more than a pipe holds: the extra ones are dropped, not blocked on
            pipe.wake()
        assert readable(pipe.fileno())
        pipe.drain()
        assert not readable(pipe.fileno())
    finally:
        pipe.close()


def test_a_wake_after_close_does_not_write_to_the_descriptor_that_reused_its_number():
    pipe = WakePipe()
    pipe.close()
    pipe.close()  # idempotent
    r, w = os.pipe()  # most likely the very numbers the closed pipe had
    try:
        pipe.wake()
        pipe.drain()
        assert not readable(r), "a wake-up went into someone else's pipe"
    finally:
        os.close(r)
        os.close(w)
