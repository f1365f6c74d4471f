"""A config bomb dropped in place of a running daemon's config (issue #10 item 3): the reload is
refused with D1001 at once, the running configuration stays in force, memory stays flat."""

from __future__ import annotations

import tracemalloc

from tests.unit.test_config_limits import laughs


def test_reload_refuses_an_alias_bomb_and_keeps_the_running_config(make_engine):
    engine = make_engine(daemon={"report_interval": "60s"})
    engine.start()
    old = engine.cfg
    try:
        with open(engine.cfg.source, "a") as fh:
            fh.write(laughs("x-bomb: *i"))
        tracemalloc.start()
        try:
            result = engine.reload("test")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result["reloaded"] is False
        assert result["errors"][0].startswith("D1001 config: ") and "nodes" in result["errors"][0]
        assert engine.cfg is old and engine.scheduler.tasks["report"].interval == 60.0
        assert peak < 5 * 1024 * 1024, f"the refused reload peaked at {peak} bytes"
    finally:
        engine.shutdown()
