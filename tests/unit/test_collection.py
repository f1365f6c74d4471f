"""CollectorRunner: a collector that raises, hangs or returns garbage is isolated; the round goes on."""

from __future__ import annotations

import logging
import threading

import pytest

from daemon_app import config
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
