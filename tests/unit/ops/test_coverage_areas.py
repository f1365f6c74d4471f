"""build/coverage_areas.py: which area a file counts in, and when CI must fail."""

from __future__ import annotations

import importlib.util
import sys

from tests.helpers import ROOT

# build/ is scripts, not a package: load the file as a module (registered first: it has dataclasses).
_spec = importlib.util.spec_from_file_location("coverage_areas", ROOT / "build" / "coverage_areas.py")
areas = sys.modules.setdefault("coverage_areas", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(areas)


def _tallies(**figures: tuple[int, int, int, int]) -> dict:
    tallies = {name: areas.Tally() for name, _, _ in areas.AREAS}
    tallies[areas.REST] = areas.Tally()
    for name, (lines, covered, branches, covered_branches) in figures.items():
        tallies[name].add({"num_statements": lines, "covered_lines": covered, "num_branches": branches,
                           "covered_branches": covered_branches})
    return tallies


def test_files_count_in_their_area_and_the_watcher_counts_as_update() -> None:
    assert areas.area_of("daemon_app/collectors/cpu.py") == "collectors"
    assert areas.area_of("daemon_app/update/flow.py") == "update"
    assert areas.area_of("build/coverage/watcher/watcher.py") == "update"
    assert areas.area_of("daemon_app/comm/link.py") == "comm"
    assert areas.area_of("daemon_app/engine.py") == "rest"
    assert areas.area_of("daemon_app/agent_helpers.py") == "rest"  # a prefix of a name is not the folder


def test_the_floor_applies_to_lines_and_branches_together() -> None:
    # 95 % of lines but 50 % of branches: 145/200 = 72.5 % combined, below the updater's 90 %.
    ok = dict(collectors=(10, 10, 0, 0), agent=(10, 10, 0, 0), comm=(10, 10, 0, 0))
    failures = areas.print_table(_tallies(update=(100, 95, 100, 50), **ok))
    assert failures == ["update: 72.5% is below its floor of 90%"]
    assert areas.print_table(_tallies(update=(100, 95, 100, 90), **ok)) == []


def test_an_area_with_no_files_fails_instead_of_passing_at_100_percent() -> None:
    failures = areas.print_table(_tallies(collectors=(10, 10, 0, 0), agent=(10, 10, 0, 0),
                                          update=(10, 10, 0, 0)))
    assert failures == ["comm: no file measured under its folder (renamed? update AREAS)"]
