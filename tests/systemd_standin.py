"""A small stand-in for systemd, for tests on machines where systemd is not PID 1.

As a module: `parse_unit` reads a unit file and `restarts` is systemd's Restart= table
(systemd.service(5), "Table 2. Exit causes and the effect of the Restart= settings").
As a script: `python systemd_standin.py UNIT_FILE STATE_DIR -- COMMAND...` runs COMMAND the way the
unit's [Service] section says systemd would: INVOCATION_ID and the unit's Environment= set (with
%n), Restart=/RestartSec=/RestartPreventExitStatus=/StartLimit* applied to every exit of the main
process, and `systemctl start|restart|stop UNIT` served through a fake `systemctl` first on PATH.
Every start, exit, decision and request is a JSON line in STATE_DIR/events.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CLEAN_SIGNALS = {"SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE"}
POLICIES = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog")


@dataclass
class Unit:
    name: str
    restart: str = "no"
    restart_sec: float = 0.1
    prevent: set[str] = field(default_factory=set)
    environment: dict[str, str] = field(default_factory=dict)
    start_limit_interval: float = 10.0
    start_limit_burst: int = 5


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    text = text.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def parse_unit(text: str, name: str) -> Unit:
    unit = Unit(name)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "Restart":
            assert value in POLICIES, value
            unit.restart = value
        elif key == "RestartSec":
            unit.restart_sec = _seconds(value)
        elif key == "RestartPreventExitStatus":
            unit.prevent |= set(value.split())
        elif key == "Environment":
            env_key, env_value = value.split("=", 1)
            unit.environment[env_key] = env_value.replace("%n", name)
        elif key == "StartLimitIntervalSec":
            unit.start_limit_interval = _seconds(value)
        elif key == "StartLimitBurst":
            unit.start_limit_burst = int(value)
    return unit


def restarts(unit: Unit, cause: str, value: int | str | None = None) -> bool:
    """Does systemd start the unit again after its main process ended this way?
    cause: "exit" (value = exit code), "signal" (value = signal name), "timeout", "watchdog"."""
    if (cause == "exit" and str(value) in unit.prevent) or (cause == "signal" and value in unit.prevent):
        return False
    clean = (cause == "exit" and value == 0) or (cause == "signal" and value in CLEAN_SIGNALS)
    policy = unit.restart
    if policy == "always":
        return True
    if policy == "on-success":
        return clean
    if policy == "on-failure":
        return not clean
    if policy == "on-abnormal":
        return cause in ("timeout", "watchdog") or (cause == "signal" and not clean)
    if policy == "on-abort":
        return cause == "signal" and not clean
    if policy == "on-watchdog":
        return cause == "watchdog"
    return False


SYSTEMCTL = '''#!{python}
import os, sys, time
if os.environ.get("SYSTEMCTL_STANDIN_FAIL"):  # a test of what happens when systemd cannot be asked
    print("Failed to connect to bus", file=sys.stderr)
    sys.exit(1)
args = [a for a in sys.argv[1:] if not a.startswith("-")]
if len(args) != 2 or args[0] not in ("start", "restart", "stop"):
    print("systemctl stand-in: unsupported %r" % sys.argv[1:], file=sys.stderr)
    sys.exit(1)
if args[1] != {unit!r}:
    print("Unit %s not found." % args[1], file=sys.stderr)
    sys.exit(5)
requests = {requests!r}
tmp = os.path.join(requests, ".%d.tmp" % os.getpid())
with open(tmp, "w") as fh:
    fh.write(args[0])
os.replace(tmp, os.path.join(requests, "%d-%d" % (time.time_ns(), os.getpid())))
'''


class StandIn:
    def __init__(self, unit: Unit, state: Path, command: list[str]) -> None:
        self.unit, self.state, self.command = unit, state, command
        self.requests = state / "requests"
        self.requests.mkdir(parents=True, exist_ok=True)
        bin_dir = state / "bin"
        bin_dir.mkdir(exist_ok=True)
        ctl = bin_dir / "systemctl"
        ctl.write_text(SYSTEMCTL.format(python=sys.executable, unit=unit.name, requests=str(self.requests)))
        ctl.chmod(0o755)
        self.env = dict(os.environ, INVOCATION_ID=uuid.uuid4().hex, **unit.environment)
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending_restart: float | None = None
        self.starts: list[float] = []
        self.stopping = False

    def log(self, event: str, **fields: object) -> None:
        with open(self.state / "events.jsonl", "a") as fh:
            fh.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    def start(self, why: str) -> None:
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < self.unit.start_limit_interval] + [now]
        if len(self.starts) > self.unit.start_limit_burst:
            self.log("start-limit-hit", why=why)
            return
        self.proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)
        self.pending_restart = None
        self.log("started", pid=self.proc.pid, why=why)

    def stop_main(self) -> None:
        """KillMode=process: SIGTERM to the main process only, SIGKILL after the stop timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log("stopped", pid=self.proc.pid, returncode=self.proc.returncode)

    def handle_requests(self) -> None:
        for path in sorted(p for p in self.requests.iterdir() if not p.name.startswith(".")):
            action = path.read_text()
            path.unlink()
            self.log("request", action=action)
            if action == "stop":
                self.pending_restart = None
                self.stop_main()
            elif action == "restart":
                self.stop_main()
                self.start("systemctl restart")
            elif action == "start" and (self.proc is None or self.proc.poll() is not None):
                self.start("systemctl start")

    def reap(self) -> None:
        if self.proc is None or self.pending_restart is not None:
            return
        code = self.proc.poll()
        if code is None:
            return
        cause, value = ("signal", signal.Signals(-code).name) if code < 0 else ("exit", code)
        again = restarts(self.unit, cause, value)
        self.log("exited", pid=self.proc.pid, cause=cause, value=value, restart=again)
        self.proc = None
        if again:
            self.pending_restart = time.monotonic() + self.unit.restart_sec

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        self.start("initial")
        while not self.stopping:
            self.handle_requests()
            self.reap()
            if self.pending_restart is not None and time.monotonic() >= self.pending_restart:
                self.start(f"Restart={self.unit.restart}")
            time.sleep(0.05)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str]) -> int:
    unit_file, state, sep, *command = argv
    assert sep == "--" and command, "usage: systemd_standin.py UNIT_FILE STATE_DIR -- COMMAND..."
    path = Path(unit_file)
    StandIn(parse_unit(path.read_text(), path.name), Path(state), command).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
