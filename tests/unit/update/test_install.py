"""Backups, pruning and the atomic swap."""

from __future__ import annotations

import os

from daemon_app.update import install


def test_swap_replaces_atomically_and_keeps_the_old_mode(tmp_path) -> None:
    target, new = tmp_path / "agent", tmp_path / "new"
    target.write_bytes(b"old")
    os.chmod(target, 0o750)
    new.write_bytes(b"new")
    os.chmod(new, 0o600)
    inode = os.stat(target).st_ino
    install.swap(str(new), str(target))
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o777 == 0o750
    assert os.stat(target).st_ino != inode  # a rename, not an in-place write
    assert sorted(os.listdir(tmp_path)) == ["agent", "new"]


def test_first_install_is_executable(tmp_path) -> None:
    new = tmp_path / "new"
    new.write_bytes(b"new")
    install.swap(str(new), str(tmp_path / "agent"))
    assert os.stat(tmp_path / "agent").st_mode & 0o777 == 0o755


def test_backups_newest_first_and_pruned(tmp_path) -> None:
    target = tmp_path / "agent"
    for version in ("1.0.0", "1.1.0-rc.1", "1.2.0"):
        target.write_bytes(version.encode())
        install.backup(str(target), str(tmp_path / "b"), "agent", version)
    assert [b.version for b in install.list_backups(str(tmp_path / "b"), "agent")] == ["1.2.0", "1.1.0-rc.1",
                                                                                      "1.0.0"]
    install.prune_backups(str(tmp_path / "b"), "agent", 1)
    (only,) = install.list_backups(str(tmp_path / "b"), "agent")
    assert open(only.path, "rb").read() == b"1.2.0"
    assert install.list_backups(str(tmp_path / "b"), "daemon") == []


def test_nothing_installed_means_no_backup(tmp_path) -> None:
    assert install.backup(str(tmp_path / "missing"), str(tmp_path / "b"), "agent", None) is None


def test_leftover_temp_files_are_cleaned(tmp_path) -> None:
    target = tmp_path / "agent"
    target.write_bytes(b"x")
    (tmp_path / ".agent.update-abc.tmp").write_bytes(b"half")
    (tmp_path / "other.tmp").write_bytes(b"keep")
    assert install.clean_temp_files(str(target)) == [".agent.update-abc.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["agent", "other.tmp"]
