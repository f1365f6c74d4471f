"""The Agent's config file on disk for remote config: read it, swap it, keep the last-known-good,
and run `agent.config_check` on a candidate.

Every write goes through fsutil (temp file + fsync + rename, 0600, a planted symlink is replaced,
never followed), like an update's files. State lives in <work_dir>/remote_config (0700):
  candidate            the pushed bytes while agent.config_check looks at them
  last_known_good      the content before the push ("absent" in last_known_good.json: there was none)
  last_known_good.json {"present": bool, "sha256": "sha256:<hex>"}
  journal.json         the push in flight: {"command_id", "old", "new", "phase"}, phase "started"
                       (file unchanged), "swapping" (the new file may be in place) or "ended"
                       (with the answer); a daemon killed meanwhile settles it at its next start
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from daemon_app import fsutil
from daemon_app.errors import RemoteConfigError

MAX_READ = 16 * 1024 * 1024  # an existing config file larger than this is not ours to judge
OUTPUT_EXCERPT = 2000  # characters of agent.config_check output quoted in the status message


def digest(data: bytes | None) -> str:
    """"sha256:<hex>" of a config's content; "" for no file at all."""
    return "" if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


def short(sha: str) -> str:
    """A digest as it appears in a message: "3f2a9c1d04be…", or "(none)"."""
    return sha[len("sha256:"):][:12] + "…" if sha else "(none)"


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    why: str  # "exit code 2", "timed out after 30s", "cannot run: ..." ("" when ok)
    output: str  # an excerpt of stdout+stderr


class ConfigStore:
    """The Agent's config file and its last-known-good copy."""

    def __init__(self, config_file: str, work_dir: str) -> None:
        self.config_file = config_file
        self.dir = os.path.join(work_dir, "remote_config")
        self.candidate = os.path.join(self.dir, "candidate")
        self.lkg = os.path.join(self.dir, "last_known_good")
        self.lkg_meta = os.path.join(self.dir, "last_known_good.json")
        self.journal_path = os.path.join(self.dir, "journal.json")

    def _private(self) -> None:
        try:
            fsutil.private_dir(self.dir)
        except fsutil.UnsafePathError as exc:
            raise RemoteConfigError(f"remote config: {exc}") from None

    def current(self) -> bytes | None:
        """The effective file's content, None when there is none. A symlink or a file not ours is
        refused (D6001): the daemon would otherwise read, and later replace, something it does not own."""
        return self._read(self.config_file, "agent.config_file")

    def _read(self, path: str, what: str) -> bytes | None:
        try:
            fd = fsutil.open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RemoteConfigError(f"remote config: {what}: {exc}") from None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_READ + 1)
        if len(data) > MAX_READ:
            raise RemoteConfigError(f"remote config: {what} {path} is larger than {MAX_READ} bytes")
        return data

    def keep_last_known_good(self, data: bytes | None) -> None:
        """Before a swap: the content that was effective (or that there was none), durable."""
        self._private()
        if data is not None:
            fsutil.write_atomic(self.lkg, data)
        fsutil.write_json(self.lkg_meta, {"present": data is not None, "sha256": digest(data)})

    def last_known_good(self) -> bytes | None:
        meta = fsutil.read_json(self.lkg_meta)
        if not isinstance(meta, dict) or not meta.get("present"):
            return None
        return self._read(self.lkg, "last known good")

    def journal(self) -> dict[str, Any] | None:
        try:
            data = fsutil.read_json(self.journal_path, limit=64 * 1024)
        except (OSError, ValueError) as exc:
            raise RemoteConfigError(f"remote config: {self.journal_path}: {exc}") from None
        return data if isinstance(data, dict) else None

    def write_journal(self, phase: str, **fields: Any) -> None:
        self._private()
        data = self.journal() or {}
        data.update(fields, phase=phase)
        fsutil.write_json(self.journal_path, data)

    def clear_journal(self) -> None:
        fsutil.unlink_quietly(self.journal_path)
        if os.path.isdir(self.dir):
            fsutil.fsync_dir(self.dir)

    def install(self, data: bytes | None) -> None:
        """Make `data` the Agent's config file (None: remove it), atomically and durably."""
        directory = os.path.dirname(os.path.abspath(self.config_file))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fsutil.check_dir(directory)
            if data is None:
                fsutil.unlink_quietly(self.config_file)
                fsutil.fsync_dir(directory)
            else:
                fsutil.write_atomic(self.config_file, data)
        except fsutil.UnsafePathError as exc:
            raise RemoteConfigError(f"remote config: agent.config_file: {exc}") from None
        except OSError as exc:
            raise RemoteConfigError(f"remote config: cannot write {self.config_file}: {exc}") from None

    def check(self, command: list[str], data: bytes, timeout: float) -> CheckResult:
        """Run `command + [candidate file]`; its output goes to a temp file so memory stays bounded."""
        self._private()
        fsutil.write_atomic(self.candidate, data)
        try:
            with tempfile.TemporaryFile(dir=self.dir) as out:
                try:
                    proc = subprocess.run([*command, self.candidate], stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, timeout=timeout, check=False)
                    why = "" if proc.returncode == 0 else f"exit code {proc.returncode}"
                except subprocess.TimeoutExpired:
                    why = f"timed out after {timeout:g}s"
                except OSError as exc:
                    why = f"cannot run {command[0]!r}: {exc.strerror or exc}"
                out.seek(0)
                text = out.read(OUTPUT_EXCERPT + 1).decode("utf-8", errors="replace")
        finally:
            fsutil.unlink_quietly(self.candidate)
        if len(text) > OUTPUT_EXCERPT:
            text = text[:OUTPUT_EXCERPT] + "…"
        return CheckResult(not why, why, text.strip())
