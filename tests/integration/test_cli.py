"""The `daemon` CLI as a real process: collect --once, plugins list, version."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import textwrap
from datetime import datetime

import pytest

from tests.helpers import ROOT, base_config, daemon_cmd, write_config

BUILTINS = ["cpu", "memory", "disk", "network"]


def run_cli(config_path: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(daemon_cmd("-c", config_path, *args), capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture
def cfg_path(tmp_path):
    return write_config(tmp_path / "daemon.yaml", base_config(tmp_path))


def test_collect_once_prints_every_builtin_keyed_by_metric_name_with_rfc3339_timestamps(cfg_path):
    result = run_cli(cfg_path, "collect", "--once")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(data) == sorted(BUILTINS)
    for name, metric in data.items():
        assert set(metric) == {"name", "timestamp", "values"} and metric["name"] == name
        assert metric["timestamp"].endswith("Z")
        datetime.fromisoformat(metric["timestamp"].replace("Z", "+00:00"))
    assert data["disk"]["values"]["disks"] and data["network"]["values"]["interfaces"]


def test_collect_once_table_format(cfg_path):
    result = run_cli(cfg_path, "collect", "--once", "--format", "table")
    assert result.returncode == 0, result.stderr
    assert {line.split()[0] for line in result.stdout.splitlines()} == set(BUILTINS)
    assert "memory     total" in result.stdout


def test_disabled_collector_is_not_run(tmp_path):
    path = write_config(tmp_path / "d.yaml", base_config(tmp_path, collectors={"disk": {"enabled": False}}))
    result = run_cli(path, "collect", "--once")
    assert result.returncode == 0 and "disk" not in json.loads(result.stdout)


@pytest.mark.timeout(60)
def test_plugins_that_raise_or_hang_do_not_stop_the_round_and_collect_exits_non_zero(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "boom.py").write_text(textwrap.dedent("""
        from daemon_app.hookspecs import hookimpl

        @hookimpl
        def collect(ctx):
            raise RuntimeError("sensor on fire")
        """))
    (plugin_dir / "hang.py").write_text(textwrap.dedent("""
        import threading
        from daemon_app.hookspecs import hookimpl

        @hookimpl
        def collect(ctx):
            threading.Event().wait()  # a dead NFS server, a wedged device: never returns
        """))
    (plugin_dir / "fine.py").write_text(textwrap.dedent("""
        from daemon_app.hookspecs import hookimpl
        from daemon_app.metrics import Metrics

        @hookimpl
        def collect(ctx):
            return Metrics("fine", {"answer": 42})
        """))
    path = write_config(tmp_path / "d.yaml", base_config(
        tmp_path, plugins={"dir": str(plugin_dir)}, collectors={"hang": {"timeout": "300ms"}}))
    result = run_cli(path, "collect", "--once")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert sorted(data) == sorted([*BUILTINS, "fine"])
    assert data["fine"]["values"] == {"answer": 42}
    assert "D5001 collector boom: raised RuntimeError: sensor on fire" in result.stderr
    assert "D5001 collector hang: timed out after 300ms" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "D5001 collect: 2 failed: boom, hang"

    listed = json.loads(run_cli(path, "plugins", "list", "--format", "json").stdout)
    by_name = {row["name"]: row for row in listed}
    assert {by_name[n]["source"] for n in ("boom", "hang", "fine")} == {"directory"}
    assert by_name["hang"]["hooks"] == ["collect"]


def test_plugins_list_table_and_json(cfg_path):
    table = run_cli(cfg_path, "plugins", "list")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["NAME", "VERSION", "SOURCE", "HOOKS"]
    rows = json.loads(run_cli(cfg_path, "plugins", "list", "--format", "json").stdout)
    assert {r["name"]: r["hooks"] for r in rows if r["source"] == "builtin"} == {
        "cpu": ["collect"], "memory": ["collect"], "disk": ["collect"], "network": ["collect"],
        "file-reporter": ["report"]}


def test_version_prints_daemon_python_and_build_id(cfg_path):
    from daemon_app import __version__

    info = json.loads(run_cli(cfg_path, "version", "--format", "json").stdout)
    assert info["version"] == __version__ and info["python"] == platform.python_version()
    assert info["arch"] == platform.machine()
    assert info["build_id"] == "dev"  # from source; the pyz carries its own (tests/e2e)
    text = run_cli(cfg_path, "version").stdout
    here = f"python {platform.python_version()} on {platform.machine()}"
    assert text.startswith(f"daemon {__version__} ({here}, ")
    assert "build dev" in text


def test_run_refuses_a_log_file_it_cannot_open_with_the_key_path(tmp_path):
    (tmp_path / "a-file").write_text("")
    cfg = base_config(tmp_path)
    cfg["daemon"]["log_file"] = str(tmp_path / "a-file" / "daemon.log")
    result = run_cli(write_config(tmp_path / "d.yaml", cfg), "run", timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("D1002 config: daemon.log_file: cannot open")


def test_run_refuses_a_work_dir_it_cannot_create_with_a_code(tmp_path):
    (tmp_path / "a-file").write_text("")
    cfg = base_config(tmp_path / "a-file" / "work")
    cfg["daemon"]["log_file"] = ""
    result = run_cli(write_config(tmp_path / "d.yaml", cfg), "run", timeout=30)
    assert result.returncode == 2  # a config value the host refuses is a config error
    assert "D1002 config: daemon.work_dir: cannot create" in result.stderr
    assert "Traceback" not in result.stderr
