"""Built-in `collect` plugins, one module each: cpu, memory, disk, network."""

from daemon_app.collectors.cpu import CpuCollector
from daemon_app.collectors.disk import DiskCollector
from daemon_app.collectors.memory import MemoryCollector
from daemon_app.collectors.network import NetworkCollector

BUILTIN_COLLECTORS = {
    "cpu": CpuCollector,
    "memory": MemoryCollector,
    "disk": DiskCollector,
    "network": NetworkCollector,
}
