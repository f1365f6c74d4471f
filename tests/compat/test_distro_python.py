"""The built pyz inside Debian 11 (python3 3.9) and Debian 13 (python3 3.13) root filesystems.

Each root is a `debootstrap --variant=minbase --include=python3` tree (tests/compat/rootfs.py,
cached outside the repository), run with chroot and that distribution's own python3, which has
none of our dependencies. `make compat` runs this module (DAEMON_COMPAT=1; root and debootstrap
needed); elsewhere it is skipped. The reference Manager runs here, on this machine's 3.11 venv: a
chroot shares the network namespace, so the daemon inside reaches it on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from daemon_manager import pki
from daemon_manager.server import ThreadedManager
from daemon_manager.store import Store
from tests.compat import rootfs
from tests.helpers import ROOT, base_config, wait_until, write_config

pytestmark = pytest.mark.compat

PYZ = ROOT / "dist" / "daemon.pyz"
RUN_SECONDS = 20.0
# daemon_app/comm is made 3.9-compatible on its own branch (the grpclib link); until that lands,
# the Manager link cannot start on 3.9, and the daemon says so and exits (engine: fail loudly).


@pytest.fixture(scope="module", params=sorted(rootfs.SUITES))
def chroot(request):
    """(suite, root) with /proc, /dev and /dev/shm mounted for the module."""
    if os.environ.get("DAEMON_COMPAT") != "1":
        pytest.skip("the Debian root filesystem tests run under `make compat` (DAEMON_COMPAT=1)")
    if os.geteuid() != 0:
        pytest.fail("make compat needs root (debootstrap, mount, chroot)")
    if not PYZ.exists():
        pytest.fail("dist/daemon.pyz is missing: `make pyz` first (make compat does)")
    suite = request.param
    root = rootfs.ensure(suite)
    with rootfs.mounted(root):
        yield suite, root


class Inside:
    """One private directory inside the root; runs commands there with the root's python3."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = f"/tmp/daemon-compat-{uuid.uuid4().hex[:8]}"  # as the chroot sees it
        self.host = root / self.path.lstrip("/")
        self.host.mkdir(parents=True)
        shutil.copyfile(PYZ, self.host / "daemon.pyz")
        self.pyz = f"{self.path}/daemon.pyz"

    def argv(self, *args: str) -> list[str]:
        env = ["HOME=/root", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8",
               f"SHIV_ROOT={self.path}/shiv"]
        return ["chroot", str(self.root), "/usr/bin/env", "-i", *env, "python3", *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)

    def daemon(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(self.pyz, *args, timeout=timeout)

    def config(self, **sections) -> str:
        """A config whose paths are inside the root; returns its path as the chroot sees it."""
        cfg = base_config(self.path, **sections)
        cfg["daemon"]["control_socket"] = f"{self.path}/control.sock"
        write_config(self.host / "daemon.yaml", cfg)
        return f"{self.path}/daemon.yaml"

    def cleanup(self) -> None:
        shutil.rmtree(self.host, ignore_errors=True)


@pytest.fixture
def inside(chroot):
    place = Inside(chroot[1])
    yield place
    place.cleanup()


def test_the_root_has_the_distributions_python_and_none_of_our_dependencies(chroot, inside):
    suite, _ = chroot
    version = inside.run("-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
    assert version == rootfs.SUITES[suite]
    bare = inside.run("-c", "import psutil")
    assert bare.returncode != 0, "the root's python3 has psutil: the test would prove nothing"


def test_version_config_check_and_collect_with_the_distributions_python3(chroot, inside):
    suite, root = chroot
    version = inside.daemon("--version")
    assert version.returncode == 0, version.stderr
    assert f"(python {rootfs.SUITES[suite]}." in version.stdout and " on x86_64" in version.stdout
    info = json.loads(inside.daemon("version", "--format", "json").stdout)
    assert info["python"].startswith(rootfs.SUITES[suite] + ".") and info["arch"] == "x86_64"

    cfg = inside.config()
    check = inside.daemon("-c", cfg, "config", "check")
    assert check.returncode == 0 and check.stdout.startswith("config OK"), check.stdout + check.stderr

    collected = inside.daemon("-c", cfg, "collect", "--once", "--format", "json")
    assert collected.returncode == 0, collected.stderr
    data = json.loads(collected.stdout)
    assert set(data) == {"cpu", "memory", "disk", "network"}
    # Values against the root's own /proc view (this machine's, bound in).
    meminfo = dict(line.split(":", 1) for line in (root / "proc/meminfo").read_text().splitlines())
    assert data["memory"]["values"]["total"] == int(meminfo["MemTotal"].split()[0]) * 1024
    stat = (root / "proc/stat").read_text().splitlines()
    cpus = sum(1 for line in stat if line[:3] == "cpu" and line[3].isdigit())
    assert data["cpu"]["values"]["cores"] == cpus
    assert 0.0 <= data["cpu"]["values"]["usage_percent"] <= 100.0
    proc_net = {line.split(":")[0].strip(): int(line.split(":")[1].split()[0])
                for line in (root / "proc/net/dev").read_text().splitlines()[2:]}
    reported = {i["interface"]: i for i in data["network"]["values"]["interfaces"]}
    assert reported and set(reported) <= set(proc_net)
    for name, iface in reported.items():
        assert 0 <= iface["bytes_recv"] <= proc_net[name]  # /proc read after the collection
    for disk in data["disk"]["values"]["disks"]:
        assert 0 <= disk["used"] <= disk["total"] and 0 <= disk["used_percent"] <= 100


def test_every_daemon_app_module_imports_under_the_distributions_python3(chroot, inside):
    script = inside.host / "import_all.py"
    shutil.copyfile(Path(__file__).with_name("import_all.py"), script)
    env_argv = inside.argv(inside.pyz, f"{inside.path}/import_all.py")
    env_argv.insert(env_argv.index("python3"), "SHIV_INTERPRETER=1")
    result = subprocess.run(env_argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imported" in result.stdout


@pytest.mark.timeout(240)
def test_run_with_the_sample_agent_reports_to_the_manager_for_20s(chroot, inside, tmp_path, request):
    suite, root = chroot
    tls_dir = tmp_path / "pki"
    pki.init(tls_dir, ["node-a"])
    for name in ("ca.crt", "node-a.crt", "node-a.key"):
        shutil.copyfile(tls_dir / name, inside.host / name)
    (inside.host / "agent").mkdir()
    shutil.copyfile(ROOT / "examples" / "sample_agent.py", inside.host / "sample_agent.py")
    os.chmod(inside.host / "sample_agent.py", 0o755)

    manager = ThreadedManager(str(tmp_path / "manager.db"), str(tls_dir), "127.0.0.1:0")
    address = manager.start()
    daemon = None
    try:
        cfg = inside.config(
            daemon={"report_interval": "1s"},
            manager={"address": address, "heartbeat_interval": "1s", "reconnect_interval": "100ms",
                     "reconnect_max": "1s", "timeout": "5s",
                     "tls": {"ca_file": f"{inside.path}/ca.crt", "cert_file": f"{inside.path}/node-a.crt",
                             "key_file": f"{inside.path}/node-a.key"}},
            agent={"enabled": True, "binary_path": f"{inside.path}/sample_agent.py"})
        log = open(inside.host / "stdout.log", "w")
        daemon = subprocess.Popen(inside.argv(inside.pyz, "-c", cfg, "run"), stdout=log,
                                  stderr=subprocess.STDOUT)
        store = Store(str(tmp_path / "manager.db"))

        def reports() -> int:
            nodes = store.nodes()
            return len(store.reports(nodes[0]["node_id"])) if nodes else 0

        def logs() -> str:
            tail = [(inside.host / n).read_text()[-3000:] for n in ("stdout.log", "daemon.log")
                    if (inside.host / n).exists()]
            return "\n".join(tail)

        try:
            wait_until(lambda: reports() > 0 or daemon.poll() is not None, timeout=60)
        except AssertionError:
            pytest.fail(f"no report reached the Manager in 60 s:\n{logs()}")
        assert daemon.poll() is None, f"the daemon exited {daemon.returncode}:\n{logs()}"
        first = reports()
        with pytest.raises(AssertionError):  # the daemon keeps running for RUN_SECONDS
            wait_until(lambda: daemon.poll() is not None, timeout=RUN_SECONDS)
        assert reports() >= first + RUN_SECONDS / 2, f"reports every second should keep arriving:\n{logs()}"

        status = inside.daemon("-c", cfg, "status", "--format", "json")
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["agent"]["state"] == "RUNNING", state["agent"]
        node = store.nodes()[0]
        assert node["agent_status"] and node["agent_status"].get("state") == "RUNNING", node
        agent_pid = state["agent"]["pid"]

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, (inside.host / "stdout.log").read_text()
        records = [json.loads(line) for line in (inside.host / "daemon.log").read_text().splitlines()]
        assert not [r for r in records if r.get("level") in ("ERROR", "CRITICAL")], records[-5:]
        os.kill(agent_pid, signal.SIGTERM)  # the Agent outlives the daemon by design
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
        manager.stop()
