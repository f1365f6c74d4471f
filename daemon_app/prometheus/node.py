"""The built-in collectors' values under node_exporter's metric names and labels.

Input is a report's `metrics` section (group name -> {name, timestamp, values}) as the `report`
hook receives it. Every value is type-checked before use: a plugin may publish a group with a
built-in's name, and a wrong field must cost that sample, never the scrape. The mapping table,
and which node_exporter series are not produced, is docs/prometheus.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from daemon_app.prometheus.exposition import COUNTER, GAUGE, Exposition

BUILTIN_GROUPS = frozenset({"cpu", "memory", "disk", "network"})

# The cpu collector sums every CPU (psutil.cpu_times()); node_exporter has one series per CPU.
CPU_ALL = "all"
_CPU_MODES = ("user", "system", "idle")

_MEMORY = (  # (our field, node_exporter name, help)
    ("total", "node_memory_MemTotal_bytes", "Memory information field MemTotal_bytes."),
    ("available", "node_memory_MemAvailable_bytes", "Memory information field MemAvailable_bytes."),
    ("buffers", "node_memory_Buffers_bytes", "Memory information field Buffers_bytes."),
    ("swap_total", "node_memory_SwapTotal_bytes", "Memory information field SwapTotal_bytes."),
)

_NETWORK = (  # (our field, node_exporter name)
    ("bytes_recv", "node_network_receive_bytes_total"),
    ("bytes_sent", "node_network_transmit_bytes_total"),
    ("packets_recv", "node_network_receive_packets_total"),
    ("packets_sent", "node_network_transmit_packets_total"),
    ("errin", "node_network_receive_errs_total"),
    ("errout", "node_network_transmit_errs_total"),
    ("dropin", "node_network_receive_drop_total"),
    ("dropout", "node_network_transmit_drop_total"),
)


def _num(values: Mapping[str, Any], key: str) -> int | float | None:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _values(metrics: Mapping[str, Any], group: str) -> Mapping[str, Any]:
    entry = metrics.get(group)
    values = entry.get("values") if isinstance(entry, Mapping) else None
    return values if isinstance(values, Mapping) else {}


def _rows(values: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    rows = values.get(key)
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


def _str(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) else None


def add_node_series(out: Exposition, metrics: Mapping[str, Any]) -> None:
    """Add the node_* series for the built-in groups present in `metrics`."""
    _cpu(out, _values(metrics, "cpu"))
    _memory(out, _values(metrics, "memory"))
    _filesystem(out, _values(metrics, "disk"))
    _network(out, _values(metrics, "network"))


def _cpu(out: Exposition, values: Mapping[str, Any]) -> None:
    for mode in _CPU_MODES:
        seconds = _num(values, mode)
        if seconds is not None:
            out.add("node_cpu_seconds_total", COUNTER, "Seconds the CPUs spent in each mode.", seconds,
                    {"cpu": CPU_ALL, "mode": mode})
    cores = _num(values, "cores")
    if cores is not None:
        # What per-CPU queries count node_cpu_seconds_total series for, since ours is the sum.
        out.add("daemon_cpu_cores", GAUGE, "Logical CPUs; node_cpu_seconds_total{cpu=\"all\"} is their sum.",
                cores)


def _memory(out: Exposition, values: Mapping[str, Any]) -> None:
    for field, name, help_text in _MEMORY:
        value = _num(values, field)
        if value is not None:
            out.add(name, GAUGE, help_text, value)
    total, used = _num(values, "swap_total"), _num(values, "swap_used")
    if total is not None and used is not None:
        # psutil's swap `used` is SwapTotal - SwapFree, so this is /proc/meminfo's SwapFree exactly.
        out.add("node_memory_SwapFree_bytes", GAUGE, "Memory information field SwapFree_bytes.",
                total - used)


def _filesystem(out: Exposition, values: Mapping[str, Any]) -> None:
    disks: dict[str, tuple[int | float, int | float]] = {}
    for row in _rows(values, "disks"):
        device, fstype, mountpoint = _str(row, "device"), _str(row, "fstype"), _str(row, "mountpoint")
        if device is None or fstype is None or mountpoint is None:
            continue
        labels = {"device": device, "fstype": fstype, "mountpoint": mountpoint}
        total, used, free = _num(row, "total"), _num(row, "used"), _num(row, "free")
        if total is not None:
            out.add("node_filesystem_size_bytes", GAUGE, "Filesystem size in bytes.", total, labels)
        if free is not None:
            out.add("node_filesystem_avail_bytes", GAUGE,
                    "Filesystem space available to non-root users in bytes.", free, labels)
        if total is not None and used is not None:
            # The collector's used is (f_blocks - f_bfree) * f_frsize: this is f_bfree * f_frsize.
            out.add("node_filesystem_free_bytes", GAUGE, "Filesystem free space in bytes.",
                    total - used, labels)
        read, written = _num(row, "read_bytes"), _num(row, "write_bytes")
        # 0 and 0 is how the collector says "no I/O counters for this device": not a real reading.
        if device.startswith("/dev/") and read is not None and written is not None and (read or written):
            disks.setdefault(_diskstats_name(device), (read, written))
    for name, (read, written) in disks.items():
        out.add("node_disk_read_bytes_total", COUNTER, "The total number of bytes read successfully.",
                read, {"device": name})
        out.add("node_disk_written_bytes_total", COUNTER,
                "The total number of bytes written successfully.", written, {"device": name})


_DISK_NAMES: dict[str, str] = {}


def _diskstats_name(device: str) -> str:
    """/dev/mapper/vg-root -> dm-0: the name node_exporter's diskstats uses (as the collector does)."""
    name = _DISK_NAMES.get(device)
    if name is None:
        name = os.path.basename(os.path.realpath(device))
        if len(_DISK_NAMES) < 1024:  # bounded: devices come and go over a long uptime
            _DISK_NAMES[device] = name
    return name


def _network(out: Exposition, values: Mapping[str, Any]) -> None:
    for row in _rows(values, "interfaces"):
        device = _str(row, "interface")
        if device is None:
            continue
        for field, name in _NETWORK:
            value = _num(row, field)
            if value is not None:
                what = name[len("node_network_"):-len("_total")].replace("_", " ")
                out.add(name, COUNTER, f"Network device statistic {what}.", value, {"device": device})
