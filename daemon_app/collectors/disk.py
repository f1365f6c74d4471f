"""Disk collector: usage per real filesystem (statvfs) and I/O counters; a hung mount never blocks."""

from __future__ import annotations

import os
import threading

import psutil

from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import CollectContext, Metrics

PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "overlay", "proc",
    "pstore", "ramfs", "rpc_pipefs", "securityfs", "squashfs", "sysfs", "tmpfs", "tracefs",
    "nfsd", "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "shm",
})


class _StatvfsCall:
    """statvfs in a worker thread; a call that has not returned marks its mount as hung."""

    def __init__(self, mountpoint: str) -> None:
        self.done = threading.Event()
        self.result: os.statvfs_result | None = None
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, args=(mountpoint,), daemon=True,
                                       name=f"statvfs:{mountpoint}")
        self.thread.start()

    def _run(self, mountpoint: str) -> None:
        try:
            self.result = os.statvfs(mountpoint)
        except OSError as exc:
            self.error = exc
        finally:
            self.done.set()


class DiskCollector:
    def __init__(self) -> None:
        self._hung: dict[str, _StatvfsCall] = {}

    def statvfs(self, mountpoint: str, timeout: float) -> os.statvfs_result | None:
        """None when the mount did not answer in time (or still has not since a previous round)."""
        pending = self._hung.get(mountpoint)
        if pending is not None:
            if not pending.done.is_set():
                return None
            del self._hung[mountpoint]
        call = _StatvfsCall(mountpoint)
        if not call.done.wait(timeout):
            self._hung[mountpoint] = call
            return None
        if call.error is not None:
            raise call.error
        return call.result

    @hookimpl
    def collect(self, ctx: CollectContext) -> Metrics:
        cfg = ctx.config
        wanted = set(cfg.mount_points)
        io = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        rows, hung = [], []
        seen = set()
        for part in psutil.disk_partitions(all=True):
            if wanted:
                if part.mountpoint not in wanted:
                    continue
            elif not cfg.include_pseudo and (part.fstype in PSEUDO_FSTYPES or not part.fstype):
                continue
            if part.mountpoint in seen:
                continue
            seen.add(part.mountpoint)
            try:
                st = self.statvfs(part.mountpoint, cfg.mount_timeout)
            except OSError:
                continue
            if st is None:
                hung.append(part.mountpoint)
                continue
            total = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            denom = used + free
            counters = io.get(os.path.basename(part.device))
            rows.append({
                "mountpoint": part.mountpoint,
                "device": part.device,
                "fstype": part.fstype,
                "total": total,
                "used": used,
                "free": free,
                "used_percent": round(100.0 * used / denom, 2) if denom else 0.0,
                "read_bytes": counters.read_bytes if counters else 0,
                "write_bytes": counters.write_bytes if counters else 0,
            })
        values: dict = {"disks": rows}
        if hung:
            values["hung_mounts"] = hung
        return Metrics("disk", values)
