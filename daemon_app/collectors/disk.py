"""Disk collector: usage per real filesystem (statvfs) and I/O counters; a hung mount never blocks.

statvfs on a mount whose server is gone (NFS, FUSE) can block for minutes in the kernel, so it
runs on a helper thread and a mount that does not answer within `mount_timeout` is reported in
`hung_mounts` and skipped until that call returns. The partition list is re-read only when the
kernel says the mount table changed (poll on /proc/self/mounts), not every round.
"""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Callable
from typing import Any

import psutil

from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import CollectContext, Metrics

PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "overlay", "proc",
    "pstore", "ramfs", "rpc_pipefs", "securityfs", "squashfs", "sysfs", "tmpfs", "tracefs",
    "nfsd", "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "shm",
})

StatvfsFn = Callable[[str], Any]


class _Slot:
    """One statvfs request and its answer."""

    __slots__ = ("mountpoint", "done", "result", "error")

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.done = threading.Event()
        self.result: Any = None
        self.error: OSError | None = None


class _StatvfsWorker:
    """A helper thread answering statvfs requests in order. When one hangs, the collector stops
    using this worker (it ends once the call returns) and starts a fresh one for the other mounts."""

    def __init__(self, statvfs: StatvfsFn) -> None:
        self._statvfs = statvfs
        self._jobs: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True, name="disk-statvfs").start()

    def ask(self, slot: _Slot) -> None:
        self._jobs.put(slot)

    def retire(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (slot := self._jobs.get()) is not None:
            try:
                slot.result = self._statvfs(slot.mountpoint)
            except OSError as exc:
                slot.error = exc
            finally:
                slot.done.set()


class _MountTable:
    """psutil.disk_partitions(all=True), re-read only when the kernel reports a change."""

    def __init__(self) -> None:
        self._parts: list[Any] | None = None
        self._poll: select.poll | None = None
        try:
            self._fh = open("/proc/self/mounts", "rb")  # kept open: the kernel flags changes on it
            self._poll = select.poll()
            self._poll.register(self._fh.fileno(), select.POLLPRI | select.POLLERR)
        except OSError:
            self._fh = None

    def partitions(self) -> list[Any]:
        changed = self._poll is None or bool(self._poll.poll(0))
        if self._parts is None or changed:
            self._parts = psutil.disk_partitions(all=True)
        return self._parts


class DiskCollector:
    """Built-in `collect` plugin `disk` (seed §3.2.4 field names)."""

    def __init__(self, statvfs: StatvfsFn = os.statvfs) -> None:
        self._statvfs = statvfs
        self._worker: _StatvfsWorker | None = None
        self._hung: dict[str, _Slot] = {}
        self._mounts = _MountTable()
        self._disk_names: dict[str, str] = {}
        self._lock = threading.Lock()

    def statvfs(self, mountpoint: str, timeout: float) -> Any:
        """statvfs of `mountpoint`, or None when it did not answer in time (or still has not since
        an earlier round). Raises OSError when the mount answered with an error."""
        pending = self._hung.get(mountpoint)
        if pending is not None:
            if not pending.done.is_set():
                return None
            del self._hung[mountpoint]
        if self._worker is None:
            self._worker = _StatvfsWorker(self._statvfs)
        slot = _Slot(mountpoint)
        self._worker.ask(slot)
        if not slot.done.wait(timeout):
            self._hung[mountpoint] = slot
            self._worker.retire()
            self._worker = None
            return None
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _disk_name(self, device: str) -> str:
        """The /proc/diskstats name of a device: /dev/mapper/vg-root -> dm-0."""
        name = self._disk_names.get(device)
        if name is None:
            name = self._disk_names[device] = os.path.basename(os.path.realpath(device))
        return name

    @hookimpl
    def collect(self, ctx: CollectContext) -> Metrics:
        with self._lock:  # the engine and `collect --once` never overlap, but a plugin host might
            return self._collect(ctx.config)

    def _collect(self, cfg: Any) -> Metrics:
        wanted = set(cfg.mount_points)
        io = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        rows: list[dict[str, Any]] = []
        hung: list[str] = []
        seen: set[str] = set()
        for part in self._mounts.partitions():
            if wanted:
                if part.mountpoint not in wanted:
                    continue
            elif not cfg.include_pseudo and (part.fstype in PSEUDO_FSTYPES or not part.fstype):
                continue
            if part.mountpoint in seen:  # stacked mounts: the top one is what statvfs sees
                continue
            seen.add(part.mountpoint)
            try:
                st = self.statvfs(part.mountpoint, cfg.mount_timeout)
            except OSError:
                continue  # gone between reading the table and asking it, or not ours to read
            if st is None:
                hung.append(part.mountpoint)
                continue
            total = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            # As df computes it: the share of the space non-root users can have that is in use.
            denom = used + free
            counters = io.get(self._disk_name(part.device)) if part.device.startswith("/") else None
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
        values: dict[str, Any] = {"disks": rows}
        if hung:
            values["hung_mounts"] = hung
        return Metrics("disk", values)
