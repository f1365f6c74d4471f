"""Smoke tests of the built dist/daemon.pyz: sealed, reproducible, runs on a Python with no deps."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from tests.e2e.conftest import SYSTEM_PYTHON, build_pyz
from tests.helpers import ROOT, base_config, wait_until, write_config

pytestmark = pytest.mark.pyz_smoke

BUILTINS = {"cpu", "memory", "disk", "network"}


def system_python_or_skip() -> str:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 on this host")
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if version != "(3, 11)":
        pytest.skip(f"/usr/bin/python3 is {version}; tests/compat runs the pyz on other versions")
    return str(SYSTEM_PYTHON)


def test_pyz_reports_its_build_id_and_carries_no_dev_tools(pyz, run_pyz):
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
        build = json.loads(zf.read("site-packages/daemon_app/_build.json"))
    info = json.loads(run_pyz("version", "--format", "json").stdout)
    assert info["build_id"] == build["build_id"] != "dev"
    # Shared packages in site-packages, per-interpreter builds under _interp/cpXY (build/stage.py).
    tops = {n.split("/")[1] for n in names if n.startswith("site-packages/")}
    for python in build["pythons"]:
        prefix = f"_interp/cp{python.replace('.', '')}/"
        tops |= {n[len(prefix):].split("/")[0] for n in names if n.startswith(prefix)}
    for dev_tool in ("pytest", "_pytest", "ruff", "shiv", "grpc_tools"):
        assert dev_tool not in tops
    for runtime in ("daemon_app", "psutil", "grpclib", "h2", "google", "pluggy", "yaml", "click",
                    "cryptography", "requests"):
        assert runtime in tops
    assert "daemon_manager" not in tops
    assert "grpc" not in tops and "grpcio" not in build["dependencies"], "grpcio is the Manager's alone"
    assert set(build["dependencies"]) >= {"psutil", "grpclib", "h2", "protobuf", "pluggy", "pyyaml", "click",
                                          "cryptography", "requests"}
    assert build["pythons"] == ["3.9", "3.10", "3.11", "3.12", "3.13"] and build["arch"] == info["arch"]


def test_pyz_runs_on_the_system_python_that_has_none_of_the_dependencies(run_pyz, tmp_path):
    python = system_python_or_skip()
    bare = subprocess.run([python, "-c", "import psutil, pluggy, click, grpclib"], capture_output=True)
    assert bare.returncode != 0, "/usr/bin/python3 has our dependencies: this test would prove nothing"
    cfg = write_config(tmp_path / "d.yaml", base_config(tmp_path))
    result = run_pyz("-c", cfg, "collect", "--once", python=python)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == BUILTINS
    checked = run_pyz("-c", cfg, "config", "check", python=python)
    assert checked.returncode in (0, 1) and checked.stdout.startswith(("config OK", "config valid with"))
    version = run_pyz("version", python=python).stdout
    assert "(python 3.11." in version and f" on {platform.machine()}," in version


@pytest.mark.timeout(300)
def test_loadavg_plugin_installed_with_pip_shows_up_in_plugins_list_and_collect(run_pyz, tmp_path):
    python = str(SYSTEM_PYTHON) if SYSTEM_PYTHON.exists() else sys.executable
    source = tmp_path / "src"  # pip builds in the source tree: build from a copy, not the repo
    shutil.copytree(ROOT / "plugins" / "daemon-plugin-loadavg", source)
    cfg = write_config(tmp_path / "d.yaml", base_config(tmp_path, collectors={"loadavg": {"timeout": "2s"}}))

    installed = run_pyz("-c", cfg, "plugins", "install", str(source), python=python, timeout=240)
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "plugins" / "daemon_plugin_loadavg" / "__init__.py").exists()

    listed = json.loads(run_pyz("-c", cfg, "plugins", "list", "--format", "json", python=python).stdout)
    row = next(r for r in listed if r["name"] == "loadavg")
    assert row == {"name": "loadavg", "version": "1.0.0", "source": "directory", "hooks": ["collect"]}

    before = os.getloadavg()
    collected = run_pyz("-c", cfg, "collect", "--once", python=python)
    after = os.getloadavg()
    assert collected.returncode == 0, collected.stderr
    data = json.loads(collected.stdout)
    assert set(data) == BUILTINS | {"loadavg"}
    values = data["loadavg"]["values"]
    assert set(values) == {"load1", "load5", "load15"}
    assert min(before[2], after[2]) - 0.5 <= values["load15"] <= max(before[2], after[2]) + 0.5


@pytest.mark.timeout(120)
def test_pyz_run_standalone_writes_reports_and_stops_on_sigterm(pyz, shiv_root, tmp_path):
    cfg = write_config(tmp_path / "d.yaml", base_config(
        tmp_path, daemon={"report_interval": "300ms"},
        collectors={n: {"interval": "200ms"} for n in BUILTINS}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_"))}
    env["SHIV_ROOT"] = str(shiv_root)
    python = str(SYSTEM_PYTHON) if SYSTEM_PYTHON.exists() else sys.executable
    proc = subprocess.Popen([python, str(pyz), "-c", cfg, "run"], env=env, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reports = tmp_path / "reports.jsonl"
        wait_until(lambda: reports.exists() and len(reports.read_text().splitlines()) >= 2, timeout=60,
                   what="two reports from the pyz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = json.loads(reports.read_text().splitlines()[-1])
    assert set(last["metrics"]) == BUILTINS


def test_old_extractions_are_pruned_keeping_the_current_and_the_previous(run_pyz, tmp_path):
    root = tmp_path / "shiv"
    root.mkdir()
    now = time.time()
    for age_h in (1, 2, 3):
        old = root / f"daemon.pyz_old{age_h}"
        (old / "site-packages").mkdir(parents=True)
        (root / f".daemon.pyz_old{age_h}_lock").touch()
        os.utime(old, (now - age_h * 3600, now - age_h * 3600))
    (root / "unrelated.pyz_x").mkdir()
    result = run_pyz("version", "--format", "json", env={"SHIV_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    build_id = json.loads(result.stdout)["build_id"]
    assert sorted(p.name for p in root.iterdir()) == sorted([
        f"daemon.pyz_{build_id}", f".daemon.pyz_{build_id}_lock", "daemon.pyz_old1", ".daemon.pyz_old1_lock",
        "unrelated.pyz_x"])


@pytest.mark.timeout(300)
def test_building_twice_gives_the_same_bytes(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed by build/shiv.sh for SOURCE_DATE_EPOCH")
    import importlib.util

    if importlib.util.find_spec("shiv") is None:
        pytest.skip("shiv is not installed (make venv)")
    first, second = tmp_path / "a" / "daemon.pyz", tmp_path / "b" / "daemon.pyz"
    build_pyz(first, epoch="1700000000")
    build_pyz(second, epoch="1700000000")
    assert first.read_bytes() == second.read_bytes()
