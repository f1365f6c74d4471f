"""Run every bench/bench_*.py, hold the figures to their budgets, write bench/results/latest.{json,md}."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import budgets  # noqa: E402
from common import PYZ, ROOT, machine_info  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
MARK_BEGIN = "<!-- results:begin -->"
MARK_END = "<!-- results:end -->"

# Seconds each script may take (full run, --quick run); the suite as a whole also has a budget.
DEFAULT_TIMEOUT = (120.0, 60.0)
TIMEOUTS: dict[str, tuple[float, float]] = {
    "bench_idle": (600.0, 240.0),  # two daemons in turn: with Manager and Agent, stand-alone with Agent
    "bench_idle_standalone": (150.0, 60.0),
    "bench_fleet": (150.0, 60.0),
    "bench_self_update": (150.0, 90.0),
    "bench_outage": (150.0, 90.0),
    "bench_peer_node_exporter": (240.0, 120.0),  # may apt-get install node_exporter first
    "bench_peer_supervisord": (180.0, 120.0),    # may pip install supervisor first
    "bench_prometheus": (180.0, 90.0),
    "bench_interpreters": (300.0, 150.0),        # may debootstrap the Debian roots first (cached)
}
# The figures held to budgets run first, so a slow script late in the suite cannot starve them.
ORDER = ("bench_collect", "bench_report", "bench_agent", "bench_ready", "bench_idle_standalone",
         "bench_idle", "bench_peer_supervisord", "bench_peer_node_exporter")
SUITE_BUDGET_S = 780.0  # `make bench` also builds the pyz: the whole must stay under 15 minutes
MIN_SLOT_S = 15.0       # a script is not started with less time than this left


def discover(bench_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The bench scripts in run order: ORDER first, then the rest by name."""
    scripts = {p.stem: p for p in bench_dir.glob("bench_*.py")}
    if only:
        wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in only}
        scripts = {k: v for k, v in scripts.items() if k in wanted}
    rank = {name: i for i, name in enumerate(ORDER)}
    return [scripts[k] for k in sorted(scripts, key=lambda k: (rank.get(k, len(rank)), k))]


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _parse_last_line(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("printed nothing on stdout (the last line must be a JSON object of figures)")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"last stdout line is not JSON ({exc}): {lines[-1][:200]!r}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"last stdout line is JSON but not an object: {lines[-1][:200]!r}")
    return data


def run_script(path: Path, *, quick: bool, timeout: float, log_dir: Path) -> dict[str, Any]:
    """Run one bench script; returns {figures, meta, elapsed_s} and an `error` when it failed."""
    cmd = [sys.executable, str(path), *(["--quick"] if quick else [])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["BENCH_TIMEOUT_S"] = str(int(timeout))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Own session so a timeout can stop the script and whatever it started, as one group.
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stdout, stderr = _stop_group(proc)
    elapsed = round(time.monotonic() - started, 1)
    (log_dir / f"{path.stem}.log").write_text(stderr + ("\n--- stdout ---\n" + stdout if stdout else ""))
    out: dict[str, Any] = {"figures": {}, "meta": {}, "elapsed_s": elapsed}
    try:
        data = _parse_last_line(stdout)
    except ValueError as exc:
        data, parse_error = {}, str(exc)
    else:
        parse_error = ""
    for key, value in data.items():
        if key.startswith("_"):
            out["meta"][key[1:]] = value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            parse_error = parse_error or f"figure {key!r} is not a number: {value!r}"
        else:
            out["figures"][key] = value
    if timed_out:
        out["error"] = f"timed out after {timeout:.0f} s"
    elif proc.returncode != 0:
        out["error"] = f"exit code {proc.returncode}"
    elif parse_error:
        out["error"] = parse_error
    if "error" in out:
        out["stderr_tail"] = _tail(stderr)
    return out


def _stop_group(proc: subprocess.Popen[str]) -> tuple[str, str]:
    # SIGINT first: a Python script then runs its finally blocks and stops what it started.
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), text=True,
                              capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_suite(bench_dir: Path, *, quick: bool, only: list[str] | None, suite_budget: float,
              log_dir: Path, timeout_cap: float | None = None) -> dict[str, Any]:
    """Run the scripts one after another (never in parallel: they measure CPU and latency)."""
    machine = machine_info()
    machine["commit"] = _git_commit()
    if PYZ.exists():
        machine["pyz_mb"] = round(PYZ.stat().st_size / 1e6, 1)
    deadline = time.monotonic() + suite_budget
    scripts: dict[str, dict[str, Any]] = {}
    for path in discover(bench_dir, only):
        full, short = TIMEOUTS.get(path.stem, DEFAULT_TIMEOUT)
        left = deadline - time.monotonic()
        if left < MIN_SLOT_S:
            scripts[path.stem] = {"figures": {}, "meta": {}, "elapsed_s": 0.0,
                                  "error": f"not run: the suite's {suite_budget:.0f} s budget was spent"}
            continue
        timeout = min(short if quick else full, left, timeout_cap or left)
        print(f"bench: {path.name} (timeout {timeout:.0f} s) ...", file=sys.stderr, flush=True)
        result = run_script(path, quick=quick, timeout=timeout, log_dir=log_dir)
        scripts[path.stem] = result
        status = result.get("error") or f"{len(result['figures'])} figures"
        print(f"bench: {path.name}: {status} in {result['elapsed_s']} s", file=sys.stderr, flush=True)
    present = {p.stem for p in discover(bench_dir)}
    return assemble(scripts, machine=machine, quick=quick, partial=bool(only), present=present)


def assemble(scripts: dict[str, dict[str, Any]], *, machine: dict[str, Any], quick: bool,
             partial: bool, present: set[str]) -> dict[str, Any]:
    """Merge the scripts' results into the latest.json document."""
    figures: dict[str, float] = {}
    source: dict[str, str] = {}
    errors: dict[str, dict[str, Any]] = {}
    for name, result in scripts.items():
        for key, value in result["figures"].items():
            figures[key] = value
            source[key] = name
        if "error" in result:
            errors[name] = {"error": result["error"], "stderr_tail": result.get("stderr_tail", "")}
    missing = [name for name in budgets.EXPECTED if name not in present]
    peers: dict[str, dict[str, Any]] = {}
    for name in sorted(set(scripts) | {n for n in budgets.EXPECTED if n.startswith("bench_peer_")}):
        if not name.startswith("bench_peer_"):
            continue
        result = scripts.get(name)
        peer: dict[str, Any] = {"figures": dict(result["figures"]) if result else {}}
        peer.update((result or {}).get("meta", {}).get("peer", {}))
        if result is None:
            peer.setdefault("available", False)
            peer["note"] = f"{name}.py " + ("not run" if name in present else "not present")
        elif "error" in result:
            peer.setdefault("available", bool(result["figures"]))
            peer.setdefault("note", result["error"])
        else:
            peer.setdefault("available", bool(result["figures"]))
        peers[name.removeprefix("bench_peer_")] = peer
    return {
        "machine": machine,
        "mode": "quick" if quick else "full",
        "partial": partial,
        "figures": dict(sorted(figures.items())),
        "sources": source,
        "budgets": budgets.check(figures),
        "peers": peers,
        "ratios": budgets.ratios(figures),
        "errors": errors,
        "missing": missing,
        "elapsed_s": {name: r["elapsed_s"] for name, r in scripts.items()},
    }


# ---- markdown ----

def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit not in ("", "%") else f"{text}{unit}"


def _why_unmeasured(key: str, result: dict[str, Any]) -> str:
    script = next((name for name, keys in budgets.EXPECTED.items() if key in keys), None)
    if script is None:
        return "not measured"
    if script in result["missing"]:
        return f"not measured: {script}.py not present"
    if script in result["errors"]:
        return f"not measured: {script}.py {result['errors'][script]['error']}"
    if script not in result["elapsed_s"]:
        return f"not measured: {script}.py not run"
    return f"not measured: {script}.py did not report it"


def render_markdown(result: dict[str, Any]) -> str:
    """The human summary: budgets, peers, ratios, every figure, and what failed."""
    m = result["machine"]
    lines = []
    total = sum(result["elapsed_s"].values())
    lines.append(
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB, "
        f"{m.get('kernel', '?')}, Python {m.get('python', '?')}; load average at start "
        f"{' '.join(str(x) for x in m.get('loadavg', []))}.  ")
    selected = " (selected scripts)" if result.get("partial") else ""
    lines.append(
        f"Run: {m.get('date', '?')}, {result['mode']}{selected}, "
        f"{total:.0f} s, commit {m.get('commit') or '?'}"
        + (f", daemon.pyz {m['pyz_mb']} MB" if "pyz_mb" in m else "") + ".")
    if result["missing"]:
        lines.append("")
        lines.append(f"This run is partial: {len(result['missing'])} of {len(budgets.EXPECTED)} expected "
                     "scripts were not in the tree (listed at the end).")
    lines.append("")
    checks = result["budgets"]
    met = sum(1 for c in checks.values() if c["met"] is True)
    missed = [k for k, c in checks.items() if c["met"] is False]
    unmeasured = sum(1 for c in checks.values() if c["met"] is None)
    lines.append(f"**Budgets: {met} met, {len(missed)} missed, {unmeasured} not measured.**")
    lines.append("")
    lines.append("| what (the budgets unless noted) | figure | measured | budget | |")
    lines.append("|---|---|---|---|---|")
    for key, c in checks.items():
        measured = _fmt(c["value"], c["unit"]) if c["value"] is not None else _why_unmeasured(key, result)
        verdict = {True: "met", False: "**missed**", None: "—"}[c["met"]]
        what = c["what"] + ("" if c["source"] == "the budgets" else f" ({c['source']})")
        lines.append(f"| {what} | `{key}` | {measured} | ≤ {_fmt(c['budget'], c['unit'])} | {verdict} |")
    if missed:
        lines.append("")
        lines.append("Missed budgets and what limits them:")
        lines.append("")
        for key in missed:
            c = checks[key]
            lines.append(f"- `{key}` {_fmt(c['value'], c['unit'])} > {_fmt(c['budget'], c['unit'])}: "
                         f"{budgets.BUDGETS[key].limited_by}.")
    lines.append("")
    lines.append("**Peers, measured in the same run on the same machine**")
    lines.append("")
    lines.append("| peer | figure | value | meaning |")
    lines.append("|---|---|---|---|")
    for name, peer in result["peers"].items():
        label = peer.get("version") or name
        if not peer["figures"]:
            lines.append(f"| {label} | — | not measured | {peer.get('note', 'no figures')} |")
        for i, (key, value) in enumerate(peer["figures"].items()):
            lines.append(f"| {label if i == 0 else ''} | `{key}` | {_fmt(value, budgets.unit_of(key))} | "
                         f"{budgets.FIGURES.get(key, ('', ''))[1]} |")
        if peer["figures"] and peer.get("note"):
            lines.append(f"| | | | {peer['note']} |")
    lines.append("")
    lines.append("**Ratios (ours / peer, same run)**")
    lines.append("")
    if result["ratios"]:
        lines.append("| ratio | value | from | meaning |")
        lines.append("|---|---|---|---|")
        for name, r in result["ratios"].items():
            lines.append(f"| `{name}` | {r['value']} | `{r['ours']}` / `{r['theirs']}` | "
                         f"{budgets.RATIOS[name].meaning} |")
    else:
        lines.append("None: a ratio needs both our figure and the peer's from this run.")
    lines.append("")
    lines.append("**Our figures**")
    lines.append("")
    ours = {k: v for k, v in result["figures"].items() if not k.startswith("peer_")}
    if ours:
        lines.append("| figure | value | meaning | script |")
        lines.append("|---|---|---|---|")
    else:
        lines.append("None measured in this run.")
    for key, value in ours.items():
        meaning = budgets.FIGURES.get(key, ("", ""))[1]
        lines.append(f"| `{key}` | {_fmt(value, budgets.unit_of(key))} | {meaning} | "
                     f"{result['sources'].get(key, '')} |")
    if result["missing"] or result["errors"]:
        lines.append("")
        lines.append("**Not measured**")
        lines.append("")
        for name in result["missing"]:
            lines.append(f"- {name}.py: not present in this tree")
        for name, err in result["errors"].items():
            detail = err["stderr_tail"].splitlines()[-1] if err.get("stderr_tail") else ""
            lines.append(f"- {name}.py: {err['error']}" + (f" — `{detail[:160]}`" if detail else ""))
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update_benchmarks_md(path: Path, body: str) -> bool:
    """Replace the text between the results markers of BENCHMARKS.md; False if there are no markers."""
    text = path.read_text()
    pattern = re.compile(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), re.S)
    if not pattern.search(text):
        return False
    _write(path, pattern.sub(lambda _: f"{MARK_BEGIN}\n{body}{MARK_END}", text, count=1))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this script (bench_NAME.py); repeatable")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="where the bench_*.py are")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results",
                        help="where latest.json and latest.md go")
    parser.add_argument("--benchmarks-md", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="rewrite the results table in this file (not for --only runs)")
    parser.add_argument("--no-benchmarks-md", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--suite-budget", type=float, default=SUITE_BUDGET_S,
                        help="seconds for the whole suite; scripts past it are not run")
    parser.add_argument("--timeout", type=float, help="at most this many seconds for any one script")
    args = parser.parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = run_suite(args.bench_dir, quick=args.quick, only=args.only, suite_budget=args.suite_budget,
                       log_dir=args.out_dir / "logs", timeout_cap=args.timeout)
    body = render_markdown(result)
    _write(args.out_dir / "latest.json", json.dumps(result, indent=2) + "\n")
    _write(args.out_dir / "latest.md", "# Benchmark results\n\n" + body)
    print(f"bench: wrote {args.out_dir / 'latest.json'} and latest.md", file=sys.stderr)
    if not args.only and not args.no_benchmarks_md and args.benchmarks_md.exists():
        if update_benchmarks_md(args.benchmarks_md, body):
            print(f"bench: updated the results table in {args.benchmarks_md}", file=sys.stderr)
    print(body)
    missed = [k for k, c in result["budgets"].items() if c["met"] is False]
    if missed:
        print(f"bench: budgets missed: {', '.join(missed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
