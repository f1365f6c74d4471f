"""Engine: scheduling, work in flight and graceful shutdown, reload, the instance lock, status."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest
import yaml

from daemon_app import logs
from daemon_app.engine import EngineStopping, InstanceLock, Scheduler, WorkTracker
from daemon_app.errors import AlreadyRunningError
from tests.helpers import wait_until


def run_in_background(fn, *args):
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


# --- scheduler -------------------------------------------------------------------------------------

def test_scheduler_runs_due_tasks_and_keeps_their_phase_on_reregistration():
    sched = Scheduler()
    sched.every("a", 10.0, lambda: None)
    assert [t.name for t in sched.run_due()] == ["a"]
    due = sched.tasks["a"].due
    sched.every("a", 10.0, lambda: None)  # same interval: unchanged phase
    assert sched.tasks["a"].due == due
    assert sched.run_due() == []


def test_scheduler_shorter_interval_applies_at_once_longer_from_the_next_run():
    sched = Scheduler()
    sched.every("r", 60.0, lambda: None, first=60.0)
    sched.every("r", 1.0, lambda: None)
    assert sched.tasks["r"].due <= time.monotonic() + 1.0
    planned = sched.tasks["r"].due
    sched.every("r", 120.0, lambda: None)
    assert sched.tasks["r"].due == planned


def test_scheduler_jitter_stays_within_its_fraction_and_does_not_accumulate():
    sched = Scheduler()
    sched.every("j", 0.001, lambda: None, jitter=0.5)
    wait_until(lambda: sched.run_due(), timeout=2)
    task = sched.tasks["j"]
    assert task.base <= task.due <= task.base + 0.0005


def test_cancelled_tasks_never_run():
    sched = Scheduler()
    sched.every("x", 0.001, lambda: None)
    sched.clear()
    assert sched.next_due() is None and sched.run_due() == []


# --- work in flight --------------------------------------------------------------------------------

def test_work_tracker_refuses_new_work_once_closed():
    work = WorkTracker()
    token = work.begin("update")
    work.close()
    with pytest.raises(EngineStopping, match="D1004 the daemon is stopping"):
        work.begin("another update")
    assert work.active() == ["update"]
    work.end(token)
    assert work.wait_idle(time.monotonic() + 1, lambda: None, 0.1) == []


def test_work_tracker_wait_gives_up_at_the_deadline_and_names_what_is_left():
    work = WorkTracker()
    work.begin("stuck download")
    ticks = []
    left = work.wait_idle(time.monotonic() + 0.2, lambda: ticks.append(1), 0.05)
    assert left == ["stuck download"]
    assert ticks, "the watchdog tick keeps running while shutdown waits"


def test_shutdown_waits_for_a_busy_thread_then_exits_0(make_engine):
    engine = make_engine()
    engine.start()
    events: list[str] = []

    def update_worker():
        with engine.busy("update"):
            wait_until(lambda: engine.state == "stopping", timeout=10, what="shutdown to begin")
            events.append("update finished")

    run_in_background(update_worker)
    wait_until(lambda: engine.work.active() == ["update"], timeout=5)
    engine.post("stop", "test")
    assert engine.run_forever() == 0
    events.append("engine returned")
    assert events == ["update finished", "engine returned"]
    with open(os.path.join(engine.cfg.daemon.work_dir, "daemon.state.json")) as fh:
        assert json.load(fh)["clean"] is True


def test_shutdown_abandons_work_past_the_timeout_and_says_so(make_engine, caplog):
    caplog.set_level(logging.INFO)
    engine = make_engine(daemon={"shutdown_timeout": "200ms"})
    engine.start()
    release = threading.Event()

    def stuck():
        with engine.busy("download"):
            release.wait(30)

    run_in_background(stuck)
    wait_until(lambda: engine.work.active() == ["download"], timeout=5)
    engine.post("stop", "test")
    t0 = time.monotonic()
    assert engine.run_forever() == 0
    assert time.monotonic() - t0 < 5
    release.set()
    assert "abandoning download" in caplog.text
    with open(os.path.join(engine.cfg.daemon.work_dir, "daemon.state.json")) as fh:
        assert json.load(fh)["clean"] is False


def test_after_stop_new_work_and_manager_commands_are_refused(make_engine):
    engine = make_engine()
    engine.start()
    seen = []
    engine.command_handlers["agent"] = seen.append
    assert engine.dispatch_command({"id": "1", "type": "agent"}) is True
    engine.post("stop", "test")
    engine.run_forever()
    assert engine.dispatch_command({"id": "2", "type": "agent"}) is False
    with pytest.raises(EngineStopping):
        with engine.busy("late update"):
            pass
    with pytest.raises(EngineStopping):
        run_call_from_thread(engine)
    assert seen == [{"id": "1", "type": "agent"}]


def run_call_from_thread(engine):
    box = {}

    def go():
        try:
            engine.call(lambda: 1, timeout=5)
        except Exception as exc:
            box["exc"] = exc

    t = run_in_background(go)
    t.join(10)
    raise box["exc"]


def test_call_runs_on_the_engine_thread_and_returns_the_result(make_engine):
    engine = make_engine()
    engine.start()
    main = threading.get_ident()
    box = {}

    def client():
        box["result"] = engine.call(lambda: threading.get_ident(), timeout=10)
        engine.post("stop", "test")

    run_in_background(client)
    engine.run_forever()
    assert box["result"] == main


def test_a_hung_reporter_is_left_behind_and_the_round_goes_on(make_engine, caplog):
    from daemon_app.hookspecs import hookimpl

    release = threading.Event()
    got = []

    class Hung:
        @hookimpl
        def report(self, report):
            release.wait(30)

    class Quick:
        @hookimpl
        def report(self, report):
            got.append(report["node_id"])

    engine = make_engine(daemon={"report_timeout": "100ms"})
    engine.plugins.register(Hung(), "hung", version="1", source="builtin")
    engine.plugins.register(Quick(), "quick", version="1", source="builtin")
    engine.start()
    t0 = time.monotonic()
    engine.build_and_report()
    engine.build_and_report()
    assert time.monotonic() - t0 < 5
    assert len(got) == 2
    assert "D5001 reporter hung took longer than 0.1s" in caplog.text
    assert "D5001 reporter hung skipped: still busy" in caplog.text
    assert "report hung" in engine.work.active()
    release.set()
    wait_until(lambda: not engine.work.active(), timeout=5)
    engine.shutdown()


# --- reload ----------------------------------------------------------------------------------------

def rewrite_config(engine, **changes):
    raw = yaml.safe_load(open(engine.cfg.source))
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    with open(engine.cfg.source, "w") as fh:
        yaml.safe_dump(raw, fh)


def test_reload_applies_a_valid_config_without_restart(make_engine):
    engine = make_engine(daemon={"report_interval": "60s", "log_level": "info"})
    engine.start()
    try:
        rewrite_config(engine, **{"daemon.report_interval": "1s", "daemon.log_level": "debug",
                                  "collectors.disk.enabled": False})
        result = engine.reload("test")
        assert result["reloaded"] is True and result["errors"] == []
        wanted = {"daemon.report_interval", "daemon.log_level", "collectors.disk.enabled"}
        assert wanted <= set(result["changed"])
        assert engine.scheduler.tasks["report"].interval == 1.0
        assert engine.scheduler.tasks["report"].due <= time.monotonic() + 1.0 * 1.1
        assert "collect:disk" not in engine.scheduler.tasks
        assert logging.getLogger().level == logging.DEBUG
    finally:
        engine.shutdown()
        logging.getLogger().setLevel(logging.WARNING)


def test_reload_refuses_an_invalid_config_and_keeps_the_old_one(make_engine, caplog):
    engine = make_engine(daemon={"report_interval": "60s"})
    engine.start()
    old = engine.cfg
    try:
        rewrite_config(engine, **{"daemon.report_interval": "soon", "daemon.log_levle": "debug"})
        result = engine.reload("test")
        assert result["reloaded"] is False
        assert any("D1002 config: daemon.report_interval: must be a duration" in e for e in result["errors"])
        assert any("daemon.log_levle: unknown key" in e for e in result["errors"])
        assert engine.cfg is old
        assert engine.scheduler.tasks["report"].interval == 60.0
        assert "D1002 config: daemon.report_interval" in caplog.text
        assert "reload (test) refused" in caplog.text
        os.unlink(engine.cfg.source)
        result = engine.reload("test")
        assert result["reloaded"] is False and result["errors"][0].startswith("D1001 config: cannot read")
    finally:
        engine.shutdown()


def test_reload_names_settings_that_need_a_restart(make_engine, work_dir):
    engine = make_engine()
    engine.start()
    try:
        rewrite_config(engine, **{"daemon.pid_file": str(work_dir / "other.pid")})
        result = engine.reload("test")
        assert result["reloaded"] is True
        assert result["restart_required"] == ["daemon.pid_file"]
    finally:
        engine.shutdown()


# --- instance lock ---------------------------------------------------------------------------------

def test_second_instance_lock_on_the_same_work_dir_is_refused_with_d1003(work_dir):
    first = InstanceLock(str(work_dir), str(work_dir / "a.pid"))
    first.acquire()
    try:
        second = InstanceLock(str(work_dir), str(work_dir / "b.pid"))
        with pytest.raises(AlreadyRunningError) as info:
            second.acquire()
        message = str(info.value)
        assert message.startswith(f"D1003 another daemon (pid {os.getpid()})")
        assert "daemon.work_dir" in message
        # The refused one released what it had taken: b.pid is free again.
        third = InstanceLock(str(work_dir / "elsewhere"), str(work_dir / "b.pid"))
        third.acquire()
        third.release()
    finally:
        first.release()
    assert (work_dir / "a.pid").read_text() == "", "a released pid file holds no stale pid"


def test_same_pid_file_with_another_work_dir_is_refused(work_dir):
    first = InstanceLock(str(work_dir / "one"), str(work_dir / "daemon.pid"))
    first.acquire()
    try:
        with pytest.raises(AlreadyRunningError, match="daemon.pid_file"):
            InstanceLock(str(work_dir / "two"), str(work_dir / "daemon.pid")).acquire()
    finally:
        first.release()


def test_an_unusable_pid_file_path_is_a_config_error(work_dir):
    (work_dir / "file").write_text("")
    with pytest.raises(Exception, match=r"D1002 .*daemon.pid_file: cannot open"):
        InstanceLock(str(work_dir), str(work_dir / "file" / "daemon.pid")).acquire()


# --- status and reports ----------------------------------------------------------------------------

STATUS_KEYS = {"version", "pid", "uptime_s", "node_id", "config", "manager", "agent", "collectors",
               "plugins", "update"}


def test_status_has_the_stable_top_level_keys(make_engine):
    engine = make_engine()
    engine.start()
    try:
        engine.collect()
        engine.add_status("update", lambda: {"state": "downloading", "version": "2.0"})
        status = engine.status()
        assert STATUS_KEYS <= set(status)
        assert status["manager"] is None and status["agent"] is None
        assert set(status["collectors"]) == {"cpu", "memory", "disk", "network"}
        assert set(status["collectors"]["cpu"]) == {"last_run", "duration_ms", "ok", "error"}
        assert {p["name"] for p in status["plugins"]} >= {"cpu", "file-reporter"}
        assert status["update"] == {"state": "downloading", "version": "2.0"}
        json.dumps(status)
    finally:
        engine.shutdown()


def test_recent_warnings_travel_with_the_next_report_once(make_engine):
    logs.setup("info", "", stderr=False)
    try:
        logs.recent_problems.drain()
        engine = make_engine()
        engine.start()
        logging.getLogger("daemon_app.test").warning("disk almost full", extra={"code": "D5001"})
        first = engine.build_report()
        second = engine.build_report()
        engine.shutdown()
    finally:
        logging.getLogger().removeHandler(logs.recent_problems)
        logging.getLogger().setLevel(logging.WARNING)
    assert [e["message"] for e in first["logs"]] == ["disk almost full"]
    assert first["logs"][0]["level"] == "warning" and first["logs"][0]["fields"]["code"] == "D5001"
    assert second["logs"] == []


def test_shutdown_hands_queued_agent_events_to_plugins_and_a_hung_one_holds_it_only_briefly(make_engine):
    from daemon_app.engine import EVENTS_FLUSH_SECONDS
    from daemon_app.hookspecs import hookimpl

    got: list[str] = []
    release = threading.Event()

    class SlowThenHung:
        @hookimpl
        def on_agent_event(self, event):
            if event["type"] == "hang":
                release.wait(60)
                return
            time.sleep(0.2)  # a slow plugin: the stop comes long before it is done
            got.append(event["type"])

    engine = make_engine()
    engine.plugins.register(SlowThenHung(), "slow", version="1", source="entrypoint")
    engine.start()
    try:
        for kind in ("started", "running"):
            engine.plugins.post_event({"type": kind})
        engine.post("stop", "test")
        assert engine.run_forever() == 0
        assert got == ["started", "running"]  # queued before the stop, delivered before it returned

        again = make_engine()
        again.plugins.register(SlowThenHung(), "slow", version="1", source="entrypoint")
        again.start()
        again.plugins.post_event({"type": "hang"})
        wait_until(lambda: again.plugins.events.status()["busy_with"] == "slow", 10, what="the plugin busy")
        began = time.monotonic()
        again.post("stop", "test")
        assert again.run_forever() == 0
        assert time.monotonic() - began < EVENTS_FLUSH_SECONDS + 5  # bounded, not the 60 s it would wait
    finally:
        release.set()
