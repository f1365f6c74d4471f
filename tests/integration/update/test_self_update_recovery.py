"""Self-update recovery reads the disk, not the journal alone: the journal and marker a kill -9 left
behind, settled against the pyz actually at the path, with a real watcher process where there is one.
(The whole sequence with built pyz files and real kills: tests/e2e/test_self_update_crash_sweep.py.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from daemon_app import fsutil
from daemon_app.update.selfupdate import (
    PENDING,
    DaemonTarget,
    commit_pending_update,
    marker_path,
    process_start,
    read_marker,
    start_watcher,
)
from daemon_app.update.state import Journal, UpdateState
from tests.helpers import wait_until

OLD_PYZ, NEW_PYZ = b"old daemon pyz\n" * 100, b"new daemon pyz\n" * 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat_of(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError):
        return None


@pytest.fixture
def interrupted(env):
    """daemon.pyz 1.0.0 at update.daemon_path, backed up, and the journal and marker of an update to
    2.0.0 as the old daemon wrote them just before the swap; the marker's pid is this process (alive,
    so a watcher waits rather than rolling back)."""
    pyz = Path(env.cfg.update.daemon_path)
    pyz.write_bytes(OLD_PYZ)
    os.chmod(pyz, 0o755)
    backup_dir = Path(env.cfg.update.backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    backup = backup_dir / "daemon_1_1.0.0.bak"
    shutil.copy(pyz, backup)
    work = str(env.work)
    Journal(work).write("downloaded", component="daemon", version="2.0.0", old_version="1.0.0",
                        sha256=sha(NEW_PYZ), package=str(env.work / "gone"), target=str(pyz), backup=None,
                        pid=os.getpid(), request_id="")
    Journal(work).write("backed_up", backup=str(backup))
    fsutil.write_json(marker_path(work), {
        "status": PENDING, "target": str(pyz), "backup": str(backup), "new_version": "2.0.0",
        "old_version": "1.0.0", "sha256": sha(NEW_PYZ), "old_sha256": sha(OLD_PYZ),
        "deadline": time.time() + 60, "deadline_s": 60, "pid": os.getpid(),
        "pid_start": process_start(os.getpid()), "python": sys.executable, "args": ["run"],
        "systemd": False, "systemd_unit": "", "mode": 0o755})
    return env, pyz


def with_watcher(work: str) -> int:
    marker = read_marker(work)
    marker["watcher_pid"] = start_watcher(work)
    fsutil.write_json(marker_path(work), marker)
    return marker["watcher_pid"]


@pytest.mark.timeout(60)
def test_a_marker_whose_swap_never_happened_is_dropped_and_its_watcher_leaves_the_file_alone(interrupted):
    env, pyz = interrupted
    work = str(env.work)
    watcher = with_watcher(work)

    result = env.updater().recover(env.progress)

    assert result is not None and not result.success and "was not changed" in result.error
    assert read_marker(work) is None and Journal(work).read() is None
    wait_until(lambda: (stat_of(watcher) or ("Z",))[0] == "Z", timeout=10, what="the watcher to leave")
    os.waitpid(watcher, 0)
    assert pyz.read_bytes() == OLD_PYZ
    assert "restored" not in (env.work / "update" / "watcher.log").read_text()
    assert UpdateState(work).installed("daemon") is None


@pytest.mark.timeout(60)
def test_a_kill_in_the_swap_window_is_recorded_as_the_swap_it_was_and_watched_to_the_commit(interrupted):
    """The new pyz is at the path but the journal still says backed_up, and no watcher runs: recovery
    (in the new daemon) records the swap, adopts the marker, starts a watcher and looks after it."""
    env, pyz = interrupted
    work = str(env.work)
    pyz.write_bytes(NEW_PYZ)

    target = DaemonTarget(env.cfg, UpdateState(work), restart=lambda: None)
    assert env.updater(targets={"daemon": target}).recover(env.progress) is None  # still deciding
    assert Journal(work).read()["phase"] == "swapped"
    assert env.states[-1][0] == "watching"
    marker = read_marker(work)
    watcher = int(marker["watcher_pid"])
    assert marker["status"] == PENDING and stat_of(watcher)[1] == os.getpid()

    assert commit_pending_update(work)["new_version"] == "2.0.0"
    assert UpdateState(work).floor("daemon") == "2.0.0" and read_marker(work) is None
    # The watcher sees the commit and exits; this process (its parent) reaps it: no zombie.
    wait_until(lambda: stat_of(watcher) is None, timeout=10, what="the watcher exited and reaped")
    assert pyz.read_bytes() == NEW_PYZ


@pytest.mark.parametrize("status", ["pending", "committed", "rolled_back"])
def test_a_marker_with_no_update_in_flight_is_removed_at_start(env, status):
    work = str(env.work)
    fsutil.write_json(marker_path(work), {"status": status, "new_version": "2.0.0"})
    assert env.updater().recover() is None
    assert read_marker(work) is None
