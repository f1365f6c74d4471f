"""sd_notify written natively: datagrams on a real AF_UNIX socket, path and abstract names."""

from __future__ import annotations

import os
import socket
import time

import pytest

from daemon_app.systemd import Notifier, monotonic_usec, watchdog_interval


@pytest.fixture
def listener(work_dir):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(work_dir / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_and_status_arrive_as_one_datagram(listener):
    path, sock = listener
    notifier = Notifier(path)
    notifier.ready("running; stand-alone")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=running; stand-alone"]


def test_abstract_socket_names_start_with_at():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"daemon-test-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert Notifier("@" + name).notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_status_is_sent_only_when_it_changes(listener):
    path, sock = listener
    notifier = Notifier(path)
    notifier.status("a")
    notifier.status("a")
    notifier.status("b")
    assert sock.recv(4096) == b"STATUS=a"
    assert sock.recv(4096) == b"STATUS=b"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_reloading_carries_the_monotonic_clock(listener):
    path, sock = listener
    before = monotonic_usec()
    Notifier(path).reloading()
    fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()


def test_without_notify_socket_everything_is_a_no_op(work_dir):
    assert not Notifier("").enabled
    assert Notifier("").notify("READY=1") is False
    assert Notifier("relative/path").enabled is False
    # A socket that vanished is not an error for the daemon.
    assert Notifier(str(work_dir / "gone.sock")).notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only():
    assert watchdog_interval({"WATCHDOG_USEC": "400000"}) == 0.2
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}) == 0.2
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
