"""Built-in collectors agree with the kernel (/proc, statvfs); filters; a hung mount never blocks."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from daemon_app import config
from daemon_app.collectors.cpu import CpuCollector, _busy_percent
from daemon_app.collectors.disk import PSEUDO_FSTYPES, DiskCollector
from daemon_app.collectors.memory import MemoryCollector
from daemon_app.collectors.network import NetworkCollector
from daemon_app.metrics import CollectContext
from tests.helpers import wait_until

SEED_FIELDS = {
    "cpu": {"usage_percent", "cores", "model", "user", "system", "idle"},
    "memory": {"total", "available", "used", "used_percent", "cached", "buffers", "swap_total", "swap_used"},
    "disk": {"mountpoint", "device", "fstype", "total", "used", "free", "used_percent", "read_bytes",
             "write_bytes"},
    "network": {"interface", "bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout",
                "dropin", "dropout"},
}


def ctx(name: str, **section) -> CollectContext:
    cfg = config.validate({"collectors": {name: section}} if section else {})
    return CollectContext(name=name, config=cfg.collector(name), deadline=time.monotonic() + 5)


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, rest = line.split(":", 1)
            out[key] = int(rest.split()[0]) * 1024
    return out


def netdev() -> dict[str, list[int]]:
    out = {}
    with open("/proc/net/dev") as fh:
        for line in fh.readlines()[2:]:
            name, rest = line.split(":", 1)
            out[name.strip()] = [int(x) for x in rest.split()]
    return out


def between(value: float, a: float, b: float, slack: float = 0) -> bool:
    return min(a, b) - slack <= value <= max(a, b) + slack


def test_memory_agrees_with_proc_meminfo():
    before = meminfo()
    values = MemoryCollector().collect(ctx("memory")).values
    after = meminfo()
    assert set(values) == SEED_FIELDS["memory"]
    assert values["total"] == before["MemTotal"] == after["MemTotal"]
    assert values["swap_total"] == before["SwapTotal"]
    slack = before["MemTotal"] // 100  # other processes allocate between the reads
    assert between(values["available"], before["MemAvailable"], after["MemAvailable"], slack)
    assert between(values["buffers"], before["Buffers"], after["Buffers"], slack)
    assert 0 <= values["used"] <= values["total"]
    assert 0.0 <= values["used_percent"] <= 100.0


def test_disk_totals_agree_with_statvfs_and_pseudo_filesystems_are_skipped():
    values = DiskCollector().collect(ctx("disk")).values
    assert values["disks"], "no real filesystem found"
    assert "hung_mounts" not in values
    for row in values["disks"]:
        assert set(row) == SEED_FIELDS["disk"]
        assert row["fstype"] not in PSEUDO_FSTYPES
        st = os.statvfs(row["mountpoint"])
        assert row["total"] == st.f_blocks * st.f_frsize
        slack = row["total"] // 100  # files are written between the two reads
        assert between(row["free"], st.f_bavail * st.f_frsize, st.f_bavail * st.f_frsize, slack)
        assert between(row["used"], (st.f_blocks - st.f_bfree) * st.f_frsize,
                       (st.f_blocks - st.f_bfree) * st.f_frsize, slack)


def test_disk_io_counters_agree_with_proc_diskstats():
    def sectors_read(device: str) -> int:
        name = os.path.basename(os.path.realpath(device))
        with open("/proc/diskstats") as fh:
            for line in fh:
                fields = line.split()
                if fields[2] == name:
                    return int(fields[5]) * 512
        pytest.skip(f"{device} is not in /proc/diskstats (a container overlay?)")

    root = next(r for r in DiskCollector().collect(ctx("disk")).values["disks"] if r["mountpoint"] == "/")
    before = sectors_read(root["device"])
    row = next(r for r in DiskCollector().collect(ctx("disk")).values["disks"] if r["mountpoint"] == "/")
    after = sectors_read(root["device"])
    assert between(row["read_bytes"], before, after)


def test_disk_mount_points_filter_and_include_pseudo():
    only_root = DiskCollector().collect(ctx("disk", mount_points=["/"])).values["disks"]
    assert [r["mountpoint"] for r in only_root] == ["/"]
    with_pseudo = DiskCollector().collect(ctx("disk", include_pseudo=True)).values["disks"]
    fstypes = {r["fstype"] for r in with_pseudo}
    assert fstypes & PSEUDO_FSTYPES, fstypes
    # An explicitly named pseudo mount is reported even though pseudo filesystems are skipped by default.
    named = DiskCollector().collect(ctx("disk", mount_points=["/proc", "/"])).values["disks"]
    assert sorted(r["mountpoint"] for r in named) == ["/", "/proc"]


@pytest.mark.timeout(30)
def test_a_hung_mount_is_skipped_after_its_timeout_and_returns_when_it_answers():
    release = threading.Event()
    hung_calls = []

    def statvfs(path: str) -> os.statvfs_result:
        if path == "/proc":  # stands in for a dead NFS server: the call blocks in the "kernel"
            hung_calls.append(path)
            release.wait()
        return os.statvfs(path)

    collector = DiskCollector(statvfs=statvfs)
    context = ctx("disk", mount_points=["/", "/proc", "/dev"], mount_timeout="200ms")
    first = collector.collect(context).values
    assert hung_calls == ["/proc"]
    assert first["hung_mounts"] == ["/proc"]
    assert sorted(r["mountpoint"] for r in first["disks"]) == ["/", "/dev"]

    # Still hung: skipped without asking it again (no pile-up of blocked calls); the others answer.
    second = collector.collect(context).values
    assert hung_calls == ["/proc"]
    assert second["hung_mounts"] == ["/proc"]
    assert sorted(r["mountpoint"] for r in second["disks"]) == ["/", "/dev"]

    release.set()  # the server comes back: the blocked call returns, the mount is asked again
    third = wait_until(lambda: (v := collector.collect(context).values) and "hung_mounts" not in v and v,
                       timeout=10, what="the mount to answer again")
    assert sorted(r["mountpoint"] for r in third["disks"]) == ["/", "/dev", "/proc"]


def test_network_counters_agree_with_proc_net_dev():
    before = netdev()
    rows = NetworkCollector().collect(ctx("network")).values["interfaces"]
    after = netdev()
    assert {r["interface"] for r in rows} == set(before)
    # /proc/net/dev columns: rx bytes packets errs drop ... tx bytes(8) packets(9) errs(10) drop(11)
    columns = {"bytes_recv": 0, "packets_recv": 1, "errin": 2, "dropin": 3,
               "bytes_sent": 8, "packets_sent": 9, "errout": 10, "dropout": 11}
    for row in rows:
        assert set(row) == SEED_FIELDS["network"]
        name = row["interface"]
        for key, col in columns.items():
            assert between(row[key], before[name][col], after[name][col]), (name, key)


def test_network_interfaces_filter():
    rows = NetworkCollector().collect(ctx("network", interfaces=["lo"])).values["interfaces"]
    assert [r["interface"] for r in rows] == ["lo"]
    assert NetworkCollector().collect(ctx("network", interfaces=["no-such-nic"])).values["interfaces"] == []


def test_cpu_times_agree_with_proc_stat_and_percent_comes_from_the_delta():
    def proc_stat() -> list[float]:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
        hz = os.sysconf("SC_CLK_TCK")
        return [int(x) / hz for x in fields]

    collector = CpuCollector()
    before = proc_stat()
    first = collector.collect(ctx("cpu")).values
    after = proc_stat()
    assert set(first) == SEED_FIELDS["cpu"]
    assert first["cores"] == os.cpu_count()
    assert between(first["user"], before[0], after[0], 0.02)
    assert between(first["system"], before[2], after[2], 0.02)
    assert between(first["idle"], before[3], after[3], 0.02)
    second = collector.collect(ctx("cpu")).values
    assert 0.0 <= second["usage_percent"] <= 100.0


def test_busy_percent_is_the_share_of_non_idle_time_between_two_samples():
    Times = type(psutil.cpu_times())
    zero = Times(*(0.0 for _ in Times._fields))
    half = zero._replace(user=30.0, system=20.0, idle=40.0, iowait=10.0)
    assert _busy_percent(zero, half) == 50.0
    assert _busy_percent(half, half) == 0.0  # no time passed: no division by zero
    later = half._replace(user=130.0)
    assert _busy_percent(half, later) == 100.0
