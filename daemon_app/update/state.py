"""What survives restarts: the version floor per component (state.json) and the in-flight journal.

<work_dir>/update/state.json   {"components": {"agent": {"floor", "installed", "history": [...]}}}
<work_dir>/update/journal.json the phase of the update in progress (downloaded, backed_up,
                               swapped, verifying), so `Updater.recover()` can finish or undo it
                               after a kill -9. Both are written with temp file + fsync + rename.
"""

from __future__ import annotations

import os
import time
from typing import Any

from daemon_app import fsutil
from daemon_app.update.errors import InstallError, UnsafePathRefusedError
from daemon_app.update.versions import Version

HISTORY_LIMIT = 50
PHASES = ("downloaded", "backed_up", "swapped", "verifying")


def update_dir(work_dir: str) -> str:
    """<work_dir>/update, 0700, checked to be the daemon's own (and work_dir too)."""
    path = os.path.join(work_dir, "update")
    private_dir(path, "daemon.work_dir")
    try:
        fsutil.check_dir(work_dir)
    except fsutil.UnsafePathError as exc:
        raise UnsafePathRefusedError(f"daemon.work_dir: {exc}") from None
    return path


def read_json(path: str) -> Any:
    """fsutil.read_json with the update's D-codes: a planted symlink or a file not ours, or a file
    that is not JSON (it is written whole, so someone else wrote it), is D4003 naming the path."""
    try:
        return fsutil.read_json(path)
    except fsutil.UnsafePathError as exc:
        raise UnsafePathRefusedError(f"update state: {exc}") from None
    except ValueError as exc:
        raise InstallError(f"update state: {path} is not valid JSON ({str(exc)[:100]}); move it "
                           "aside to go on") from None


def private_dir(path: str, setting: str) -> None:
    """fsutil.private_dir with the update's D-code: D4003 naming the setting and the path."""
    try:
        fsutil.private_dir(path)
    except fsutil.UnsafePathError as exc:
        raise UnsafePathRefusedError(f"{setting}: {exc}") from None


class UpdateState:
    """The floor (highest version ever installed) and the installed version, per component."""

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(update_dir(work_dir), "state.json")

    def _load(self) -> dict[str, Any]:
        data = read_json(self.path)
        if isinstance(data, dict) and isinstance(data.get("components"), dict):
            return data
        return {"components": {}}

    def component(self, name: str) -> dict[str, Any]:
        return dict(self._load()["components"].get(name, {}))

    def floor(self, name: str) -> str | None:
        return self.component(name).get("floor")

    def installed(self, name: str) -> str | None:
        return self.component(name).get("installed")

    def record(self, name: str, action: str, version: str, *, raise_floor: bool, **extra: Any) -> None:
        """Persist an install or rollback; the floor only ever goes up, and only when asked."""
        data = self._load()
        entry = data["components"].setdefault(name, {})
        entry["installed"] = version
        floor = entry.get("floor")
        if raise_floor and (floor is None or Version(version) > Version(floor)):
            entry["floor"] = version
        history = entry.setdefault("history", [])
        history.append({"action": action, "version": version, "time": time.time(), **extra})
        del history[:-HISTORY_LIMIT]
        fsutil.write_json(self.path, data)


class Journal:
    """The update in flight. One at a time (the update lock guarantees it)."""

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(update_dir(work_dir), "journal.json")

    def read(self) -> dict[str, Any] | None:
        data = read_json(self.path)
        return data if isinstance(data, dict) else None

    def write(self, phase: str, **fields: Any) -> dict[str, Any]:
        assert phase in PHASES, phase
        data = self.read() or {}
        data.update(fields, phase=phase, phase_time=time.time())
        fsutil.write_json(self.path, data)
        return data

    def clear(self) -> None:
        fsutil.unlink_quietly(self.path)
        fsutil.fsync_dir(os.path.dirname(self.path))
