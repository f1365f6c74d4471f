"""Agent health (seed §3.3.2): resource use of the Agent's process tree and threshold tracking.

CPU percent is the delta of CPU time over the delta of wall time since the previous sample, never a
blocking sleep. It covers the whole tree: the leader, its live descendants, and the descendants it
has already reaped (their time is in the leader's children_* counters). 100 % is one full core.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

HEARTBEAT_TIMEOUT, CPU_THRESHOLD, MEMORY_THRESHOLD, DEAD = (
    "heartbeat_timeout", "cpu_threshold", "memory_threshold", "dead")


@dataclass
class Sample:
    cpu_percent: float
    memory_bytes: int
    processes: int


def descendants(root: psutil.Process) -> list[psutil.Process]:
    """Every live process below `root`, found through /proc/<pid>/task/<tid>/children.

    psutil's children(recursive=True) reads the stat file of every process on the host (~20 us
    each): on a host running 1000 processes a health check every 30 s alone cost the idle daemon
    ~0.07 % CPU. Walking the Agent's own tree costs the same on any host. Kernels without the
    children files (CONFIG_PROC_CHILDREN) get psutil's scan.
    """
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        return root.children(recursive=True)
    out: list[psutil.Process] = []
    todo = [root.pid]
    while todo:
        pid = todo.pop()
        kids: set[int] = set()
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/children", encoding="ascii") as fh:
                    kids.update(int(k) for k in fh.read().split())
        except FileNotFoundError:  # the process or one of its threads ended while we looked
            pass
        for kid in sorted(kids):
            try:
                out.append(psutil.Process(kid))
            except psutil.NoSuchProcess:
                continue
            todo.append(kid)
    return out


class ResourceSampler:
    """Samples one Agent process tree; make a new one for each Agent process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._root = psutil.Process(pid)
        self._last: tuple[float, float] | None = None  # (monotonic time, total CPU seconds)
        self.last = Sample(0.0, 0, 0)

    def sample(self) -> Sample | None:
        """None when the leader is gone; the first call reports 0 % (there is no delta yet)."""
        try:
            with self._root.oneshot():
                t = self._root.cpu_times()
                cpu = t.user + t.system + t.children_user + t.children_system
                rss = self._root.memory_info().rss
            children = descendants(self._root)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return self.last  # e.g. an adopted Agent now running as another user: keep the last figures
        for child in children:
            try:
                with child.oneshot():
                    ct = child.cpu_times()
                    cpu += ct.user + ct.system
                    rss += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        now = time.monotonic()
        percent = 0.0
        if self._last is not None and now > self._last[0]:
            # A descendant that exited unreaped takes its time with it: never report a negative rate.
            percent = max(0.0, (cpu - self._last[1]) / (now - self._last[0]) * 100.0)
        self._last = (now, cpu)
        self.last = Sample(round(percent, 2), rss, 1 + len(children))
        return self.last


class ThresholdTracker:
    """Says when a value has stayed above its threshold for longer than `duration`.

    Judged on samples: over since the first sample above the threshold, cleared by any sample at or
    below it. A threshold of 0 disables the check.
    """

    def __init__(self, threshold: float, duration: float) -> None:
        self.threshold = threshold
        self.duration = duration
        self.over_since: float | None = None

    def update(self, value: float, now: float) -> bool:
        if self.threshold <= 0 or value <= self.threshold:
            self.over_since = None
            return False
        if self.over_since is None:
            self.over_since = now
        return now - self.over_since >= self.duration

    def reset(self) -> None:
        self.over_since = None


class HealthChecker:
    """One verdict per health tick: None (healthy) or the reason to restart."""

    def __init__(self, pid: int, *, heartbeat_timeout: float, cpu_threshold: float,
                 memory_threshold: int, threshold_duration: float) -> None:
        self.sampler = ResourceSampler(pid)
        self.heartbeat_timeout = heartbeat_timeout
        self.cpu = ThresholdTracker(cpu_threshold, threshold_duration)
        self.memory = ThresholdTracker(float(memory_threshold), threshold_duration)
        self.sampler.sample()  # prime the CPU delta

    def configure(self, *, heartbeat_timeout: float, cpu_threshold: float, memory_threshold: int,
                  threshold_duration: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.cpu.threshold, self.cpu.duration = cpu_threshold, threshold_duration
        self.memory.threshold, self.memory.duration = float(memory_threshold), threshold_duration

    def check(self, last_heartbeat: float, now: float | None = None) -> str | None:
        """`last_heartbeat`: monotonic time of this Agent's last heartbeat, or of RUNNING if none yet."""
        now = time.monotonic() if now is None else now
        sample = self.sampler.sample()
        if sample is None:
            return DEAD
        if now - last_heartbeat > self.heartbeat_timeout:
            return HEARTBEAT_TIMEOUT
        # Update both trackers every tick so each keeps its own "over since".
        cpu_over = self.cpu.update(sample.cpu_percent, now)
        memory_over = self.memory.update(sample.memory_bytes, now)
        if cpu_over:
            return CPU_THRESHOLD
        if memory_over:
            return MEMORY_THRESHOLD
        return None
