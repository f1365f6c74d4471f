"""Backups and the swap: copy next to the target, fsync, chmod like the old file, os.replace.

Backups are named `<component>_<unix-ns>_<version>.bak` in `update.backup_dir`, so the newest is
found by name and the version travels with the file; only `update.max_backups` per component stay.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

from daemon_app import fsutil
from daemon_app.update.state import private_dir

TEMP_MARK = ".update-"


@dataclass(frozen=True)
class Backup:
    path: str
    component: str
    stamp: int
    version: str


def backup(target: str, backup_dir: str, component: str, version: str | None) -> str | None:
    """Copy the installed file into backup_dir (durably); None when nothing is installed yet."""
    if not os.path.exists(target):
        return None
    private_dir(backup_dir, "update.backup_dir")
    # 0600: a restore takes the mode of the file it replaces (swap), not the backup's.
    tmp = fsutil.copy_durable(target, backup_dir, f".{component}.", 0o600)
    path = os.path.join(backup_dir, f"{component}_{time.time_ns()}_{version or 'unknown'}.bak")
    fsutil.replace_durable(tmp, path)
    return path


def list_backups(backup_dir: str, component: str) -> list[Backup]:
    """This component's backups, newest first."""
    try:
        entries = list(os.scandir(backup_dir))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        name = entry.name
        # Only files the daemon wrote: a planted symlink is never restored over the target.
        if not (name.startswith(component + "_") and name.endswith(".bak")
                and entry.is_file(follow_symlinks=False)):
            continue
        _, stamp, version = name[:-4].split("_", 2) if name.count("_") >= 2 else ("", "", "")
        if stamp.isdigit():
            found.append(Backup(os.path.join(backup_dir, name), component, int(stamp), version))
    return sorted(found, key=lambda b: b.stamp, reverse=True)


def prune_backups(backup_dir: str, component: str, keep: int) -> list[str]:
    removed = []
    for old in list_backups(backup_dir, component)[keep:]:
        fsutil.unlink_quietly(old.path)
        removed.append(old.path)
    return removed


def temp_path_prefix(target: str) -> str:
    return f".{os.path.basename(target)}{TEMP_MARK}"


def swap(src: str, target: str, *, default_mode: int = 0o755) -> None:
    """Atomically put a copy of `src` at `target`: a reader sees the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(target))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = default_mode
    tmp = fsutil.copy_durable(src, directory, temp_path_prefix(target), mode)
    try:
        fsutil.replace_durable(tmp, target)
    except BaseException:
        fsutil.unlink_quietly(tmp)
        raise


def clean_temp_files(target: str) -> list[str]:
    """Temp files a killed swap left next to the target."""
    directory = os.path.dirname(os.path.abspath(target))
    prefix = temp_path_prefix(target)
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            fsutil.unlink_quietly(os.path.join(directory, name))
            removed.append(name)
    return removed
