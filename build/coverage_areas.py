"""Combine the coverage data of every process the tests started and enforce a floor per design area.

Usage: python build/coverage_areas.py [DATA_DIR]      (what `make coverage` runs; default build/coverage)

DATA_DIR holds one `.coverage.*` file per process (pytest, `python -m daemon_app` children, the pyz,
the self-update watcher). This script
  1. puts the watcher's source where `[tool.coverage.paths]` maps every `<work_dir>/update/watcher.py`
     (the script is a string in daemon_app/update/selfupdate.py, written out at each self-update),
  2. combines the files (paths from the pyz's extraction directory map back to daemon_app/),
  3. adds the daemon_app files no process imported, at 0 % (the `include` patterns alone would
     leave them out of the report),
  4. writes coverage.json and a per-file text report into DATA_DIR, and prints one line per area:
     statements and branches, each with its own percentage, and the combined figure coverage.py
     itself reports ((covered lines + covered branches) / (lines + branches)), which the floor is
     checked against.
Exit status 1 when an area is below its floor (DESIGN §10, seed §8.1), 2 when there is no data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WATCHER_DIR = Path("build/coverage/watcher")  # must match [tool.coverage.paths] watcher in pyproject

# The design's four areas and their floors (percent, line + branch); everything else is "rest".
AREAS: list[tuple[str, str, float]] = [
    ("collectors", "daemon_app/collectors/", 80.0),
    ("agent", "daemon_app/agent/", 80.0),
    ("update", "daemon_app/update/", 90.0),
    ("comm", "daemon_app/comm/", 70.0),
]
REST = "rest"


@dataclass
class Tally:
    statements: int = 0
    covered_lines: int = 0
    branches: int = 0
    covered_branches: int = 0
    files: int = 0

    def add(self, summary: dict[str, int]) -> None:
        self.statements += summary["num_statements"]
        self.covered_lines += summary["covered_lines"]
        self.branches += summary["num_branches"]
        self.covered_branches += summary["covered_branches"]
        self.files += 1

    @staticmethod
    def _pct(part: int, whole: int) -> float:
        return 100.0 * part / whole if whole else 100.0

    @property
    def line_pct(self) -> float:
        return self._pct(self.covered_lines, self.statements)

    @property
    def branch_pct(self) -> float:
        return self._pct(self.covered_branches, self.branches)

    @property
    def pct(self) -> float:
        return self._pct(self.covered_lines + self.covered_branches, self.statements + self.branches)


def area_of(path: str) -> str:
    """The area a reported file belongs to; the watcher script is the updater's own code."""
    if path.startswith(str(WATCHER_DIR) + "/"):
        return "update"
    for name, prefix, _ in AREAS:
        if path.startswith(prefix):
            return name
    return REST


def write_watcher_source() -> None:
    sys.path.insert(0, str(ROOT))
    from daemon_app.update.selfupdate import WATCHER_SOURCE

    WATCHER_DIR.mkdir(parents=True, exist_ok=True)
    (WATCHER_DIR / "watcher.py").write_text(WATCHER_SOURCE)


def combine(data_dir: Path) -> object:
    import coverage

    cov = coverage.Coverage(data_file=str(data_dir / ".coverage"), config_file=str(ROOT / "pyproject.toml"))
    parts = sorted(str(p) for p in data_dir.glob(".coverage.*"))
    if not parts:
        return None
    cov.combine(parts, strict=True, keep=False)
    cov.save()
    cov.load()
    _add_unimported_files(cov)
    return cov


def _add_unimported_files(cov) -> None:
    """daemon_app modules that no process imported count as 0 %, not as absent."""
    data = cov.get_data()
    measured = {Path(f).resolve() for f in data.measured_files()}
    omit = ("_pb2.py", "_pb2_grpc.py")
    missing = [str(p) for p in sorted((ROOT / "daemon_app").rglob("*.py"))
               if p.resolve() not in measured and not p.name.endswith(omit)]
    if missing:
        data.touch_files(missing)
        cov.save()


def report(cov, data_dir: Path) -> dict[str, Tally]:
    json_path = data_dir / "coverage.json"
    with open(data_dir / "report.txt", "w") as out:
        cov.report(file=out, show_missing=True, skip_covered=False)
    cov.json_report(outfile=str(json_path))
    files = json.loads(json_path.read_text())["files"]
    tallies = {name: Tally() for name, _, _ in AREAS}
    tallies[REST] = Tally()
    for path, info in files.items():
        tallies[area_of(path)].add(info["summary"])
    return tallies


def print_table(tallies: dict[str, Tally]) -> list[str]:
    floors = {name: floor for name, _, floor in AREAS}
    failures = []
    print(f"{'area':<12}{'files':>6}{'lines':>20}{'branches':>18}{'total':>8}{'floor':>8}  result")
    for name, t in tallies.items():
        floor = floors.get(name)
        ok = floor is None or (t.files > 0 and t.pct >= floor)
        verdict = "-" if floor is None else ("ok" if ok else "BELOW FLOOR" if t.files else "NO FILES")
        print(f"{name:<12}{t.files:>6}"
              f"{f'{t.covered_lines}/{t.statements} {t.line_pct:5.1f}%':>20}"
              f"{f'{t.covered_branches}/{t.branches} {t.branch_pct:5.1f}%':>18}"
              f"{t.pct:>7.1f}%{'' if floor is None else f'{floor:.0f}%':>8}  {verdict}")
        if not ok and not t.files:
            failures.append(f"{name}: no file measured under its folder (renamed? update AREAS)")
        elif not ok:
            failures.append(f"{name}: {t.pct:.1f}% is below its floor of {floor:.0f}%")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="build/coverage")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    os.chdir(ROOT)  # reported paths (and the watcher mapping) are relative to the tree
    write_watcher_source()
    cov = combine(data_dir)
    if cov is None:
        print(f"coverage: no .coverage.* data files in {data_dir}", file=sys.stderr)
        return 2
    tallies = report(cov, data_dir)
    failures = print_table(tallies)
    print(f"per-file report: {data_dir / 'report.txt'}; `coverage html --data-file {data_dir / '.coverage'}` "
          "for an annotated view")
    for failure in failures:
        print(f"coverage: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
