"""Peer benchmark: supervisord restarting the same sample Agent after kill -9 (issue 7 §3)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, arg_parser, children, cmdline, emit, log, percentile, rss_mb, wait_until

VENV = ROOT / "bench" / ".peers" / "supervisor"
SAMPLE_AGENT = ROOT / "examples" / "sample_agent.py"
# Used until examples/sample_agent.py exists: an Agent that only sleeps, so restarts still compare.
STAND_IN = "import time\nwhile True: time.sleep(3600)"


def ensure_supervisor() -> tuple[Path, str]:
    """supervisord from a private venv under bench/.peers/, created with pip when missing."""
    supervisord = VENV / "bin" / "supervisord"
    if not supervisord.exists():
        log(f"installing supervisor into {VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "supervisor"], check=True)
    version = subprocess.run([str(supervisord), "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return supervisord, version


class HeartbeatSink:
    """A Unix socket the Agent heartbeats to; counts connections so we know a new Agent is up."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.sock.close()


def write_config(tmp: Path, agent_cmd: str, agent_socket: str) -> Path:
    conf = tmp / "supervisord.conf"
    conf.write_text(f"""\
[unix_http_server]
file={tmp}/supervisor.sock

[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:agent]
command={agent_cmd}
autorestart=true
startsecs=0
startretries=1000
stopsignal=KILL
environment=AGENT_SOCKET="{agent_socket}"
stdout_logfile={tmp}/agent.out
stderr_logfile={tmp}/agent.err
""")
    return conf


def agent_pid(supervisord_pid: int, marker: str, other_than: int = 0) -> int:
    """The Agent child of supervisord once it has exec'ed the Agent command (0 while not)."""
    for pid in children(supervisord_pid):
        if pid != other_than and any(marker in arg for arg in cmdline(pid)):
            return pid
    return 0


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--agent", type=Path, default=SAMPLE_AGENT,
                        help="the Agent script to supervise (default examples/sample_agent.py)")
    parser.add_argument("--samples", type=int, default=0, help="kill -9 count (default 20, quick 8)")
    args = parser.parse_args()
    samples = args.samples or (8 if args.quick else 20)
    try:
        supervisord, version = ensure_supervisor()
    except (OSError, subprocess.CalledProcessError) as exc:
        log(f"supervisord could not be installed: {exc}")
        emit({"_peer": {"available": False, "note": f"could not install supervisor with pip: {exc}"}})
        return

    tmp = Path(tempfile.mkdtemp(prefix="bsv", dir="/tmp"))
    agent_socket = str(tmp / "agent.sock")
    heartbeats = args.agent.exists()
    if heartbeats:
        agent_cmd, marker, which = f"{sys.executable} {args.agent}", str(args.agent), "sample Agent"
    else:
        stand_in = tmp / "stand_in_agent.py"
        stand_in.write_text(STAND_IN + "\n")
        agent_cmd, marker, which = f"{sys.executable} {stand_in}", str(stand_in), "stand-in sleeper"
    sink = HeartbeatSink(agent_socket)
    conf = write_config(tmp, agent_cmd, agent_socket)
    proc = subprocess.Popen([str(supervisord), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    times_ms: list[float] = []
    try:
        pid = wait_until(lambda: agent_pid(proc.pid, marker), timeout=20,
                         what="supervisord to start the Agent")
        log(f"supervisord {version} (pid {proc.pid}) runs the {which} (pid {pid}); {samples} kill -9 rounds")
        for i in range(samples):
            # Let the Agent settle (connected, when it heartbeats) before it is killed again.
            if heartbeats:
                wait_until(lambda n=i: sink.connections > n, timeout=20, what="the Agent's heartbeat")
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            pid = wait_until(lambda old=pid: agent_pid(proc.pid, marker, other_than=old),
                             timeout=20, interval=0.0005, what="supervisord to restart the Agent")
            times_ms.append((time.perf_counter() - t0) * 1000)
        rss = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    p50 = percentile(times_ms, 50)
    log(f"restart ms: p50 {p50:.1f}, max {max(times_ms):.1f}, samples {[round(t, 1) for t in times_ms]}")
    log(f"supervisord RSS {rss} MB")
    emit({
        "peer_supervisord_restart_ms_p50": round(p50, 2),
        "peer_supervisord_restart_ms_max": round(max(times_ms), 2),
        "peer_supervisord_rss_mb": rss,
        "_peer": {"available": True, "version": f"supervisord {version}",
                  "note": f"supervising the {which}, autorestart=true, startsecs=0, {samples} kill -9"},
    })


if __name__ == "__main__":
    main()
