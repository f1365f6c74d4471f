"""`daemon update` and `daemon rollback` as real processes, in direct mode (no daemon running)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from daemon_app.update.flow import UpdateLock
from tests.helpers import ROOT, daemon_cmd, write_config
from tests.update_support import base_config


def cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    raw = base_config(env.work, agent={"binary_path": str(env.work / "bin" / "agent")},
                      update={"min_free_bytes": 0})
    path = write_config(env.work / "daemon.yaml", raw)
    return subprocess.run(daemon_cmd("-c", path, *args), env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))


@pytest.mark.timeout(60)
def test_update_then_rollback_from_the_command_line(env) -> None:
    agent = env.work / "bin" / "agent"
    old = agent.read_bytes()
    rel = env.release("2.0.0")
    proc = cli(env, "update", "--component", "agent", "--file", str(rel / "package"), "--manifest", str(rel))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["success"] and result["new_version"] == "2.0.0" and result["old_version"] == "1.0.0"
    assert agent.read_bytes() == (rel / "package").read_bytes()
    assert "completed" in proc.stderr

    proc = cli(env, "rollback", "--component", "agent")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rolled_back"] and result["new_version"] == "1.0.0"
    assert agent.read_bytes() == old

    proc = cli(env, "rollback", "--component", "agent")
    assert proc.returncode == 1 and "D4004" in proc.stdout


@pytest.mark.timeout(60)
def test_cli_update_refused_while_another_process_holds_the_update_lock(env) -> None:
    rel = env.release("2.0.0")
    before = (env.work / "bin" / "agent").read_bytes()
    with UpdateLock(str(env.work)).hold("daemon", "3.1.0"):
        proc = cli(env, "update", "--component", "agent", "--file", str(rel / "package"),
                   "--manifest", str(rel))
    assert proc.returncode == 1
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"].startswith("D4003 another update is in progress (component daemon, version 3.1.0")
    assert (env.work / "bin" / "agent").read_bytes() == before


def test_cli_bad_signature_exits_1_with_the_code(env) -> None:
    rel = env.release("2.0.0")
    (rel / "manifest.json.sig").write_text("AAAA")
    proc = cli(env, "update", "--component", "agent", "--file", str(rel / "package"), "--manifest", str(rel))
    assert proc.returncode == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1])["error"].startswith("D4002 signature")
