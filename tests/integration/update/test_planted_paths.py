"""Planted paths under the update's state: a symlinked, foreign or group/world-writable download_dir,
backup_dir, update dir, journal, state file or lock is refused with D4003 naming the path, and
nothing outside is touched (the planted target keeps its mode and content)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon_app.update.errors import UnsafePathRefusedError
from daemon_app.update.flow import Updater
from daemon_app.update.selfupdate import read_marker
from tests.update_support import snapshot

NOBODY = 65534


def elsewhere(tmp_path: Path) -> Path:
    """A directory the daemon must never write into, with a file in it."""
    d = tmp_path / "elsewhere"
    d.mkdir(exist_ok=True)
    (d / "precious").write_text("keep me")
    os.chmod(d, 0o755)
    return d


def contents(d: Path) -> dict:
    return {"mode": os.stat(d).st_mode & 0o7777,
            "files": {p.name: p.read_bytes() for p in sorted(d.iterdir())}}


@pytest.mark.parametrize("setting", ["download_dir", "backup_dir"])
def test_update_dir_that_is_a_symlink_is_refused_and_its_target_untouched(env, tmp_path, setting) -> None:
    target = elsewhere(tmp_path)
    link = tmp_path / f"{setting}-link"
    link.symlink_to(target)
    cfg = env.reconfigure(**{setting: str(link)})
    before, outside = snapshot(cfg), contents(target)
    result = env.updater().run(env.request(env.release("2.0.0")), env.progress)
    assert not result.success
    assert result.error.startswith(f"D4003 update.{setting}: {link}: is a symlink (to {target}); "
                                   "refusing to follow it"), result.error
    assert contents(target) == outside
    assert snapshot(cfg) == before


@pytest.mark.parametrize("setting", ["download_dir", "backup_dir"])
@pytest.mark.parametrize("problem", ["group_writable", "world_writable", "foreign_owner"])
def test_update_dir_that_others_can_write_is_refused(env, tmp_path, setting, problem) -> None:
    d = tmp_path / f"{setting}-{problem}"
    d.mkdir()
    if problem == "foreign_owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to chown")
        os.chown(d, NOBODY, NOBODY)
        os.chmod(d, 0o700)
    else:
        os.chmod(d, 0o770 if problem == "group_writable" else 0o757)
    mode = os.stat(d).st_mode & 0o7777
    cfg = env.reconfigure(**{setting: str(d)})
    before = snapshot(cfg)
    result = env.updater().run(env.request(env.release("2.0.0")), env.progress)
    assert result.error.startswith(f"D4003 update.{setting}: {d}: "), result.error
    assert ("owned by uid 65534" if problem == "foreign_owner" else "writable by group or others") \
        in result.error
    assert os.stat(d).st_mode & 0o7777 == mode and os.listdir(d) == []  # not "fixed", not used
    assert snapshot(cfg) == before


def test_downloads_and_backups_are_private(env) -> None:
    for name in ("downloads", "backups"):
        (env.work / name).mkdir(mode=0o755)
        os.chmod(env.work / name, 0o755)  # ours and only readable: tightened, not refused
    result = env.updater().run(env.request(env.release("2.0.0")), env.progress)
    assert result.success, result.error
    assert os.stat(env.work / "downloads").st_mode & 0o777 == 0o700
    assert os.stat(env.work / "backups").st_mode & 0o777 == 0o700
    backups = list((env.work / "backups").iterdir())
    assert backups and all(os.stat(b).st_mode & 0o777 == 0o600 for b in backups)
    assert env.updater().rollback("agent", env.progress).success
    assert os.stat(env.work / "bin" / "agent").st_mode & 0o777 == 0o755  # restored with its own mode


@pytest.mark.parametrize("name", ["journal.json", "state.json", "update.lock", "pending.json"])
def test_update_state_file_planted_as_symlink_is_refused_and_its_target_untouched(env, tmp_path,
                                                                                  name) -> None:
    target = elsewhere(tmp_path)
    planted = env.work / "update" / name
    planted.unlink(missing_ok=True)
    planted.symlink_to(target / "precious")
    outside = contents(target)
    agent = (env.work / "bin" / "agent").read_bytes()
    try:
        result = env.updater().run(env.request(env.release("2.0.0")), env.progress)
        error = result.error
    except UnsafePathRefusedError as exc:  # the state file is read when the Updater is made
        error = str(exc)
    if name == "pending.json":
        # Only a daemon self-update reads the marker; an Agent update neither reads nor writes it.
        assert not error
        with pytest.raises(UnsafePathRefusedError, match=f"D4003 update state: {planted}: is a symlink"):
            read_marker(str(env.work))
    else:
        assert error.startswith("D4003 update"), error
        assert f"{planted}: is a symlink (to {target / 'precious'}); refusing to follow it" in error
        assert (env.work / "bin" / "agent").read_bytes() == agent
    assert contents(target) == outside


def test_work_dir_update_planted_as_symlink_is_refused(env, tmp_path) -> None:
    import shutil

    target = elsewhere(tmp_path)
    shutil.rmtree(env.work / "update")
    (env.work / "update").symlink_to(target)
    outside = contents(target)
    with pytest.raises(UnsafePathRefusedError, match=r"D4003 daemon.work_dir: .*/update: is a symlink"):
        Updater(env.cfg)
    assert contents(target) == outside


def test_a_backup_planted_as_symlink_is_never_restored(env, tmp_path) -> None:
    """rollback restores the newest backup: a symlink named like one is not a backup."""
    target = elsewhere(tmp_path)
    backups = env.work / "backups"
    backups.mkdir(mode=0o700)
    (backups / "agent_99999999999999999999_0.1.0.bak").symlink_to(target / "precious")
    agent = (env.work / "bin" / "agent").read_bytes()
    result = env.updater().rollback("agent", env.progress)
    assert result.error.startswith("D4004 rollback: no backup of agent"), result.error
    assert (env.work / "bin" / "agent").read_bytes() == agent


@pytest.mark.timeout(30)
def test_a_fifo_planted_as_the_journal_is_refused_without_hanging(env) -> None:
    journal = env.work / "update" / "journal.json"
    os.mkfifo(journal)
    result = env.updater().run(env.request(env.release("2.0.0")), env.progress)
    assert result.error.startswith(f"D4003 update state: {journal}: is not a regular file"), result.error


def test_a_download_dir_set_to_a_system_directory_keeps_its_mode_and_files(env, tmp_path) -> None:
    """update.download_dir: /var/lib by mistake: used (files 0600), never chmod'ed to 0700."""
    system = elsewhere(tmp_path)
    outside = contents(system)
    env.reconfigure(download_dir=str(system))
    result = env.updater().run(env.request(env.release("2.0.0")), env.progress)
    assert result.success, result.error
    assert contents(system) == outside
