"""Crash-safe file operations: atomic JSON writes and durable copies (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

CHUNK = 1024 * 1024


def fsync_dir(path: str) -> None:
    """Make a rename in `path` durable: without this a power cut can undo os.replace."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Readers (and a restart after kill -9) see the old content or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
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


def read_json(path: str) -> Any:
    """The parsed file, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def copy_durable(src: str, dst_dir: str, prefix: str, mode: int) -> str:
    """Copy `src` to a new private temp file in `dst_dir`, fsynced; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=dst_dir)
    try:
        os.fchmod(fd, mode)
        with open(src, "rb") as fin:
            while chunk := fin.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
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


def make_private_dir(path: str) -> None:
    """Create (or tighten) a 0700 directory: packages wait here before they are verified."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

