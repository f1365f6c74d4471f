"""Daemon self-update with built pyz files, end to end: `push-update` of a second pyz (a higher
version) to a daemon running the first, through a real Manager. The new daemon execs in place (same
pid) and commits once registered; a new pyz that crashes at start, or one that never registers, is
replaced by the previous one, which registers again. The Agent runs throughout."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from daemon_app import control
from daemon_app.update.selfupdate import read_marker
from daemon_app.update.state import UpdateState
from tests.helpers import ROOT, short_tmpdir, wait_until
from tests.live_update import NODE, agent_pid, kill_agent, make_site

OLD, NEW = "1.0.0", "1.1.0"
INJECT = {
    # The daemon exits as soon as `run` starts: the watcher sees the pid die.
    "crash": ('import sys as _sys\nif "run" in _sys.argv:\n'
              '    raise SystemExit("test build: crash at start")\n'),
    # The daemon runs (collects, supervises) but its Manager link never gets past connecting.
    "never_registers": '''
def _test_build_never_registers():
    import sys
    if "run" not in sys.argv:
        return
    from daemon_app.comm import link
    from daemon_app.errors import ManagerConnectError

    async def refuse(self, *args):
        raise ManagerConnectError("test build: this daemon never registers")

    link.ManagerLink._connect = refuse


_test_build_never_registers()
''',
}


def build(out: Path, version: str, inject: str | None = None) -> Path:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "DAEMON_VERSION": version}
    if inject is not None:
        script = out.with_suffix(".inject.py")
        script.write_text(INJECT[inject])
        env["DAEMON_INJECT"] = str(script)
    subprocess.run([str(ROOT / "build" / "shiv.sh")], check=True, env=env, cwd=ROOT, timeout=300,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def builds(tmp_path_factory) -> dict[str, Path]:
    """The pyz files, built once per session from this source tree (a few seconds each)."""
    if importlib.util.find_spec("shiv") is None:
        pytest.skip("shiv is not installed (make venv)")
    d = tmp_path_factory.mktemp("pyz")
    wanted = {"old": (d / "old.pyz", OLD, None), "new": (d / "new.pyz", NEW, None),
              "crash": (d / "crash.pyz", NEW, "crash"),
              "never_registers": (d / "never.pyz", NEW, "never_registers")}
    # Two at a time: each build is mostly compressing (one core), and the first test's time
    # limit includes this fixture.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(build, *args) for name, args in wanted.items()}
        return {name: future.result() for name, future in futures.items()}


class Node:
    """The daemon from <work>/bin/daemon.pyz, run like an operator does (`python3 daemon.pyz run`),
    with an environment free of this test's PYTHONPATH (the pyz must run its own code)."""

    def __init__(self, site, shiv_root: Path, old: Path) -> None:
        self.site = site
        self.pyz = site.work / "bin" / "daemon.pyz"
        self.pyz.write_bytes(old.read_bytes())
        os.chmod(self.pyz, 0o755)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PYTHON", "DAEMON_", "SHIV_", "INVOCATION_ID", "NOTIFY_SOCKET"))}
        self.env["SHIV_ROOT"] = str(shiv_root)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, config: str) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen([sys.executable, str(self.pyz), "-c", config, "run"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        return self.proc

    def daemon_pid(self) -> int:
        """The pid holding the instance lock: after a rollback the watcher started that daemon."""
        try:
            return int((self.site.work / "daemon.lock").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def stop(self) -> None:
        for pid in {self.daemon_pid(), self.proc.pid if self.proc else 0} - {0}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(10)
        marker = read_marker(str(self.site.work))
        if marker and marker.get("watcher_pid"):
            try:
                os.kill(int(marker["watcher_pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def node(tmp_path, builds, tmp_path_factory):
    site = make_site(tmp_path)
    site.install_agent("1.0.0")
    node = Node(site, tmp_path_factory.getbasetemp() / "shiv", builds["old"])
    yield node
    node.stop()
    kill_agent(site.work)
    site.stop()


def registered_as(site, version: str, after: float = 0.0) -> dict | None:
    n = site.node()
    return n if n and n["daemon_version"] == version and n["registered_at"] > after else None


def seqs(site) -> list[int]:
    store = site.store()
    try:
        return [r["seq"] for r in store.reports(NODE)]
    finally:
        store.close()


def start_old(node: Node, **update) -> int:
    node.start(node.site.daemon_config(**update))
    wait_until(lambda: registered_as(node.site, OLD) and node.site.agent_version() == "1.0.0", timeout=30,
               what=f"daemon {OLD} registered with Agent 1.0.0")
    return agent_pid(node.site.work)


class NotifySocket:
    """What systemd's NOTIFY_SOCKET receives (Type=notify): one datagram per sd_notify call."""

    def __init__(self) -> None:
        self.path = os.path.join(short_tmpdir("sd"), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.lines: list[str] = []
        threading.Thread(target=self._recv, daemon=True).start()

    def _recv(self) -> None:
        while True:
            try:
                self.lines += self.sock.recv(65536).decode().splitlines()
            except OSError:
                return

    def count(self, line: str) -> int:
        return list(self.lines).count(line)


@pytest.mark.timeout(90)
def test_self_update_to_a_higher_pyz_is_committed_and_reports_continue_without_a_gap(node, builds):
    site = node.site
    systemd = NotifySocket()
    node.env["NOTIFY_SOCKET"] = systemd.path
    agent = start_old(node, self_update_deadline="40s")
    wait_until(lambda: systemd.count("READY=1") == 1, timeout=10, what="READY=1 from the first daemon")
    pkg, rel = site.release("d2", "daemon", NEW, builds["new"].read_bytes())
    before = site.node()["registered_at"]
    cid = site.push_update(pkg, rel)

    done = site.wait_final(cid, timeout=60)
    assert done["state"] == "completed", done
    assert (done["result"]["old_version"], done["result"]["new_version"]) == (OLD, NEW)
    assert registered_as(site, NEW, before)
    assert node.proc.poll() is None and node.daemon_pid() == node.proc.pid  # exec'd in place
    assert node.pyz.read_bytes() == builds["new"].read_bytes()
    assert UpdateState(str(site.work)).floor("daemon") == NEW
    assert read_marker(str(site.work)) is None

    last = max(seqs(site))
    wait_until(lambda: max(seqs(site)) > last + 2, timeout=15, what="reports from the new daemon")
    got = seqs(site)
    assert got == list(range(1, len(got) + 1)), "a report seq is missing"
    assert agent_pid(site.work) == agent and site.agent_version() == "1.0.0"
    states = [s["state"] for s in next(u for u in site.updates() if u["id"] == cid)["statuses"]]
    assert states[-1] == "completed" and "restarting" in states, states
    # Same pid, so systemd keeps tracking it: the new daemon says READY=1 again, nobody said STOPPING=1.
    assert systemd.count("READY=1") == 2 and systemd.count("STOPPING=1") == 0, systemd.lines
    systemd.sock.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("variant", "reason"), [
    ("crash", "exited before it became healthy"),
    ("never_registers", "did not become healthy within"),
])
def test_a_new_pyz_that_crashes_or_never_registers_is_replaced_by_the_previous_one(node, builds, variant,
                                                                                    reason):
    site = node.site
    agent = start_old(node, self_update_deadline="6s")
    old_bytes = node.pyz.read_bytes()
    pkg, rel = site.release("bad", "daemon", NEW, builds[variant].read_bytes())
    before = site.node()["registered_at"]
    cid = site.push_update(pkg, rel)

    done = site.wait_final(cid, timeout=60)
    assert done["state"] == "rolled_back", done
    assert done["result"]["rolled_back"] and reason in done["result"]["error"], done["result"]
    assert registered_as(site, OLD, before), "the previous daemon did not register again"
    assert node.proc.wait(15) is not None  # the process that exec'd the bad pyz is gone
    assert node.daemon_pid() not in (0, node.proc.pid)  # the watcher started the previous one
    assert node.pyz.read_bytes() == old_bytes
    assert UpdateState(str(site.work)).floor("daemon") is None
    assert agent_pid(site.work) == agent
    wait_until(lambda: site.agent_version() == "1.0.0" and max(seqs(site)) > 0, timeout=10,
               what="the Agent still heartbeating")
    got = seqs(site)
    assert got == list(range(1, len(got) + 1)), "a report seq is missing"
    watcher_log = (site.work / "update" / "watcher.log").read_text()
    assert reason in watcher_log, watcher_log


@pytest.mark.timeout(90)
def test_stand_alone_daemon_update_through_the_control_socket_follows_the_restart_to_the_commit(node,
                                                                                             builds):
    """No Manager: `daemon update --component daemon` asks the running daemon, which execs into the
    new pyz; the CLI follows the same job in the new daemon, which commits after its first report."""
    site = node.site
    config = site.daemon_config(self_update_deadline="30s")
    raw = yaml.safe_load(Path(config).read_text())
    del raw["manager"]
    Path(config).write_text(yaml.safe_dump(raw))
    proc = node.start(config)
    wait_until(lambda: (site.work / "control.sock").exists() and agent_pid(site.work), timeout=30,
               what="the stand-alone daemon and its Agent")
    agent = agent_pid(site.work)
    pkg, rel = site.release("d2", "daemon", NEW, builds["new"].read_bytes())

    cli = subprocess.run([sys.executable, str(node.pyz), "-c", config, "update", "--component", "daemon",
                          "--file", str(pkg), "--manifest", str(rel)], env=node.env, capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout.strip().splitlines()[-1])
    assert result["success"] and (result["old_version"], result["new_version"]) == (OLD, NEW)
    for state in ("watching", "completed"):  # the new daemon's states; earlier ones may pass unseen
        assert state in cli.stderr, cli.stderr
    status = control.request(str(site.work / "control.sock"), "status")
    assert status["version"] == NEW and status["pid"] == proc.pid and status["update"] is None
    assert UpdateState(str(site.work)).floor("daemon") == NEW
    assert agent_pid(site.work) == agent
