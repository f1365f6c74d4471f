"""systemd readiness protocol (sd_notify) written natively: one datagram to $NOTIFY_SOCKET.

No libsystemd, no dependency. Without $NOTIFY_SOCKET (not under systemd, or Type=simple) every
call is a cheap no-op, so the engine can call it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes | None:
    """'@name' is an abstract socket (leading NUL on the wire); '/path' a file; anything else ignored."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def watchdog_interval(environ: dict[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when the watchdog is off.

    WATCHDOG_PID, when set, names the process the watchdog is meant for; a child that inherited the
    variables must not answer for its parent.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid and wpid != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify state lines. Failures are logged at debug and never raised: systemd's
    absence or a full socket must not take the daemon down."""

    def __init__(self, notify_socket: str = "") -> None:
        self.address = _address(notify_socket) if notify_socket else None
        self._sock: socket.socket | None = None
        self._last_status = ""

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET", ""))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send 'KEY=value' fields in one datagram; True when it was handed to the socket."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", fields[:1], exc)
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *self._status_field(status, force=True))

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", *self._status_field(status, force=True))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, line: str) -> None:
        """STATUS= only when the line changed: `systemctl status` shows the latest one."""
        fields = self._status_field(line, force=False)
        if fields:
            self.notify(*fields)

    def _status_field(self, line: str, *, force: bool) -> list[str]:
        if not line or (line == self._last_status and not force):
            return []
        self._last_status = line
        return [f"STATUS={line}"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
