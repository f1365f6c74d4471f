"""The one way the daemon writes its files: crash-safe, and only into paths that are its own.

Crash-safe: temp file in the same directory, fsync, `os.replace`, fsync the directory; readers and a
restart after kill -9 see the old content or the new one, never half.

Its own (DESIGN §9a): a directory or file the daemon creates or writes under its state paths is
opened without following a symlink in its last component (O_NOFOLLOW, O_DIRECTORY), must be owned
by the daemon's user and must not be writable by group or others; anything else raises
`UnsafePathError` naming the path, and nothing is written. Symlinks higher up (`/var/run` -> `/run`)
are the system's layout and are followed. Once a directory passes, only its owner (or root) can
plant anything inside it, so the files in it are safe from others between check and use.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from typing import Any

CHUNK = 1024 * 1024
# O_NONBLOCK: a FIFO planted where a file is expected must not hang open(); no effect on files.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafePathError(OSError):
    """A path the daemon would write is a symlink, not ours, or group/world-writable."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, why, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _check_owner(st: os.stat_result, path: str) -> None:
    if st.st_uid != os.geteuid():
        raise UnsafePathError(path, f"owned by uid {st.st_uid}, not by the daemon's user "
                                    f"(uid {os.geteuid()}); refusing to use it")
    if st.st_mode & 0o022:
        raise UnsafePathError(path, f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                                    "refusing to use it")


def _refuse_link(path: str, exc: OSError) -> UnsafePathError | OSError:
    """ELOOP from O_NOFOLLOW (ENOTDIR from O_DIRECTORY): say what is there instead of 'too many links'."""
    try:
        st = os.lstat(path)
    except OSError:
        return exc
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return UnsafePathError(path, f"is a symlink (to {target}); refusing to follow it")
    if exc.errno == errno.ENOTDIR:
        return UnsafePathError(path, "exists and is not a directory")
    return exc


def _open_dir(path: str) -> tuple[int, os.stat_result]:
    """An fd on `path` if it is a real directory (not a symlink), ours, not group/world-writable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        raise _refuse_link(path, exc) from None
    try:
        st = os.fstat(fd)
        _check_owner(st, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_dir(path: str) -> os.stat_result:
    """`path` is a real directory (not a symlink), ours, not group/world-writable."""
    fd, st = _open_dir(path)
    os.close(fd)
    return st


def private_dir(path: str, mode: int = 0o700, *, tighten: bool = True) -> None:
    """Create `path` (missing parents too) with `mode`, or check the existing one (`check_dir`).
    With `tighten`, an existing, empty directory of ours with wider permissions is narrowed to
    `mode`. One that holds anything keeps its mode: a download_dir set to /var/lib by mistake must
    not take /var/lib to 0700 (what the daemon puts there is 0600 itself)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    fd, st = _open_dir(path)
    try:
        if tighten and stat.S_IMODE(st.st_mode) != mode and not os.listdir(fd):
            os.fchmod(fd, mode)  # the fd, not the name: it is the directory we just checked
    finally:
        os.close(fd)


def open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """os.open that refuses a symlink in the last component and a file that is not a regular file
    of ours, not group/world-writable. Returns the fd (close it)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        raise _refuse_link(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(path, "is not a regular file; refusing to use it")
        _check_owner(st, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_file(path: str) -> None:
    """A file something else opens by name (SQLite): if it exists it must be a regular file of ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _refuse_link(path, OSError(errno.ELOOP, "symlink", path))
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(path, "is not a regular file; refusing to use it")
    _check_owner(st, path)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: str) -> None:
    """Make a rename in `path` durable: without this a power cut can undo os.replace."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Readers (and a restart after kill -9) see the old content or the new one, never half.
    The temp file is new (O_EXCL) and the rename replaces a planted symlink itself, never its target."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def write_json(path: str, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str, limit: int = 4 * 1024 * 1024) -> Any:
    """The parsed file, or None when it does not exist. A symlink or a file not ours is refused
    (UnsafePathError); more than `limit` bytes is ValueError."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return json.loads(raw.decode("utf-8"))


def copy_durable(src: str, dst_dir: str, prefix: str, mode: int) -> str:
    """Copy `src` to a new private temp file in `dst_dir`, fsynced; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=dst_dir)
    try:
        os.fchmod(fd, mode)
        with open(src, "rb") as fin:
            while chunk := fin.read(CHUNK):
                write_all(fd, chunk)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def replace_durable(src: str, dst: str) -> None:
    """Rename within one directory and make it durable."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
