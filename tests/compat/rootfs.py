"""Minimal Debian root filesystems, each with its distribution's own python3, to run the pyz in.

    python -m tests.compat.rootfs ensure bullseye trixie     (what `make compat` runs first)

A root is made once with `debootstrap --variant=minbase --include=python3 SUITE` (2-3 minutes) and
kept in the cache ($DAEMON_COMPAT_CACHE, default ~/.cache/daemon-compat: outside the repository,
so a fresh clone or `git clean` does not pay for it again). It is built into SUITE-ARCH.tmp and
renamed when complete, so an interrupted debootstrap never passes for a root.

`mounted(root)` gives the chroot what a host has: /proc and /dev bound from this machine (a chroot
shares the PID and network namespaces, so the pyz inside sees this machine's /proc and reaches a
Manager on loopback) and a private tmpfs on /dev/shm; all unmounted on the way out. Root only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
# Suite -> the python3 it ships (what the tests expect to find inside).
SUITES = {"bullseye": "3.9", "trixie": "3.13"}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def cache_dir() -> Path:
    return Path(os.environ.get("DAEMON_COMPAT_CACHE") or Path.home() / ".cache" / "daemon-compat")


def root_path(suite: str, arch: str = "x86_64") -> Path:
    return cache_dir() / f"{suite}-{DEB_ARCH[arch]}"


def ensure(suite: str, arch: str = "x86_64") -> Path:
    """The cached root of `suite`, made with debootstrap when missing."""
    root = root_path(suite, arch)
    if (root / "usr" / "bin" / "python3").exists():
        return root
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap; .ci/run does)")
    partial = root.with_name(root.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log = root.with_name(root.name + ".log")
    with open(log, "w") as out:
        proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3",
                               f"--arch={DEB_ARCH[arch]}", suite, str(partial), MIRROR],
                              stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        raise RuntimeError(f"debootstrap {suite} failed ({proc.returncode}), see {log}:\n" + "\n".join(tail))
    os.replace(partial, root)
    return root


def _mounted_paths() -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        return {line.split()[4] for line in fh}


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """/proc and /dev of this machine and a private /dev/shm inside `root`, for the `with` block."""
    try:
        for what, where, args in (("/proc", "proc", ["--bind"]), ("/dev", "dev", ["--bind"]),
                                  ("tmpfs", "dev/shm", ["-t", "tmpfs", "-o", "mode=1777"])):
            target = str(root / where)
            if target in _mounted_paths():
                continue  # left by an interrupted run: reuse it, and unmount it at the end
            subprocess.run(["mount", *args, what, target], check=True)
            # Never let a mount inside the root propagate back to this machine's /dev.
            subprocess.run(["mount", "--make-private", target], check=False)
        yield root
    finally:
        for target in reversed([str(root / w) for w in ("proc", "dev", "dev/shm")]):
            if target in _mounted_paths():
                subprocess.run(["umount", "-l", target], check=False)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "ensure":
        sys.exit(__doc__)
    for name in sys.argv[2:]:
        print(ensure(name))
