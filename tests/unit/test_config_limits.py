"""Config file bombs (issue #10 item 3): every limit of the loader, checked on real files through
`daemon config check` in a child process (its peak RSS measured), and property-based: any file
either loads or raises D1001/D1002, never another exception, with short messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_app import config
from daemon_app.errors import ConfigLoadError, ConfigValidateError
from tests.helpers import ROOT

LEVELS = "abcdefghi"


def laughs(use: str) -> str:
    """A billion-laughs document (10^9 strings once expanded) whose last anchor `*i` is used by `use`."""
    lines = ["anchors:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip(LEVELS[:-1], LEVELS[1:], strict=True):
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n" + use + "\n"


def merge_bomb() -> str:
    lines = ["a: &a {x: 1, y: 2}"]
    for prev, cur in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", strict=True):
        lines.append(f"{cur}: &{cur} {{<<: [*{prev}, *{prev}]}}")
    return "\n".join(lines) + "\ndaemon: {labels: *u}\n"


BOMBS = {
    "log_level alias bomb": (laughs("daemon:\n  log_level: *i"), "D1001", "nodes"),
    "agent.args alias bomb": (laughs("agent:\n  args: *i"), "D1001", "nodes"),
    "labels alias bomb": (laughs("daemon:\n  labels: {x: *i}"), "D1001", "nodes"),
    "merge-key bomb": (merge_bomb(), "D1001", "nodes"),
    "10 MB labels map": ("daemon:\n  labels:\n" + "".join(f"    key{i}: value-{i}\n" for i in range(400_000)),
                         "D1001", "larger than 128 KiB"),
    "2,000 labels under the size cap": ("daemon:\n  labels:\n"
                                        + "".join(f"    k{i}: v{i}\n" for i in range(2000)), "D1001",
                                        "more than 1000 entries"),
    "one huge string": ("daemon:\n  id: " + "x" * 100_000 + "\n", "D1001", "longer than 16384"),
    "deep nesting": ("agent:\n  args: " + "[" * 10_000 + "]" * 10_000 + "\n", "D1001", "deeper than 32"),
    "long flow list": ("agent:\n  args: [" + "a," * 60_000 + "]\n", "D1001", "nodes"),
    "too many aliases": ("x: &x a\ny: [" + ", ".join(["*x"] * 150) + "]\n", "D1001", "more than 100 aliases"),
    "integer past Python's digit limit": ("daemon:\n  log_backups: 1" + "0" * 10_000 + "\n", "D1001",
                                          "cannot represent"),
    "impossible date": ("daemon:\n  id: 2026-13-45\n", "D1001", "cannot represent"),
    "unhashable key": ("? [a, b]\n: 1\n", "D1001", "unhashable"),
    "non-finite numbers": ("manager:\n  jitter: .nan\nagent:\n  health_check:\n    cpu_threshold: .inf\n",
                           "D1002", "finite"),
    "infinite duration": ("daemon:\n  report_interval: " + "9" * 400 + "s\n", "D1002", "finite duration"),
}

# Peak RSS from VmHWM: ru_maxrss would carry over the forking pytest process's peak across exec.
MEASURE = """
import sys
from daemon_app.cli import main
try:
    main(["-c", sys.argv[1], "config", "check"], standalone_mode=True)
except SystemExit as exc:
    code = exc.code
with open("/proc/self/status") as fh:
    hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
print("PEAK_RSS_KB", hwm, file=sys.stderr)
sys.exit(code)
"""


def check_in_child(path: str) -> tuple[int, str, int]:
    """`daemon -c path config check` in a fresh interpreter: (exit code, stderr, peak RSS in KiB)."""
    env = {k: v for k, v in os.environ.items() if k != "DAEMON_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", MEASURE, path], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=60)
    lines = result.stderr.splitlines()
    rss = int(lines[-1].split()[1])
    return result.returncode, "\n".join(lines[:-1]), rss


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(BOMBS))
def test_a_config_bomb_is_refused_with_its_code_quickly_and_in_bounded_memory(tmp_path, name):
    text, code, why = BOMBS[name]
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    exit_code, stderr, rss_kb = check_in_child(str(path))
    assert exit_code == 2, stderr
    assert stderr.startswith(code) and why in stderr, stderr
    assert len(stderr) < 1000, "the message must quote at most a short excerpt of the bad value"
    assert rss_kb < 50 * 1024, f"config check peaked at {rss_kb / 1024:.0f} MB"
    # The same through the library: the typed error, nothing else.
    with pytest.raises(ConfigLoadError if code == "D1001" else ConfigValidateError):
        config.load(path)


def test_a_fifo_at_the_config_path_is_refused_without_blocking(tmp_path):
    path = tmp_path / "daemon.yaml"
    os.mkfifo(path)
    with pytest.raises(ConfigLoadError, match="D1001 .*not a regular file"):
        config.load(path)


def test_a_file_exactly_at_the_size_cap_still_loads_and_limits_leave_ordinary_files_alone(tmp_path):
    body = "daemon:\n  labels:\n" + "".join(f"    k{i}: v{i}\n" for i in range(900))
    body += "#" * (config.MAX_FILE_BYTES - len(body) - 1) + "\n"
    path = tmp_path / "daemon.yaml"
    path.write_text(body)
    assert os.path.getsize(path) == config.MAX_FILE_BYTES
    assert len(config.load(path).daemon.labels) == 900
    path.write_text(body + "\n")
    with pytest.raises(ConfigLoadError, match="larger than"):
        config.load(path)


def test_aliases_and_merge_keys_within_the_limits_still_work(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text("collectors:\n  cpu: &fast {interval: 5s, timeout: 1s}\n  memory: *fast\n"
                    "  disk:\n    <<: *fast\n    interval: 10s\n")
    cfg = config.load(path)
    assert (cfg.collectors.cpu.interval, cfg.collectors.memory.interval) == (5.0, 5.0)
    assert (cfg.collectors.disk.interval, cfg.collectors.disk.timeout) == (10.0, 1.0)


def test_a_bad_value_is_quoted_as_a_short_excerpt(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump({"daemon": {"log_level": ["x" * 5000] * 10},
                                    "manager": {"address": "h" * 10000},
                                    "agent": {"args": [[["deep"] * 20] * 20] * 5}}))  # anchors, aliases
    with pytest.raises(ConfigValidateError) as caught:
        config.load(path)
    assert len(caught.value.problems) == 3
    for problem in caught.value.problems:
        assert len(problem) < 300, problem


def test_a_file_of_a_thousand_mistakes_lists_the_first_hundred_and_counts_the_rest(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text("".join(f"k{i}: 1\n" for i in range(1000)))
    with pytest.raises(ConfigValidateError) as caught:
        config.load(path)
    problems = caught.value.problems
    assert len(problems) == 101 and problems[0] == "k0: unknown key"
    assert problems[-1] == "<file>: 900 more problem(s) not listed"


# --- property-based --------------------------------------------------------------------------

_DIR = tempfile.mkdtemp(prefix="cfgprop")
PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

yaml_soup = st.lists(st.sampled_from(["a", ":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&x", "*x",
                                      "&y ", "*y", "<<", "? ", "!!", "'", '"', "#", "|", ">", "0x", "1e9",
                                      ".nan", "2026-13-45", "daemon", "labels", "agent", "args", "\t",
                                      "%YAML 1.1\n", "---\n", "\\"]),
                     max_size=200).map("".join)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)
sections = st.fixed_dictionaries({}, optional={
    "daemon": st.dictionaries(st.sampled_from(["log_level", "labels", "id", "log_backups", "report_interval",
                                               "log_max_bytes", "unknown"]), values, max_size=4),
    "agent": st.dictionaries(st.sampled_from(["args", "socket_mode", "enabled", "stop_timeout"]), values,
                             max_size=3),
    "manager": st.dictionaries(st.sampled_from(["address", "jitter", "tls"]), values, max_size=3),
})


def loads_or_refuses(text: str | bytes) -> None:
    path = os.path.join(_DIR, "prop.yaml")
    with open(path, "wb") as fh:
        fh.write(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        config.load(path)
    except ConfigValidateError as exc:
        assert exc.problems and all(len(p) < 400 for p in exc.problems), exc.problems
    except ConfigLoadError as exc:
        assert str(exc).startswith("D1001 ") and len(str(exc)) < 600, str(exc)


@PROPS
@given(st.binary(max_size=500))
def test_any_bytes_load_or_raise_d1001_or_d1002(data):
    loads_or_refuses(data)


@PROPS
@given(yaml_soup)
def test_any_yaml_like_text_loads_or_raises_d1001_or_d1002(text):
    loads_or_refuses(text)


@PROPS
@given(sections)
def test_any_document_of_known_sections_loads_or_raises_d1001_or_d1002(doc):
    loads_or_refuses(json.dumps(doc))  # JSON is YAML; json.dumps keeps NaN/Infinity for the loader to see
