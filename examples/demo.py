"""`make demo`: daemon.pyz end to end on loopback, with the reference Manager and the sample Agent.

Steps: build checks, a development PKI and release-signing key, the reference Manager, then
`daemon.pyz run` supervising the sample Agent; metrics arriving at the Manager; an Agent update
that succeeds and one that is rolled back; `daemon status`; a clean stop that leaves the Agent
running; cleanup. Each step prints as it goes; the demo exits non-zero when a step fails.
Everything lives in the git-ignored .demo/ folder, removed at the end (kept with --keep).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYZ = ROOT / "dist" / "daemon.pyz"
DEMO = ROOT / ".demo"
SAMPLE_AGENT = ROOT / "examples" / "sample_agent.py"
STEP_TIMEOUT = 60.0
FINAL_STATES = ("completed", "rolled_back", "failed")


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def show(cmd: list[str], shown: list[str] | None = None) -> None:
    print("$", " ".join(shown or cmd), flush=True)


def wait_for(what: str, cond: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def python_for_pyz() -> str:
    """The system python3 when it is 3.11 (as on a real host: none of our dependencies), else ours."""
    system = shutil.which("python3", path="/usr/bin")
    if system:
        ok = subprocess.run([system, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 11))"])
        if ok.returncode == 0:
            return system
    return sys.executable


class Demo:
    def __init__(self) -> None:
        self.python = python_for_pyz()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_", "SHIV_"))}
        self.env["SHIV_ROOT"] = str(DEMO / "shiv")
        self.manager_env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.work = DEMO / "work"
        self.config = DEMO / "daemon.yaml"
        self.db = DEMO / "manager.db"
        self.manager: subprocess.Popen[str] | None = None
        self.daemon: subprocess.Popen[str] | None = None
        self.node_id = ""

    # --- running things --------------------------------------------------------------------------

    def pyz(self, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [self.python, str(PYZ), "-c", str(self.config), *args]
        if not quiet:
            show(cmd, ["python3", "dist/daemon.pyz", "-c", ".demo/daemon.yaml", *args])
        result = subprocess.run(cmd, env=self.env, text=True, capture_output=True, timeout=STEP_TIMEOUT)
        if not quiet:
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
        if check and result.returncode != 0:
            raise DemoFailed(f"`daemon {' '.join(args)}` exited {result.returncode}")
        return result

    def mgr(self, *args: str, quiet: bool = False) -> str:
        cmd = [sys.executable, "-m", "daemon_manager", *args]
        if not quiet:
            show(cmd, ["daemon-manager", *(a.replace(str(DEMO), ".demo") for a in args)])
        result = subprocess.run(cmd, env=self.manager_env, text=True, capture_output=True,
                                timeout=STEP_TIMEOUT, cwd=ROOT)
        if not quiet:
            sys.stdout.write(result.stdout)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise DemoFailed(f"`daemon-manager {args[0]}` exited {result.returncode}")
        return result.stdout

    def mgr_json(self, *args: str) -> Any:
        return json.loads(self.mgr(*args, "--format", "json", quiet=True))

    # --- steps -----------------------------------------------------------------------------------

    def make_pki_and_keys(self) -> None:
        step("a development PKI (CA, Manager and node certificates) and a release-signing key")
        self.mgr("pki", "init", str(DEMO / "pki"), "--node", "demo-node")
        keys = DEMO / "keys"
        keys.mkdir()
        for cmd in (["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(keys / "release.pem")],
                    ["openssl", "pkey", "-in", str(keys / "release.pem"), "-pubout",
                     "-out", str(keys / "update.pub")]):
            show(cmd, [c.replace(str(DEMO), ".demo") for c in cmd])
            subprocess.run(cmd, check=True, capture_output=True)

    def start_manager(self) -> str:
        step("start the reference Manager on a free loopback port (gRPC + HTTPS, mutual TLS)")
        cmd = [sys.executable, "-m", "daemon_manager", "serve", "--listen", "127.0.0.1:0",
               "--db", str(self.db), "--tls-dir", str(DEMO / "pki")]
        show(cmd, ["daemon-manager", "serve", "--listen", "127.0.0.1:0", "--db", ".demo/manager.db",
                   "--tls-dir", ".demo/pki"])
        log = open(DEMO / "manager.log", "w")  # noqa: SIM115 - lives as long as the Manager
        self.manager = subprocess.Popen(cmd, env=self.manager_env, stdout=subprocess.PIPE, stderr=log,
                                        text=True, cwd=ROOT)
        assert self.manager.stdout is not None
        first = self.manager.stdout.readline().strip()
        if not first:
            raise DemoFailed("the Manager did not start; see .demo/manager.log")
        address = first.split()[-1]
        print(f"Manager listening on {address}")
        return address

    def make_agent(self, version: str, *, exits_at_start: bool = False) -> Path:
        """A copy of the sample Agent whose built-in VERSION is `version`."""
        text = SAMPLE_AGENT.read_text().replace('VERSION = "1.0.0"', f'VERSION = "{version}"', 1)
        if exits_at_start:
            text = text.replace("\nif __name__ == \"__main__\":",
                                "\nif __name__ == \"__main__\":\n    sys.exit(3)  # a broken release", 1)
        path = DEMO / "packages" / f"agent-{version}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        return path

    def write_config(self, address: str) -> None:
        pki = DEMO / "pki"
        agent_bin = DEMO / "agent" / "bin" / "agent"
        agent_bin.parent.mkdir(parents=True)
        shutil.copy2(self.make_agent("1.0.0"), agent_bin)
        w = self.work
        self.config.write_text(f"""\
daemon:
  work_dir: {w}
  log_file: {w}/daemon.log
  pid_file: {w}/daemon.pid
  report_interval: 2s
manager:
  address: {address}
  tls: {{cert_file: {pki}/demo-node.crt, key_file: {pki}/demo-node.key, ca_file: {pki}/ca.crt}}
  heartbeat_interval: 5s
  reconnect_interval: 500ms
agent:
  binary_path: {agent_bin}
  args: ["--interval", "1", "--config", "{DEMO}/agent/agent.conf"]
  config_file: {DEMO}/agent/agent.conf
  work_dir: {DEMO}/agent/work
  socket_path: {w}/agent.sock
  stop_timeout: 5s
  health_check: {{interval: 1s, heartbeat_timeout: 10s}}
  restart: {{backoff_base: 500ms}}
remote_config:
  enabled: true
  verify_timeout: 5s
collectors:
  cpu: {{interval: 1s}}
  memory: {{interval: 1s}}
  disk: {{interval: 2s}}
  network: {{interval: 1s}}
update:
  download_dir: {w}/downloads
  backup_dir: {w}/backups
  public_key_file: {DEMO}/keys/update.pub
  verify_timeout: 10s
""")

    def start_daemon(self) -> None:
        step("start `daemon.pyz run` with the sample Agent, on the system's python3")
        self.pyz("config", "check")
        cmd = [self.python, str(PYZ), "-c", str(self.config), "run"]
        show(cmd, ["python3", "dist/daemon.pyz", "-c", ".demo/daemon.yaml", "run", "&"])
        self.daemon = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                       stderr=open(DEMO / "daemon.stderr", "w"))  # noqa: SIM115
        node_file = self.work / "node_id"
        wait_for("the daemon to create its node id", node_file.exists)
        self.node_id = node_file.read_text().strip()

    def show_metrics_at_manager(self) -> None:
        step("metrics arrive at the Manager")
        wait_for("the node to register", lambda: any(
            n.get("node_id") == self.node_id for n in self.mgr_json("nodes", "--db", str(self.db))))
        self.mgr("nodes", "--db", str(self.db))
        wait_for("two reports at the Manager", lambda: len(self.mgr_json(
            "reports", "--db", str(self.db), "--node", self.node_id)) >= 2)
        reports = self.mgr_json("reports", "--db", str(self.db), "--node", self.node_id, "--last", "1")
        last = reports[-1]
        metrics = last.get("metrics", {})
        cpu = metrics.get("cpu", {}).get("values", {})
        mem = metrics.get("memory", {}).get("values", {})
        print(f"report seq {last.get('seq')}: cpu {cpu.get('usage_percent')}% of {cpu.get('cores')} cores, "
              f"memory {mem.get('used_percent')}% used; metrics: {', '.join(sorted(metrics))}")

    def agent_status(self) -> dict[str, Any]:
        result = self.pyz("status", "--format", "json", quiet=True, check=False)
        if result.returncode != 0:
            return {}
        return json.loads(result.stdout).get("agent") or {}

    def push_update(self, version: str, *, exits_at_start: bool = False) -> dict[str, Any]:
        package = self.make_agent(version, exits_at_start=exits_at_start)
        release = DEMO / "releases" / version
        self.mgr("release", "sign", "--key", str(DEMO / "keys" / "release.pem"), "--component", "agent",
                 "--version", version, "--file", str(package), "--expires", "1d", "--out", str(release))
        self.mgr("push-update", "--db", str(self.db), "--node", self.node_id, "--file", str(package),
                 "--manifest", str(release))

        def final() -> dict[str, Any] | None:
            for update in self.mgr_json("updates", "--db", str(self.db), "--node", self.node_id):
                if update.get("version") == version and update.get("state") in FINAL_STATES:
                    return update
            return None

        update = wait_for(f"the update to {version} to finish", final)
        self.mgr("updates", "--db", str(self.db), "--node", self.node_id)
        return update

    def updates(self) -> None:
        step("push an Agent update (1.1.0) that succeeds")
        wait_for("the Agent to be RUNNING at 1.0.0", lambda: (
            (s := self.agent_status()).get("state") == "RUNNING" and s.get("version") == "1.0.0"))
        good = self.push_update("1.1.0")
        if good.get("state") != "completed":
            raise DemoFailed(f"the good update ended {good.get('state')}: {good.get('result')}")
        wait_for("heartbeats from Agent 1.1.0", lambda: self.agent_status().get("version") == "1.1.0")
        print("the Agent now reports version 1.1.0")

        step("push an Agent update (1.2.0) whose Agent exits at start: it is rolled back")
        bad = self.push_update("1.2.0", exits_at_start=True)
        if bad.get("state") != "rolled_back":
            raise DemoFailed(f"the bad update ended {bad.get('state')}, expected rolled_back")
        wait_for("the old Agent (1.1.0) to run again", lambda: (
            (s := self.agent_status()).get("state") == "RUNNING" and s.get("version") == "1.1.0"))
        print("rolled back: Agent 1.1.0 is running again")

    def push_config(self, name: str, content: str) -> dict[str, Any]:
        path = DEMO / "packages" / name
        path.write_text(content)
        command_id = self.mgr("push-config", "--db", str(self.db), "--node", self.node_id, "--agent-config",
                              str(path)).strip()

        def final() -> dict[str, Any] | None:
            pushes = self.mgr_json("configs", "--db", str(self.db), "--node", self.node_id)["pushes"]
            return next((p for p in pushes if p["id"] == command_id and p["state"] in FINAL_STATES), None)

        push = wait_for(f"the config push {name} to finish", final)
        self.mgr("configs", "--db", str(self.db), "--node", self.node_id)
        return push

    def configs(self) -> None:
        step("push an Agent config that is good: checked, swapped, verified for 5 s, committed")
        good = self.push_config("agent-good.conf", "# demo settings\nlevel: info\n")
        if good.get("state") != "completed":
            raise DemoFailed(f"the good config ended {good.get('state')}: {good.get('result')}")
        step("push an Agent config that makes the Agent exit at start: it is rolled back")
        bad = self.push_config("agent-bad.conf", "exit-at-start: 2\n")
        if bad.get("state") != "rolled_back":
            raise DemoFailed(f"the bad config ended {bad.get('state')}, expected rolled_back")
        wait_for("the Agent to run again on the good config",
                 lambda: self.agent_status().get("state") == "RUNNING")
        print("rolled back: the Agent runs on the good config again")

    def status_and_stop(self) -> None:
        step("`daemon status`")
        self.pyz("status")
        agent_pid = int(self.agent_status().get("pid") or 0)
        step("stop the daemon (SIGTERM): it flushes and exits 0; the Agent keeps running")
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(45)
        print(f"daemon exited with code {code}")
        if code != 0:
            raise DemoFailed(f"the daemon exited {code} on SIGTERM")
        if agent_pid and not _alive(agent_pid):
            raise DemoFailed("the Agent stopped with the daemon")
        print(f"Agent pid {agent_pid} is still running")

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        _kill_agent(self.work / "agent.pid")
        if self.manager is not None and self.manager.poll() is None:
            self.manager.send_signal(signal.SIGTERM)
            try:
                self.manager.wait(15)
            except subprocess.TimeoutExpired:
                self.manager.kill()

    def run(self) -> None:
        step(f"dist/daemon.pyz runs on {self.python} (none of our dependencies installed there)")
        self.pyz("version")
        self.make_pki_and_keys()
        address = self.start_manager()
        self.write_config(address)
        self.start_daemon()
        self.show_metrics_at_manager()
        self.updates()
        self.configs()
        self.status_and_stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_agent(pid_file: Path) -> None:
    """The Agent outlives the daemon by design; the demo stops it by hand when it is done."""
    try:
        pid = int(json.loads(pid_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> int:
    if not PYZ.exists():
        print(f"{PYZ} is missing: run `make pyz` first", file=sys.stderr)
        return 1
    keep = "--keep" in sys.argv[1:]
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    started = time.monotonic()
    demo = Demo()
    try:
        demo.run()
    except (DemoFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        for name in ("daemon.stderr", "manager.log", "work/daemon.log"):
            path = DEMO / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of .demo/{name}:", *tail, sep="\n", file=sys.stderr)
        return 1
    finally:
        demo.cleanup()
        if not keep:
            shutil.rmtree(DEMO, ignore_errors=True)
    print(f"\ndemo OK in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
