"""The heartbeat socket the supervisor owns, and what it learnt from the Agent's heartbeats.

The socket and its connections run on their own thread (heartbeat.py); every valid line comes here
on that thread. Only lines from the Agent or its descendants count (`AgentLineage`); the others are
counted as foreign. Everything is kept under the supervisor's lock, whose condition wakes callers
of `wait` (the update's and remote config's "is the new Agent alive" checks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon_app.agent.health import AgentLineage
from daemon_app.agent.heartbeat import Heartbeat, HeartbeatServer
from daemon_app.errors import AgentStartError

log = logging.getLogger(__name__)


class HeartbeatWatch:
    """Heartbeats of the supervised Agent: counts, its version, when it last spoke."""

    def __init__(self, cond: threading.Condition, on_heartbeat: Callable[[Heartbeat], None]) -> None:
        self._cond = cond  # the supervisor's: notified on every heartbeat of the Agent
        self._on_heartbeat = on_heartbeat  # on the heartbeat thread, for every valid line
        self.lineage = AgentLineage()
        self.server: HeartbeatServer | None = None
        self.received = 0  # heartbeats of the Agent (any of its processes) since the daemon started
        self.foreign = 0  # valid lines from processes that are not the Agent's
        self.version = ""  # as the Agent last reported it
        self.last_wall: float | None = None
        self.last_mono: float | None = None  # the current process's latest heartbeat

    # --- the socket (the supervisor's thread) -----------------------------------------------------

    def listen(self, agent_cfg: Any) -> None:
        """Create the socket; D3001 AgentStartError when it cannot be."""
        self.server = self._new_server(agent_cfg)
        self.server.start()

    def relisten(self, old: Any, new: Any, agent_pid: int) -> None:
        """A reload: move to the new socket settings, or stay on the old socket when the new one fails."""
        if (new.socket_path, new.socket_mode, new.socket_group) == (old.socket_path, old.socket_mode,
                                                                    old.socket_group):
            return
        server = self._new_server(new)
        try:
            server.start()
        except AgentStartError as exc:
            log.error("%s; heartbeats stay on %s", exc, old.socket_path, extra={"code": exc.code})
            return
        if self.server is not None:
            self.server.stop()
        self.server = server
        if agent_pid and new.socket_path != old.socket_path:
            log.warning("agent pid %d still has AGENT_SOCKET=%s; it gets the new path at its next start",
                        agent_pid, old.socket_path)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _new_server(self, a: Any) -> HeartbeatServer:
        return HeartbeatServer(a.socket_path, a.socket_mode, a.socket_group, self._on_heartbeat,
                               self.lineage.includes)

    # --- heartbeats ------------------------------------------------------------------------------

    def follow(self, agent_pid: int) -> None:
        """Caller holds the supervisor's lock: a new Agent process (0: none) is the one to hear from."""
        self.lineage.follow(agent_pid)
        self.last_mono = None

    def record(self, hb: Heartbeat) -> bool:
        """Caller holds the supervisor's lock: count `hb`; True when it is the Agent's."""
        if not self.lineage.includes(hb.peer.pid):
            self.foreign += 1
            return False
        self.received += 1
        self.version = hb.version
        self.last_wall = time.time()
        self.last_mono = hb.received
        self._cond.notify_all()
        return True

    def wait(self, version: str | None, timeout: float) -> bool:
        """True when a heartbeat of the Agent reporting `version` (any if None) arrives after this
        call, within `timeout` seconds."""
        with self._cond:
            seen = self.received
            return self._cond.wait_for(
                lambda: self.received > seen and (version is None or self.version == version), timeout)

    def invalid(self) -> int:
        return self.server.counters.invalid if self.server is not None else 0

    def socket_status(self) -> dict[str, Any]:
        """The socket's figures for `daemon status` (empty when it is closed)."""
        server = self.server
        if server is None:
            return {}
        c = server.counters
        return {"socket_connections": server.connections,
                "socket_counters": {"accepted": c.accepted, "rejected": c.rejected, "evicted": c.evicted,
                                    "refused": c.refused, "invalid": c.invalid, "stalled": c.stalled,
                                    "accept_errors": c.accept_errors, "lines": c.lines}}

