"""Hand the clean pages of a mapped library file back to the kernel (madvise MADV_PAGEOUT).

grpc's extension is a 17 MB file. Connecting (TLS, HTTP/2, channel set-up) runs code spread all
over it, and the kernel maps every page fault 64 KB at a time, so the idle daemon kept ~12 MB of
grpc's code and read-only data resident that it does not run again until the next connection.
These pages are clean copies of the file: dropping them loses nothing, and whatever the idle link
still runs faults back in (~1 MB). Linux 5.4+; on older kernels this does nothing.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21


def clean_ranges(path: str, smaps: str = "/proc/self/smaps") -> list[tuple[int, int]]:
    """(start, end) of this process's read-only mappings of `path` that hold no private copies.

    Relocated read-only data (RELRO) is made of private (anonymous) copies of the file's pages: it
    is left alone, so nothing is ever pushed to swap by this.
    """
    real = os.path.realpath(path)
    out: list[tuple[int, int]] = []
    current: list[int] | None = None  # [start, end] of a candidate mapping while its fields are read
    with open(smaps, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if parts and parts[0].endswith(":"):
                if current is not None and parts[0] == "Anonymous:" and int(parts[1]) > 0:
                    current = None
                continue
            if current is not None:
                out.append((current[0], current[1]))
            current = None
            if len(parts) == 6 and "w" not in parts[1] and parts[5].strip() == real:
                start, end = parts[0].split("-")
                current = [int(start, 16), int(end, 16)]
    if current is not None:
        out.append((current[0], current[1]))
    return out


def release(path: str) -> int:
    """Ask the kernel to reclaim the clean pages mapped from `path`; returns the bytes advised."""
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    # Pages not yet written back cannot be dropped, and a pyz that was just extracted (the first
    # start after an install or an update) has written this file moments ago.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    advised = 0
    for start, end in clean_ranges(path):
        if madvise(start, end - start, MADV_PAGEOUT) != 0:
            log.debug("madvise(MADV_PAGEOUT) on %s: %s", path, os.strerror(ctypes.get_errno()))
            break
        advised += end - start
    return advised
