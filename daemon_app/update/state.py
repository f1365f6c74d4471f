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

from daemon_app.update import fsutil
from daemon_app.update.versions import Version

HISTORY_LIMIT = 50
PHASES = ("downloaded", "backed_up", "swapped", "verifying")


def update_dir(work_dir: str) -> str:
    path = os.path.join(work_dir, "update")
    fsutil.make_private_dir(path)
    return path


class UpdateState:
    """The floor (highest version ever installed) and the installed version, per component."""

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(update_dir(work_dir), "state.json")

    def _load(self) -> dict[str, Any]:
        data = fsutil.read_json(self.path)
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
        data = fsutil.read_json(self.path)
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
