"""A filesystem that refuses a write in the middle of an update: the backup, the package landing in
download_dir, an operator rollback's restore. `daemon update` runs as a real process whose file-size
limit (RLIMIT_FSIZE) is set below the file being written, so the kernel fails that write with EFBIG,
exactly where a full disk (ENOSPC) or a quota would fail it. Each ends in its D-code with one
complete version installed and nothing left behind."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

from daemon_app.update import install
from daemon_app.update.state import UpdateState
from tests.helpers import ROOT, daemon_cmd, write_config
from tests.update_support import base_config, snapshot

# Well above what the process writes otherwise (logs, journal, and under `make coverage` its data
# file), well below the files that must fail.
LIMIT = 4 * 1024 * 1024


def cli_with_file_limit(env, *args: str, limit: int = LIMIT) -> subprocess.CompletedProcess[str]:
    """`daemon -c CFG ARGS` in direct mode (no daemon runs), unable to write a file past `limit` bytes.
    Python ignores SIGXFSZ, so an oversized write fails with EFBIG instead of killing the process."""
    raw = base_config(env.work, agent={"binary_path": str(env.work / "bin" / "agent")},
                      update={"min_free_bytes": 0})
    path = write_config(env.work / "daemon.yaml", raw)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run(daemon_cmd("-c", path, *args), env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                          preexec_fn=limit_file_size)


def leftovers(env) -> list[str]:
    """Files an interrupted write could leave: temp files next to the Agent and in backup_dir."""
    found = [n for n in os.listdir(env.work / "bin") if n != "agent"]
    backup_dir = Path(env.cfg.update.backup_dir)
    if backup_dir.exists():
        found += [n for n in os.listdir(backup_dir) if not n.endswith(".bak")]
    return found


@pytest.mark.timeout(60)
def test_a_backup_the_disk_refuses_fails_with_d4003_and_leaves_the_old_version(env) -> None:
    agent = env.work / "bin" / "agent"
    agent.write_bytes(b"#!/bin/sh\n# agent 1.0.0, larger than the limit\n" + b"#" * (3 * LIMIT))
    rel = env.release("2.0.0", b"#!/bin/sh\necho agent 2.0.0\n")  # the download itself fits
    before = snapshot(env.cfg)
    proc = cli_with_file_limit(env, "update", "--component", "agent", "--file", str(rel / "package"),
                               "--manifest", str(rel))
    assert proc.returncode == 1, proc.stderr
    assert "D4003 install: cannot back up" in proc.stderr and "File too large" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(env.cfg) == before  # same Agent bytes, same floor, no journal, empty download_dir
    assert leftovers(env) == []
    assert install.list_backups(env.cfg.update.backup_dir, "agent") == []


@pytest.mark.timeout(60)
def test_a_package_the_download_dir_refuses_fails_with_its_path_and_changes_nothing(env) -> None:
    rel = env.release("2.0.0", b"#!/bin/sh\n# agent 2.0.0\n" + b"#" * (3 * LIMIT))
    before = snapshot(env.cfg)
    proc = cli_with_file_limit(env, "update", "--component", "agent", "--file", str(rel / "package"),
                               "--manifest", str(rel))
    assert proc.returncode == 1, proc.stderr
    # Every file error of an update is D4003 with the path it could not write (daemon_app/fsutil.py).
    assert "D4003 update: " in proc.stderr and "/downloads/" in proc.stderr, proc.stderr
    assert "File too large" in proc.stderr, proc.stderr
    assert "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(env.cfg) == before
    assert leftovers(env) == []


@pytest.mark.timeout(60)
def test_a_rollback_whose_restore_the_disk_refuses_fails_with_d4004_and_keeps_what_runs(env) -> None:
    agent = env.work / "bin" / "agent"
    agent.write_bytes(b"#!/bin/sh\n# agent 1.0.0, larger than the limit\n" + b"#" * (3 * LIMIT))
    assert env.updater().run(env.request(env.release("2.0.0", b"#!/bin/sh\necho 2.0.0\n"))).success
    current = agent.read_bytes()
    (backup,) = install.list_backups(env.cfg.update.backup_dir, "agent")
    proc = cli_with_file_limit(env, "rollback", "--component", "agent")
    assert proc.returncode == 1, proc.stderr
    assert "D4004 rollback: cannot restore" in proc.stderr and "File too large" in proc.stderr, proc.stderr
    assert agent.read_bytes() == current
    assert leftovers(env) == []
    # The backup is still there for a second try once the disk has room; the state did not move.
    assert install.list_backups(env.cfg.update.backup_dir, "agent") == [backup]
    state = UpdateState(str(env.work))
    assert (state.installed("agent"), state.floor("agent")) == ("2.0.0", "2.0.0")
