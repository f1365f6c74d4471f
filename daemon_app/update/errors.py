"""One exception per way an update can fail, each carrying the D-code of seed §7.1.

Like python-tuf's `exceptions.py`: the class says what went wrong, the base class gives the code.
D4001 download, D4002 verification, D4003 the host cannot take or keep the update, D4004 rollback.
"""

from __future__ import annotations

import errno

from daemon_app.errors import (
    DaemonError,
    UpdateApplyError,
    UpdateDownloadError,
    UpdateRollbackError,
    UpdateVerifyError,
)

# --- D4001: getting the bytes -------------------------------------------------------------------


class DownloadFailedError(UpdateDownloadError):
    """The server refused, answered non-200, or the connection broke (refused, reset, TLS)."""


class DownloadTooLargeError(UpdateDownloadError):
    """The server sent (or announced) more bytes than the signed manifest's size."""


class SlowRetrievalError(UpdateDownloadError):
    """No byte within `update.read_timeout` (stalled), or the whole download overran
    `update.download_deadline` (an endless slow drip)."""


class SourceFileError(UpdateDownloadError):
    """A local package (`--file`) cannot be read."""


# --- D4002: trusting the bytes ------------------------------------------------------------------


class TrustedKeysError(UpdateVerifyError):
    """`update.public_key_file` is missing, empty, or holds a key type we do not accept."""


class MalformedSignatureError(UpdateVerifyError):
    """manifest.json.sig is empty or not base64."""


class BadSignatureError(UpdateVerifyError):
    """No trusted key verifies the signature over manifest.json (wrong key, altered manifest)."""


class MalformedManifestError(UpdateVerifyError):
    """manifest.json is signed but is not the expected JSON object (fields, types, version syntax)."""


class ExpiredManifestError(UpdateVerifyError):
    """The manifest's `expires` is in the past: an old, possibly revoked release."""


class ComponentMismatchError(UpdateVerifyError):
    """The manifest was signed for another component (an agent release offered as the daemon)."""


class LengthMismatchError(UpdateVerifyError):
    """The package's size differs from the manifest's."""


class HashMismatchError(UpdateVerifyError):
    """The package's SHA-256 differs from the manifest's."""


class VersionRollbackError(UpdateVerifyError):
    """The version is lower than the highest ever installed (a replayed old release)."""


# --- D4003: the host cannot take or keep the update ---------------------------------------------


class UpdateVetoedError(UpdateApplyError):
    """A `pre_update` plugin returned a reason to refuse."""


class InsufficientSpaceError(UpdateApplyError):
    """A filesystem the update writes to would have less than `update.min_free_bytes` left."""


class UpdateInProgressError(UpdateApplyError):
    """Another update holds the lock (in this process or another one)."""


class InstallError(UpdateApplyError):
    """Backing up or swapping the file failed; the installed file is unchanged."""


class HealthCheckError(UpdateApplyError):
    """The new version did not prove healthy in time; the previous one was restored."""


class UnsafePathRefusedError(UpdateApplyError):
    """A directory or file the update writes (work_dir/update, download_dir, backup_dir, the journal,
    the lock) is a symlink, not the daemon's, or group/world-writable: nothing is written there."""


class SelfUpdateUnavailableError(UpdateApplyError):
    """The daemon cannot replace itself (not running from a pyz and `update.daemon_path` empty)."""


# --- D4004: going back --------------------------------------------------------------------------


class NoBackupError(UpdateRollbackError):
    """`rollback` was asked for but there is no backup of that component."""


class RollbackFailedError(UpdateRollbackError):
    """Restoring the previous version failed: the operator must act."""


def as_daemon_error(exc: BaseException, path: str | None = None) -> DaemonError:
    """A file operation that failed where no step wrapped it (a full disk under the journal or the
    download): D4003 with the path and the reason, like every other way an update fails."""
    if isinstance(exc, DaemonError):
        return exc
    filename = path or (exc.filename if isinstance(exc, OSError) else None)
    where = f"{filename}: " if filename else ""
    why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(f"disk: {where}{why}; nothing was installed")
    return InstallError(f"update: {where}{why}")
