"""An update on a disk that fills up, and on paths spread over filesystems (real small tmpfs mounts,
skipped where the test cannot mount): every failure is D4003 with the path, leaves one complete
version installed and the journal settled; a backup_dir on another filesystem works both ways."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from daemon_app import config as config_mod
from daemon_app.update.flow import Updater
from daemon_app.update.state import Journal, UpdateState
from tests.helpers import SmallFS, base_config, mount_small_fs
from tests.update_support import ProcessSupervisor, agent_script, snapshot

MIB = 1 << 20


@pytest.fixture
def small_fs() -> Iterator[SmallFS]:
    yield from mount_small_fs("4m")


def spread_config(env, **paths) -> config_mod.Config:
    """env's config with some of its paths moved (work_dir, download_dir, backup_dir)."""
    work = paths.pop("work_dir", env.work)
    raw = base_config(work, agent={"binary_path": str(env.work / "bin" / "agent")},
                      update={"min_free_bytes": 0, "daemon_path": str(env.work / "bin" / "daemon.pyz"),
                              "public_key_file": str(env.work / "keys" / "update.pub"),
                              "download_dir": str(paths.get("download_dir", env.work / "downloads")),
                              "backup_dir": str(paths.get("backup_dir", env.work / "backups"))})
    return config_mod.validate(raw)


def test_download_dir_filling_up_mid_download_is_d4003_and_changes_nothing(env, small_fs) -> None:
    cfg = spread_config(env, download_dir=small_fs.path / "downloads")
    before = snapshot(cfg)
    package = os.urandom(2 * MIB)  # fits when checked; the disk fills while it is written

    def progress(state, percent=0.0, message="", result=None):
        if state == "downloading" and percent > 0 and not small_fs.ballast.exists():
            small_fs.fill()

    result = Updater(cfg).run(env.request(env.release("2.0.0", package)), progress)
    assert not result.success
    assert result.error.startswith(f"D4003 disk: {small_fs.path / 'downloads'}/pkg-"), result.error
    assert "No space left on device; nothing was installed" in result.error
    small_fs.free()
    assert snapshot(cfg) == before  # agent, state, no download left, no journal


@pytest.mark.timeout(60)
def test_journal_that_cannot_record_the_swap_puts_the_old_agent_back(env, small_fs) -> None:
    cfg = spread_config(env, work_dir=small_fs.path / "work")
    agent = env.work / "bin" / "agent"
    agent.write_bytes(agent_script("1.0.0"))
    os.chmod(agent, 0o755)
    old = agent.read_bytes()
    sup = ProcessSupervisor(str(agent), env.work)
    sup.start_agent()
    try:
        assert sup.wait_for_heartbeat("1.0.0", 10)

        def progress(state, percent=0.0, message="", result=None):
            if message.startswith("stopping the Agent"):  # right before the swap
                small_fs.fill()

        result = Updater(cfg, supervisor=sup).run(env.request(env.release("2.0.0", agent_script("2.0.0"))),
                                                   progress)
        assert result.error.startswith("D4003 install: cannot record the swap in "), result.error
        assert f"{agent} restored" in result.error
        assert agent.read_bytes() == old
        assert sup.wait_for_heartbeat("1.0.0", 10)  # the old Agent runs again
        small_fs.free()
        assert Journal(cfg.daemon.work_dir).read() is None
        assert Updater(cfg, supervisor=sup).recover() is None  # nothing left to settle
        assert UpdateState(cfg.daemon.work_dir).floor("agent") is None
    finally:
        sup.stop_agent()


def test_backup_dir_on_another_filesystem_backs_up_and_rolls_back(env, small_fs) -> None:
    cfg = spread_config(env, backup_dir=small_fs.path / "backups")
    agent = env.work / "bin" / "agent"
    old = agent.read_bytes()
    result = Updater(cfg).run(env.request(env.release("2.0.0")), env.progress)
    assert result.success, result.error
    assert os.stat(small_fs.path / "backups").st_dev != os.stat(agent).st_dev
    back = Updater(cfg).rollback("agent", env.progress)
    assert back.success, back.error
    assert agent.read_bytes() == old and os.stat(agent).st_mode & 0o777 == 0o755


def test_backup_dir_on_a_full_filesystem_is_refused_before_the_download(env, small_fs) -> None:
    cfg = spread_config(env, backup_dir=small_fs.path / "backups")
    small_fs.fill()
    before = snapshot(cfg)
    result = Updater(cfg).run(env.request(env.release("2.0.0")), env.progress)
    assert result.error.startswith(f"D4003 disk: {small_fs.path}"), result.error
    assert "downloading" not in [s[0] for s in env.states]
    assert snapshot(cfg) == before
