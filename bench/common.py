"""Shared measuring helpers for bench/ scripts: memory, CPU, percentiles, waiting, output."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYZ = ROOT / "dist" / "daemon.pyz"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---- output convention: human lines on stderr, one JSON object as the last stdout line ----

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(figures: dict[str, Any]) -> None:
    """Print the figures as the last line of stdout (the runner reads only that line)."""
    print(json.dumps(figures, sort_keys=True), flush=True)


def arg_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the `--quick` option every bench script accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a shorter run with fewer samples")
    return parser


# ---- statistics ----

def percentile(values: Iterable[float], pct: float) -> float:
    """The pct-th percentile (0..100) with linear interpolation between ranks, as numpy does."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summarize(values: Iterable[float], prefix: str, digits: int = 3) -> dict[str, float]:
    """{prefix_p50, prefix_p99, prefix_max} of the samples, rounded."""
    data = list(values)
    return {
        f"{prefix}_p50": round(percentile(data, 50), digits),
        f"{prefix}_p99": round(percentile(data, 99), digits),
        f"{prefix}_max": round(max(data), digits),
    }


# ---- waiting ----

def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---- processes ----

def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def ppid_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def children(pid: int) -> list[int]:
    """Direct children of pid that are alive now (zombies excluded)."""
    # /proc/<pid>/task/<tid>/children is cheap enough to poll in a tight loop; a /proc scan is not.
    try:
        kids = {int(k) for task in os.scandir(f"/proc/{pid}/task")
                for k in Path(task.path, "children").read_text().split()}
    except FileNotFoundError:
        kids = {int(e.name) for e in os.scandir("/proc")
                if e.name.isdigit() and _ppid_or_none(int(e.name)) == pid}
    return sorted(k for k in kids if alive(k))


def _ppid_or_none(pid: int) -> int | None:
    try:
        return ppid_of(pid)
    except (OSError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below pid, at any depth."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue
        if fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, ValueError):
        return False


# ---- memory ----

def memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss of one process in kB, from /proc/<pid>/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(rest.split()[0])
    return out


def rss_mb(pid: int, include_children: bool = False) -> float:
    """Resident set size in MB (MiB), optionally summed over all live descendants."""
    pids = [pid, *(descendants(pid) if include_children else [])]
    return round(sum(memory_kb(p)["rss"] for p in pids) / 1024.0, 2)


def pss_mb(pid: int, include_children: bool = False) -> float:
    """Proportional set size in MB (MiB): shared pages divided among the processes sharing them."""
    pids = [pid, *(descendants(pid) if include_children else [])]
    return round(sum(memory_kb(p)["pss"] for p in pids) / 1024.0, 2)


# ---- CPU ----

def cpu_ticks(pid: int, include_reaped: bool = False) -> int:
    """utime+stime of pid in clock ticks; with include_reaped, also its waited-for children's."""
    fields = _stat_fields(pid)
    # After the ')' the fields start at index 3 of proc(5): utime is field 14 -> index 11 here.
    ticks = int(fields[11]) + int(fields[12])
    if include_reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


class CpuWindow:
    """CPU use of a process (and optionally its live and reaped descendants) over a wall window.

    Percent is of one core, as top(1) shows it. Children are followed by pid: a descendant that
    dies inside the window counts through its parent's cutime/cstime once it is reaped.
    """

    def __init__(self, pid: int, include_children: bool = False) -> None:
        self.pid = pid
        self.include_children = include_children
        self._start = self._sample()
        self._t0 = time.monotonic()

    def _sample(self) -> dict[int, int]:
        pids = [self.pid, *(descendants(self.pid) if self.include_children else [])]
        out = {}
        for p in pids:
            try:
                out[p] = cpu_ticks(p, include_reaped=self.include_children)
            except (OSError, ValueError):
                continue
        return out

    def percent(self) -> float:
        """CPU percent since the window opened."""
        end = self._sample()
        elapsed = time.monotonic() - self._t0
        # Totals, not per-pid deltas: a child reaped inside the window moves its ticks into the
        # parent's cutime, and its ticks from before the window must still be subtracted.
        used = sum(end.values()) - sum(self._start.values())
        return round(100.0 * used / CLK_TCK / elapsed, 3) if elapsed > 0 else 0.0


def cpu_percent(pid: int, window: float, include_children: bool = False) -> float:
    """Average CPU percent (of one core) of pid over the next `window` seconds."""
    meter = CpuWindow(pid, include_children)
    time.sleep(window)
    return meter.percent()


# ---- network ----

def free_port() -> int:
    """A loopback TCP port the OS just handed out (for programs that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_ports(pid: int) -> list[int]:
    """TCP ports a process listens on, found through its socket inodes in /proc/net/tcp{,6}."""
    inodes = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


# ---- the machine ----

def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    uname = os.uname()
    return {
        "cpu_model": model or uname.machine,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": f"{uname.sysname} {uname.release}",
        "python": sys.version.split()[0],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
