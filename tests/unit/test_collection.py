"""CollectorRunner: a collector that raises, hangs or returns garbage is isolated; the round goes on."""

from __future__ import annotations

import logging
import threading

import pytest

from daemon_app import collection, config
from daemon_app.collection import CollectorRunner
from daemon_app.metrics import Metrics
from tests.helpers import wait_until


def section(name: str):
    return config.validate({}).collector(name)


def good(ctx):
    return Metrics(ctx.name, {"ok": 1})


def raises(ctx):
    raise RuntimeError("sensor on fire")


def garbage(ctx):
    return {"not": "Metrics"}


@pytest.mark.timeout(30)
def test_raising_hanging_and_garbage_collectors_do_not_stop_the_round(caplog):
    release = threading.Event()
    calls = []

    def hangs(ctx):
        calls.append(ctx.name)
        release.wait()
        return Metrics("hang", {"late": True})

    runner = CollectorRunner()
    plan = [("good", good, section("good"), 5.0), ("boom", raises, section("boom"), 5.0),
            ("hang", hangs, section("hang"), 0.2), ("junk", garbage, section("junk"), 5.0),
            ("many", lambda ctx: [good(ctx), Metrics("extra", {})], section("many"), 5.0)]
    with caplog.at_level(logging.ERROR):
        outcomes = {o.name: o for o in runner.run(plan)}
    assert outcomes["good"].ok and outcomes["good"].metrics[0].values == {"ok": 1}
    assert [m.name for m in outcomes["many"].metrics] == ["many", "extra"]
    assert outcomes["boom"].error == "raised RuntimeError: sensor on fire"
    assert outcomes["hang"].error == "timed out after 200ms"
    assert "expected Metrics" in outcomes["junk"].error
    logged = {r.collector: r for r in caplog.records if hasattr(r, "collector")}
    assert set(logged) == {"boom", "hang", "junk"}
    for name, record in logged.items():
        assert record.code == "D5001"
        assert record.getMessage().startswith(f"D5001 collector {name}: ")

    # Still stuck: not called again, reported at once; the others run normally.
    again = {o.name: o for o in runner.run(plan)}
    assert calls == ["hang"]
    assert again["hang"].error.startswith("still running")
    assert again["good"].ok

    release.set()  # it returns: a later round calls it again

    def hang_ok():
        outcome = {o.name: o for o in runner.run([("hang", hangs, section("hang"), 5.0)])}["hang"]
        return outcome.ok and outcome
    assert wait_until(hang_ok, timeout=10, what="the hung collector to run again").metrics[0].name == "hang"
    assert calls == ["hang", "hang"]
    runner.close()


def test_last_outcome_is_kept_per_collector_for_status():
    runner = CollectorRunner()
    runner.run([("good", good, section("good"), 5.0)])
    assert runner.last["good"].ok and runner.last["good"].duration >= 0
    runner.close()


def _collect_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("collect:")]


@pytest.mark.timeout(30)
def test_a_worker_thread_ends_when_idle_and_the_next_round_starts_a_new_one(monkeypatch):
    monkeypatch.setattr(collection, "WORKER_IDLE_EXIT", 0.2)
    runner = CollectorRunner()
    names = []

    def named(ctx):
        names.append(threading.current_thread().name)
        return Metrics(ctx.name, {"n": len(names)})

    first = runner.run([("idler", named, section("cpu"), 5.0)])
    assert first[0].ok and "collect:idler" in names
    wait_until(lambda: "collect:idler" not in _collect_threads(), timeout=10, what="the idle worker to end")
    second = runner.run([("idler", named, section("cpu"), 5.0)])
    assert second[0].ok and second[0].metrics[0].values == {"n": 2}
    assert names == ["collect:idler", "collect:idler"]


@pytest.mark.timeout(30)
def test_rounds_closer_than_the_idle_exit_reuse_one_worker_thread():
    runner = CollectorRunner()
    idents = set()

    def ident(ctx):
        idents.add(threading.get_ident())
        return Metrics(ctx.name, {})

    for _ in range(20):
        assert runner.run([("busy", ident, section("cpu"), 5.0)])[0].ok
    assert len(idents) == 1
