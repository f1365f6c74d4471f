"""The reference Manager's side of remote config: `daemon-manager push-config` queues the file,
`serve` pushes it, the daemon answers, and `configs` shows every push and the effective hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, short_tmpdir, wait_until, write_config
from tests.integration.manager.conftest import Manager, pki_dir  # noqa: F401 - the fixture
from tests.integration.rconfig.conftest import node_config
from tests.live_update import kill_agent

GOOD = b"level: info\n"
CRASH = b"exit-at-start: 2\n"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "daemon_manager", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=60)


def _push(db: str, node_id: str, path: Path) -> subprocess.CompletedProcess:
    return _cli("push-config", "--db", db, "--node", node_id, "--agent-config", str(path))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(150)
def test_push_config_then_configs_shows_committed_and_rolled_back_pushes_and_the_effective_hash(
        pki_dir, tmp_path, daemon_processes):  # noqa: F811 - the imported fixture
    db = str(tmp_path / "m.db")
    manager = Manager(db, pki_dir)
    manager.start(0)
    work = Path(short_tmpdir("rcm"))
    daemon = None
    try:
        cfg = node_config(work, tmp_path, manager.address, pki_dir)
        daemon = daemon_processes(write_config(work / "daemon.yaml", cfg))

        def nodes() -> list[dict]:
            out = _cli("nodes", "--db", db, "--format", "json")
            return json.loads(out.stdout) if out.returncode == 0 else []

        node_id = wait_until(lambda: nodes() and nodes()[0]["node_id"], timeout=30, what="the node")
        (tmp_path / "good.conf").write_bytes(GOOD)
        (tmp_path / "crash.conf").write_bytes(CRASH)

        def configs() -> dict:
            out = _cli("configs", "--db", db, "--node", node_id, "--format", "json")
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        def ended(cid: str) -> dict | None:
            push = next(p for p in configs()["pushes"] if p["id"] == cid)
            return push if push["state"] in ("completed", "rolled_back", "failed", "rejected") else None

        good = _push(db, node_id, tmp_path / "good.conf")
        assert good.returncode == 0, good.stderr
        first = wait_until(lambda: ended(good.stdout.strip()), timeout=60, what="the good push to end")
        assert first["state"] == "completed" and first["sha256"] == _sha(GOOD) and first["bytes"] == len(GOOD)
        assert [s["state"] for s in first["statuses"]][-1] == "completed"
        assert configs()["effective_agent_config"] == _sha(GOOD)

        bad = _push(db, node_id, tmp_path / "crash.conf")
        second = wait_until(lambda: ended(bad.stdout.strip()), timeout=60, what="the crashing push to end")
        assert second["state"] == "rolled_back", second["statuses"]
        result = second["result"]
        assert result["old_version"] == _sha(GOOD) and result["new_version"] == _sha(CRASH)
        assert configs()["effective_agent_config"] == _sha(GOOD)
        wait_until(lambda: configs()["reported_agent_config"] == _sha(GOOD), timeout=30,
                   what="the node's heartbeat reporting the restored config")

        text = _cli("configs", "--db", db, "--node", node_id).stdout
        assert f"effective agent config: {_sha(GOOD)}" in text and "DRIFT" not in text
        assert f"reported by heartbeat:  {_sha(GOOD)}" in text
        assert "rolled_back" in text and "(rolled back)" in text and "exit with code 2 twice" in text
        listing = _cli("commands", "--db", db, "--node", node_id, "--format", "json")
        assert listing.returncode == 0 and "agent_config" in listing.stdout

        unknown = _push(db, "nobody", tmp_path / "good.conf")
        assert unknown.returncode != 0 and "unknown node" in unknown.stderr
        (tmp_path / "huge.conf").write_bytes(b"x" * (3 * 1024 * 1024 + 1))
        huge = _push(db, node_id, tmp_path / "huge.conf")
        assert huge.returncode != 0 and "at most" in huge.stderr
        assert len(configs()["pushes"]) == 2, "a refused push-config was queued anyway"

        both = _cli("push-config", "--db", db, "--node", node_id, "--set", "daemon.report_interval=2s",
                    "--agent-config", str(tmp_path / "good.conf"))
        assert both.returncode != 0 and "either --agent-config" in both.stderr
        settings = _cli("push-config", "--db", db, "--node", node_id, "--set", "daemon.report_interval=2s",
                        "--set", "agent.health_check.interval=250ms")
        assert settings.returncode == 0, settings.stderr
        third = wait_until(lambda: ended(settings.stdout.strip()), timeout=60, what="the settings to end")
        assert third["state"] == "completed" and third["kind"] == "daemon_settings"
        assert third["values"] == {"daemon.report_interval": "2s", "agent.health_check.interval": "250ms"}
        wait_until(lambda: configs()["reported_daemon_settings"] == third["result"]["new_version"],
                   timeout=30, what="the node's heartbeat reporting the settings")
        text = _cli("configs", "--db", db, "--node", node_id).stdout
        assert "settings agent.health_check.interval=250ms, daemon.report_interval=2s  completed" in text
    finally:
        if daemon is not None:
            daemon.kill()
            kill_agent(work)  # the daemon leaves its Agent running on exit, by design
        manager.stop()
        shutil.rmtree(work, ignore_errors=True)
