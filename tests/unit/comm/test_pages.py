"""Handing clean file pages back to the kernel: which mappings qualify, and that RSS really drops."""

from __future__ import annotations

import mmap
import os

import pytest

from daemon_app.comm import pages

SMAPS = """\
7f0000000000-7f0000001000 r--p 00000000 fe:00 11 /opt/lib/big.so
Rss:                   4 kB
Anonymous:             0 kB
7f0000001000-7f0000009000 r-xp 00001000 fe:00 11 /opt/lib/big.so
Rss:                  32 kB
Anonymous:             0 kB
7f0000009000-7f000000a000 r--p 00009000 fe:00 11 /opt/lib/big.so
Rss:                   4 kB
Anonymous:             4 kB
7f000000a000-7f000000b000 rw-p 0000a000 fe:00 11 /opt/lib/big.so
Rss:                   4 kB
Anonymous:             4 kB
7f000000b000-7f000000c000 r-xp 00000000 fe:00 12 /opt/lib/other.so
Rss:                   4 kB
Anonymous:             0 kB
"""


def test_only_read_only_mappings_of_the_file_without_private_copies_qualify(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    # The RELRO mapping (read-only but relocated: anonymous copies) and the writable data stay.
    assert pages.clean_ranges("/opt/lib/big.so", str(smaps)) == [
        (0x7F0000000000, 0x7F0000001000), (0x7F0000001000, 0x7F0000009000)]


def _rss_kb(path: str) -> int:
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if not parts[0].endswith(":"):
                inside = len(parts) == 6 and parts[5].strip() == path
            elif inside and parts[0] == "Rss:":
                total += int(parts[1])
    return total


def test_released_pages_of_a_mapped_file_leave_the_resident_set(tmp_path):
    path = str(tmp_path / "blob")
    with open(path, "wb") as fh:
        fh.write(os.urandom(4 << 20))
    with open(path, "rb") as fh:
        view = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    try:
        data = bytes(view)  # reads, so maps, every page
        before = _rss_kb(path)
        assert before >= 4000
        if pages.release(path) == 0:
            pytest.skip("this kernel has no MADV_PAGEOUT (Linux < 5.4)")
        assert _rss_kb(path) < before // 4
        assert view[:] == data  # still all there: the pages come back from the file on access
    finally:
        view.close()
