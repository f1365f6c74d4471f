"""Plugin hooks called the way pluggy promises third-party authors: tryfirst/trylast order, a subset
of the arguments, wrappers, per-plugin isolation; on_agent_event on its own thread through a bounded
queue that drops the oldest and counts it."""

from __future__ import annotations

import logging
import sys

import pytest

from daemon_app import plugins
from tests.unit.test_plugins import cfg_for, write


@pytest.fixture
def plugin_dir(tmp_path):
    """A plugin directory whose loose modules (daemon_plugin_*) are forgotten afterwards."""
    path = tmp_path / "plugins"
    path.mkdir()
    yield path
    with_dir = [p for p in sys.path if p == str(path)]
    for entry in with_dir:
        sys.path.remove(entry)
    for name in [m for m in sys.modules if m.startswith("daemon_plugin_")]:
        del sys.modules[name]


# --- hooks are called the way pluggy promises third-party authors ------------------------------

def test_tryfirst_and_trylast_order_is_pluggys_for_every_sequential_hook(tmp_path, plugin_dir):
    write(plugin_dir / "early.py", """
        from daemon_app.hookspecs import hookimpl
        CALLS = []

        @hookimpl(tryfirst=True)
        def post_update(result):
            CALLS.append("early")

        @hookimpl(tryfirst=True)
        def on_agent_event(event):
            CALLS.append("early")
        """)
    write(plugin_dir / "late.py", """
        from daemon_app.hookspecs import hookimpl

        @hookimpl(trylast=True)
        def post_update(result):
            import daemon_plugin_early
            daemon_plugin_early.CALLS.append("late")

        @hookimpl(trylast=True)
        def on_agent_event(event):
            import daemon_plugin_early
            daemon_plugin_early.CALLS.append("late")
        """)
    write(plugin_dir / "plain.py", """
        from daemon_app.hookspecs import hookimpl

        @hookimpl
        def post_update(result):
            import daemon_plugin_early
            daemon_plugin_early.CALLS.append("plain")

        @hookimpl
        def on_agent_event(event):
            import daemon_plugin_early
            daemon_plugin_early.CALLS.append("plain")
        """)
    # Loaded in name order: early, late, plain; registration order must not decide.
    loaded = plugins.load_all(cfg_for(tmp_path, plugin_dir))
    calls = sys.modules["daemon_plugin_early"].CALLS
    assert [c.plugin_name for c in loaded.calls("post_update")] == ["early", "plain", "late"]
    loaded.call_each("post_update", result={"success": True})
    assert calls == ["early", "plain", "late"]
    calls.clear()
    loaded.post_event({"type": "started"})
    assert loaded.events.flush(10)
    assert calls == ["early", "plain", "late"]


def test_implementations_taking_a_subset_of_the_arguments_are_called(tmp_path, plugin_dir):
    write(plugin_dir / "lean.py", """
        from daemon_app.hookspecs import hookimpl
        from daemon_app.metrics import Metrics
        SEEN = []

        @hookimpl
        def collect():
            return Metrics("lean", {"x": 1})

        @hookimpl
        def report():
            SEEN.append("report")

        @hookimpl
        def on_agent_event():
            SEEN.append("event")

        @hookimpl
        def post_update():
            SEEN.append("post_update")
        """)
    from daemon_app.engine import Engine

    loaded = plugins.load_all(cfg_for(tmp_path, plugin_dir, disabled=["cpu", "memory", "disk", "network"]))
    engine = Engine(cfg_for(tmp_path, plugin_dir), loaded)
    (outcome,) = engine.collect()
    assert outcome.ok, outcome.error
    assert engine.latest["lean"].values == {"x": 1}
    assert [name for name, _ in loaded.call_each("post_update", result={})] == ["lean"]
    loaded.post_event({"type": "started"})
    assert loaded.events.flush(10)
    engine.build_and_report()
    seen = sys.modules["daemon_plugin_lean"].SEEN
    assert sorted(seen) == ["event", "post_update", "report"]
    assert engine.runner.last["lean"].error == ""


def test_a_hookwrapper_wraps_its_own_plugins_call(tmp_path):
    order = []

    class Wrapped:
        @plugins.hookspecs.hookimpl(wrapper=True)
        def post_update(self, result):
            order.append("before")
            out = yield
            order.append("after")
            return out

        @plugins.hookspecs.hookimpl(specname="post_update")
        def post_update_impl(self):
            order.append("impl")

    loaded = plugins.Plugins()
    loaded.register(Wrapped(), "wrapped", version="1", source="builtin")
    assert [name for name, _ in loaded.call_each("post_update", result={})] == ["wrapped"]
    assert order == ["before", "impl", "after"]


def test_implementations_are_stable_across_calls_so_collector_workers_are_reused(tmp_path, plugin_dir):
    loaded = plugins.load_all(cfg_for(tmp_path, plugin_dir))
    first, again = loaded.implementations("collect"), loaded.implementations("collect")
    assert first == again and len({hash(fn) for _, fn in first}) == len(first)


# --- on_agent_event: its own thread, a bounded queue that drops the oldest ---------------------

class Gate:
    """An on_agent_event plugin that blocks on its first event until released."""

    def __init__(self):
        import threading

        self.entered = threading.Event()
        self.release = threading.Event()
        self.got = []

    @plugins.hookspecs.hookimpl
    def on_agent_event(self, event):
        self.entered.set()
        self.release.wait(30)
        self.got.append(event["n"])


def test_a_hung_event_plugin_never_blocks_the_poster_and_the_oldest_events_are_dropped_and_counted(caplog):
    import time

    loaded = plugins.Plugins(event_queue_size=3)
    gate = Gate()
    loaded.register(gate, "gate", version="1", source="builtin")
    try:
        loaded.post_event({"n": 0})
        assert gate.entered.wait(10)
        began = time.monotonic()
        with caplog.at_level(logging.ERROR):
            for n in range(1, 11):
                loaded.post_event({"n": n})
        assert time.monotonic() - began < 1.0  # the poster never waits for the plugin
        assert not loaded.events.flush(0.05)
        status = loaded.events.status()
        assert status["dropped"] == 7 and status["queued"] == 3 and status["busy_with"] == "gate"
        (record,) = [r for r in caplog.records if r.getMessage().startswith("D5001 plugin events")]
        assert record.plugin == "gate" and record.code == "D5001"
    finally:
        gate.release.set()
    assert loaded.events.flush(10)
    assert gate.got == [0, 8, 9, 10]  # the newest kept, in order
    assert loaded.events.status()["delivered"] == 4


@pytest.mark.parametrize("exc", [RuntimeError("boom"), SystemExit(3)], ids=["raises", "sys.exit"])
def test_an_event_plugin_that_raises_is_logged_with_its_name_and_the_others_still_get_every_event(
        caplog, exc):
    got = []

    class Bad:
        @plugins.hookspecs.hookimpl(tryfirst=True)
        def on_agent_event(self, event):
            raise exc

    class Good:
        @plugins.hookspecs.hookimpl
        def on_agent_event(self, event):
            got.append(event["type"])

    loaded = plugins.Plugins()
    loaded.register(Bad(), "bad", version="1", source="builtin")
    loaded.register(Good(), "good", version="1", source="builtin")
    with caplog.at_level(logging.ERROR):
        for kind in ("started", "running", "exited"):
            loaded.post_event({"type": kind})
        assert loaded.events.flush(10)
    assert got == ["started", "running", "exited"]  # a plugin's sys.exit() ends nothing
    records = [r for r in caplog.records if getattr(r, "plugin", "") == "bad"]
    assert len(records) == 3 and all(r.code == "D5001" and type(exc).__name__ in r.getMessage()
                                     for r in records)


def test_no_event_thread_without_an_event_plugin_and_it_ends_when_idle():
    from daemon_app.plugin_events import EventDispatcher

    loaded = plugins.Plugins()
    loaded.post_event({"type": "started"})
    assert loaded.events.status()["posted"] == 0
    assert loaded.events._thread is None  # nobody listens: no thread, nothing queued

    delivered = []
    dispatcher = EventDispatcher(lambda event, busy: delivered.append(event), idle_exit=0.05)
    dispatcher.post({"n": 1})
    assert dispatcher.flush(10) and delivered == [{"n": 1}]
    thread = dispatcher._thread
    if thread is not None:
        thread.join(10)
        assert not thread.is_alive()
    assert dispatcher._thread is None
    dispatcher.post({"n": 2})  # a new thread takes over
    assert dispatcher.flush(10) and delivered == [{"n": 1}, {"n": 2}]


def test_an_unregistered_plugin_is_no_longer_called_nor_listed():
    got = []

    class Reporter:
        @plugins.hookspecs.hookimpl
        def report(self, report):
            got.append(report["n"])

    loaded = plugins.Plugins()
    loaded.register(Reporter(), "gone", version="1", source="builtin")
    ((_, call),) = loaded.implementations("report")
    loaded.unregister("gone")
    loaded.unregister("never-registered")
    assert loaded.implementations("report") == [] and loaded.describe() == []
    assert call(report={"n": 1}) is None and got == []  # a HookCall kept from before calls nobody
