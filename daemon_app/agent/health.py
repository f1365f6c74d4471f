"""Agent health (seed §3.3.2): resource use of the Agent's process tree and threshold tracking.

CPU percent is the delta of CPU time over the delta of wall time since the previous sample, never a
blocking sleep. It covers the whole tree: the leader, its live descendants, and the descendants it
has already reaped (their time is in the leader's children_* counters). 100 % is one full core.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

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

    @classmethod
    def for_config(cls, pid: int, hc: Any) -> HealthChecker:
        """For the process `pid`, with the thresholds of `agent.health_check` (`hc`).

        psutil.NoSuchProcess when `pid` is gone already."""
        return cls(pid, heartbeat_timeout=hc.heartbeat_timeout, cpu_threshold=hc.cpu_threshold,
                   memory_threshold=hc.memory_threshold, threshold_duration=hc.threshold_duration)

    def configure_from(self, hc: Any) -> None:
        """New thresholds from `agent.health_check` (a reload); what was tracked so far stays."""
        self.configure(heartbeat_timeout=hc.heartbeat_timeout, cpu_threshold=hc.cpu_threshold,
                       memory_threshold=hc.memory_threshold, threshold_duration=hc.threshold_duration)

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

    def explain(self, reason: str) -> str:
        """What an operator reads after "unhealthy: <reason>" (the limit that was passed)."""
        s = self.sampler.last
        if reason == CPU_THRESHOLD:
            return f"cpu {s.cpu_percent:.1f}% > {self.cpu.threshold}% for {self.cpu.duration:g}s"
        if reason == MEMORY_THRESHOLD:
            return f"rss {s.memory_bytes} > {int(self.memory.threshold)} bytes for {self.memory.duration:g}s"
        if reason == HEARTBEAT_TIMEOUT:
            return f"no heartbeat for {self.heartbeat_timeout:g}s"
        return "process gone"


class AgentLineage:
    """Whether a process is the Agent or one of its descendants: who may send heartbeats.

    Called on the heartbeat thread for every new connection; answers are cached per peer pid
    (bounded: a peer that opens connections from ever new pids cannot grow it without limit)."""

    MAX_CACHED = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agent = 0
        self._known: dict[int, bool] = {}

    def follow(self, agent_pid: int) -> None:
        """A new Agent process (0: none): forget what was learnt about the previous one."""
        with self._lock:
            self._agent = agent_pid
            self._known.clear()

    def includes(self, peer_pid: int) -> bool:
        with self._lock:
            agent = self._agent
            if not agent or peer_pid <= 0:
                return False
            if peer_pid == agent:
                return True
            known = self._known.get(peer_pid)
            if known is not None:
                return known
        try:
            result = any(p.pid == agent for p in psutil.Process(peer_pid).parents())
        except psutil.Error:
            result = False
        with self._lock:
            if self._agent != agent:
                return False  # the Agent changed while we looked: this answer was about the old one
            if len(self._known) > self.MAX_CACHED:
                self._known.clear()
            self._known[peer_pid] = result
        return result
