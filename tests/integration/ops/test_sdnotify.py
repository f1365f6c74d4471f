"""sd_notify from a real daemon to a real AF_UNIX datagram socket, as systemd would see it."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from tests.helpers import wait_until

from .conftest import stand_alone, wait_ready, write


class FakeSystemd:
    """Binds NOTIFY_SOCKET and records every datagram with its arrival time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(60)
def test_ready_watchdog_status_reloading_and_stopping(ops_dir, daemon_processes):
    systemd = FakeSystemd(str(ops_dir / "notify.sock"))
    try:
        path = write(ops_dir, stand_alone(ops_dir))
        proc = daemon_processes(path, extra_env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000"})
        wait_until(lambda: systemd.with_key("READY"), timeout=20, what="READY=1")
        ready_at, ready = systemd.with_key("READY")[0]
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("running; stand-alone")

        # WATCHDOG=1 at half of WATCHDOG_USEC: 12 pings span about 11 x 0.2 s.
        wait_until(lambda: len(systemd.with_key("WATCHDOG")) >= 12, timeout=20, what="12 watchdog pings")
        pings = [t for t, _ in systemd.with_key("WATCHDOG")][:12]
        span = pings[-1] - pings[0]
        assert 11 * 0.2 * 0.6 <= span <= 11 * 0.2 * 2.0, f"12 pings took {span:.2f}s, expected about 2.2s"

        proc.signal(signal.SIGHUP)
        wait_until(lambda: systemd.with_key("RELOADING"), timeout=15, what="RELOADING=1")
        reload_at, reloading = systemd.with_key("RELOADING")[0]
        usec = int(reloading["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - reload_at) < 5, "MONOTONIC_USEC is CLOCK_MONOTONIC"
        wait_until(lambda: any(t > reload_at for t, _ in systemd.with_key("READY")), timeout=15,
                   what="READY=1 after the reload")

        proc.signal(signal.SIGTERM)
        assert proc.stop() == 0
        stopping = systemd.with_key("STOPPING")
        assert len(stopping) == 1 and stopping[0][1]["STATUS"].startswith("stopping")
        assert all(t >= ready_at for t, _ in systemd.with_key("WATCHDOG"))
    finally:
        systemd.close()


@pytest.mark.timeout(60)
def test_status_line_names_the_state(ops_dir, daemon_processes):
    """STATUS= carries the short state line systemctl status shows; it follows the report count."""
    systemd = FakeSystemd(str(ops_dir / "notify.sock"))
    try:
        raw = stand_alone(ops_dir, daemon={"report_interval": "200ms"})
        proc = daemon_processes(write(ops_dir, raw), extra_env={"NOTIFY_SOCKET": systemd.path})
        wait_until(lambda: systemd.with_key("READY"), timeout=20, what="READY=1")
        assert not systemd.with_key("WATCHDOG"), "no WATCHDOG_USEC, no pings"
        wait_ready(ops_dir)
        proc.signal(signal.SIGHUP)
        wait_until(lambda: len(systemd.with_key("READY")) >= 2, timeout=15)
        line = systemd.with_key("READY")[-1][1]["STATUS"]
        assert line.startswith("running; stand-alone; reports ")
        assert int(line.rsplit(" ", 1)[1]) >= 1
        assert proc.stop() == 0
    finally:
        systemd.close()
