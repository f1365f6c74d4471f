"""A third-party on_agent_event plugin that hangs cannot hold up supervision: a real Agent is still
restarted at once, and what the plugin could not take is dropped and counted in `daemon status`."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from daemon_app.hookspecs import hookimpl
from daemon_app.plugins import Plugins
from tests.helpers import wait_until
from tests.integration.agent.conftest import alive

pytestmark = pytest.mark.timeout(60)


class Hangs:
    """Blocks on its first event until the test lets go (a plugin waiting on a dead network peer)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def on_agent_event(self, event):
        self.entered.set()
        self.release.wait(60)


def test_a_hanging_event_plugin_does_not_delay_an_agent_restart_and_drops_are_counted(harness):
    plugins = Plugins(event_queue_size=2)
    hangs = Hangs()
    plugins.register(hangs, "hangs", version="1", source="entrypoint")
    try:
        sup, _ = harness.supervisor(plugins=plugins)
        assert hangs.entered.wait(10), "the plugin never got the first event"
        wait_until(lambda: sup.state == "RUNNING", 10, what="RUNNING")
        old = harness.track(sup.pid)
        os.kill(old, signal.SIGKILL)
        # Without its own thread, the plugin would hold the supervisor and no new Agent would start.
        wait_until(lambda: sup.pid not in (0, old) and alive(sup.pid), 5, interval=0.005, what="a new Agent")
        harness.track(sup.pid)
        wait_until(lambda: sup.state == "RUNNING", 10, what="the new Agent RUNNING")
        # started (held by the plugin), then running, exited, restarting, started, running: 2 fit.
        status = sup.host.status()["plugin_events"]
        assert status["busy_with"] == "hangs" and status["queued"] == 2
        assert status["dropped"] == status["posted"] - 3 >= 3
    finally:
        hangs.release.set()
    assert plugins.events.flush(10)
