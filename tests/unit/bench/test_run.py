"""The bench runner: real bench scripts in a tmp dir, run as subprocesses, merged and judged."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import budgets, common
from tests.helpers import ROOT

RUNNER = ROOT / "bench" / "run.py"
MARKS = ("<!-- results:begin -->", "<!-- results:end -->")


def _script(bench_dir: Path, name: str, body: str) -> None:
    (bench_dir / f"bench_{name}.py").write_text(textwrap.dedent(body))


def _run(tmp_path: Path, *extra: str) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path / "out"
    md = tmp_path / "BENCHMARKS.md"
    if not md.exists():
        md.write_text(f"# Benchmarks\n\nintro\n\n{MARKS[0]}\nold table\n{MARKS[1]}\n\nend\n")
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--bench-dir", str(tmp_path / "b"), "--out-dir", str(out),
         "--benchmarks-md", str(md), *extra],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "latest.json").read_text()), (out / "latest.md").read_text(), done


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    d = tmp_path / "b"
    d.mkdir()
    # Two good scripts (one within budget, one over), one that fails after printing noise.
    _script(d, "collect", """
        import json, sys
        print("collecting", file=sys.stderr)
        print("not the last line")
        print(json.dumps({"collect_ms_p50": 0.9, "collect_ms_p99": 2.5, "quick": "--quick" in sys.argv}))
    """)
    _script(d, "report", """
        import json
        print(json.dumps({"report_ms_p50": 4.0, "report_ms_p99": 12.5}))
    """)
    _script(d, "broken", """
        import sys
        print("Traceback: something went wrong", file=sys.stderr)
        sys.exit(3)
    """)
    _script(d, "peer_supervisord", """
        import json
        print(json.dumps({"peer_supervisord_restart_ms_p50": 1000.0,
                          "_peer": {"available": True, "version": "supervisord 4.3.0"}}))
    """)
    _script(d, "agent", """
        import json
        print(json.dumps({"agent_restart_ms_p50": 20.0, "agent_restart_ms_max": 40.0}))
    """)
    return d


@pytest.mark.timeout(90)
def test_runner_merges_figures_judges_budgets_and_records_failures(tmp_path: Path, bench_dir: Path) -> None:
    result, md, _ = _run(tmp_path)

    figures = result["figures"]
    assert figures["collect_ms_p50"] == 0.9 and figures["report_ms_p99"] == 12.5
    # A non-numeric value is not a figure: it is reported as the script's error instead.
    assert "quick" not in figures
    assert "not a number" in result["errors"]["bench_collect"]["error"]
    assert result["sources"]["report_ms_p99"] == "bench_report"

    assert result["errors"]["bench_broken"]["error"] == "exit code 3"
    assert "something went wrong" in result["errors"]["bench_broken"]["stderr_tail"]

    assert result["budgets"]["collect_ms_p99"]["met"] is True
    assert result["budgets"]["report_ms_p99"]["met"] is False
    assert result["budgets"]["idle_rss_mb"]["met"] is None
    assert "bench_idle" in result["missing"]

    assert result["ratios"]["ratio_agent_restart_vs_supervisord"]["value"] == 0.02
    assert result["peers"]["supervisord"]["version"] == "supervisord 4.3.0"
    assert result["peers"]["node_exporter"]["available"] is False
    assert set(result["machine"]) >= {"cpu_model", "cores", "kernel", "python", "date"}

    assert "**missed**" in md and budgets.BUDGETS["report_ms_p99"].limited_by in md
    assert "not measured: bench_idle.py not present" in md
    bench_md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "old table" not in bench_md and "`report_ms_p99`" in bench_md
    assert bench_md.startswith("# Benchmarks\n\nintro\n") and bench_md.endswith(f"{MARKS[1]}\n\nend\n")


@pytest.mark.timeout(90)
def test_quick_is_passed_on_and_a_slow_script_is_stopped_at_its_timeout(tmp_path: Path,
                                                                       bench_dir: Path) -> None:
    for name in ("report", "broken", "peer_supervisord", "agent"):
        (bench_dir / f"bench_{name}.py").unlink()
    _script(bench_dir, "slow", """
        import json, sys, time
        print(json.dumps({"partial_ms_p50": 1.0}))
        sys.stdout.flush()
        time.sleep(120)
    """)
    result, _, _ = _run(tmp_path, "--quick", "--timeout", "3")
    assert result["mode"] == "quick"
    assert result["errors"]["bench_collect"]["error"].startswith("figure 'quick' is not a number: True")
    assert result["errors"]["bench_slow"]["error"].startswith("timed out after")
    # What a script printed before it was stopped still counts.
    assert result["figures"]["partial_ms_p50"] == 1.0


@pytest.mark.timeout(60)
def test_scripts_past_the_suite_budget_are_not_run(tmp_path: Path, bench_dir: Path) -> None:
    result, md, _ = _run(tmp_path, "--suite-budget", "0")
    assert result["figures"] == {}
    errors = result["errors"].values()
    assert all(err["error"].startswith("not run: the suite's 0 s budget") for err in errors)
    assert "not measured: bench_collect.py not run: the suite's 0 s budget was spent" in md


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert common.percentile(values, 50) == 3.0
    assert common.percentile(values, 99) == pytest.approx(4.96)
    assert common.percentile([7.0], 99) == 7.0
    assert common.summarize(values, "x_ms") == {"x_ms_p50": 3.0, "x_ms_p99": 4.96, "x_ms_max": 5.0}


def test_units_come_from_the_figure_names() -> None:
    assert budgets.unit_of("fleet_report_ms_p99") == "ms"
    assert budgets.unit_of("something_ms_max") == "ms"
    assert budgets.unit_of("outbox_drain_per_s") == "/s"
    assert budgets.unit_of("new_thing_rss_mb") == "MB"
    assert budgets.unit_of("ready_s") == "s"


def test_memory_of_a_real_child() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; x = bytearray(30 << 20); sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        common.wait_until(lambda: common.rss_mb(proc.pid) > 30, timeout=20, what="the child to fill 30 MB")
        assert common.pss_mb(proc.pid) > 25
        assert proc.pid in common.children(os.getpid())
        assert proc.pid in common.descendants(os.getpid())
        assert common.rss_mb(os.getpid(), include_children=True) > common.rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def test_cpu_window_counts_a_busy_child_of_the_watched_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        own = common.CpuWindow(proc.pid)
        tree = common.CpuWindow(os.getpid(), include_children=True)
        # An idle process shows ~0 %; 10 % still tells a spinning child apart on a loaded machine.
        common.wait_until(lambda: own.percent() > 10 and tree.percent() > 10, timeout=20,
                          what="the busy child's CPU to show")
    finally:
        proc.kill()
        proc.wait(10)


def test_listening_ports_finds_the_port_a_process_chose() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert sock.getsockname()[1] in common.listening_ports(os.getpid())


@pytest.mark.timeout(60)
def test_only_runs_the_named_scripts_and_leaves_benchmarks_md_alone(tmp_path: Path, bench_dir: Path) -> None:
    result, md, _ = _run(tmp_path, "--only", "report")
    assert set(result["elapsed_s"]) == {"bench_report"} and result["partial"] is True
    assert "not measured: bench_collect.py not run" in md
    assert "bench_collect" not in result["missing"] and "bench_idle" in result["missing"]
    assert "old table" in (tmp_path / "BENCHMARKS.md").read_text()
