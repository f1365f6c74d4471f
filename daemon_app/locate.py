"""Find the running daemon's control socket for `status` and `reload` when no -c names it.

Operators type `daemon.pyz status` and expect the daemon that runs, whichever config it runs
with. The candidates, in order: --socket; -c or $DAEMON_CONFIG; the installed config
(/etc/daemon/daemon.yaml); then the daemons of this user that are running now, found the way
`pgrep` would (a process holding a `daemon.lock` open, its -c argument or $DAEMON_CONFIG read from
/proc). Nothing is written anywhere to make this work.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from daemon_app import config as config_mod
from daemon_app import instance
from daemon_app.errors import ControlError, DaemonError

INSTALLED_CONFIG = "/etc/daemon/daemon.yaml"
_LOCK_NAME = instance.LOCK_NAME


@dataclass(frozen=True)
class Candidate:
    socket: str
    how: str  # how it was chosen, for the operator: "from -c daemon.yaml"


def control_socket_of(config_path: str | None) -> str:
    """The control socket a config names, even when the file on disk is currently broken (so
    `reload` can still reach the daemon and show what it refuses)."""
    try:
        return config_mod.load(config_path).daemon.control_socket
    except DaemonError:
        pass
    raw: Any = None
    if config_path:
        try:
            raw = config_mod.read_raw(config_path)  # bounded like load(): the file may be a bomb
        except DaemonError:
            raw = None
    section = raw.get("daemon") if isinstance(raw, dict) else None
    section = section if isinstance(section, dict) else {}
    work_dir = section.get("work_dir") or config_mod.SCHEMA["daemon"]["work_dir"].default
    work_dir = os.path.abspath(str(work_dir))
    sock = section.get("control_socket")
    sock = sock if isinstance(sock, str) and sock else "control.sock"
    return os.path.join(work_dir, sock)


def answers(path: str) -> bool:
    """A socket of ours (or root's) accepts connections there (cheap: no request is sent). Another
    user's socket is never asked: as root, a user's process must not be able to pose as the daemon."""
    try:
        if os.stat(path).st_uid not in (0, os.getuid()):
            return False
    except OSError:
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(2.0)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def choose(config_path: str | None, config_from: str) -> Candidate:
    """Where to ask. `config_from` says where config_path came from (-c, $DAEMON_CONFIG).

    Without a config: the installed config's daemon when it answers, else the one running daemon
    of this user; several running ones are ambiguous (SeveralDaemons lists them). When nothing
    answers, the installed config's (or the defaults') socket, so the error names where it looked.
    """
    if config_path:
        return Candidate(control_socket_of(config_path), f"from {config_from} {config_path}")
    fallback = Candidate(control_socket_of(None), "from the built-in defaults")
    if os.path.exists(INSTALLED_CONFIG):
        fallback = Candidate(control_socket_of(INSTALLED_CONFIG),
                             f"from the installed config {INSTALLED_CONFIG}")
        if answers(fallback.socket):
            return fallback
    live: dict[str, Candidate] = {}
    for pid, path in running_daemons():
        sock = control_socket_of(path)
        if sock not in live and answers(sock):
            live[sock] = Candidate(sock, f"of the running daemon pid {pid} "
                                         f"({f'config {path}' if path else 'built-in defaults'})")
    if len(live) > 1:
        found = "; ".join(c.how.replace("of the running daemon ", "") for c in live.values())
        raise SeveralDaemons(f"{len(live)} daemons are running; name one with -c FILE or --socket PATH: "
                             f"{found}")
    return next(iter(live.values()), fallback)


class SeveralDaemons(ControlError):
    """More than one daemon of this user runs and nothing says which one is meant."""


def running_daemons() -> list[tuple[int, str | None]]:
    """(pid, absolute config path or None) of every `... run` process of ours holding a daemon.lock."""
    out = []
    me, uid = os.getpid(), os.getuid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in sorted(pids):
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
            if b"run" not in argv or not _holds_lock(pid):
                continue
            out.append((pid, _config_of(pid, [a.decode(errors="replace") for a in argv])))
        except OSError:  # gone, or not ours to read
            continue
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64 * 1024)


def _holds_lock(pid: int) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.path.basename(os.readlink(os.path.join(fd_dir, fd))) == _LOCK_NAME:
                return True
        except OSError:
            continue
    return False


def _program_args(argv: list[str]) -> list[str]:
    """argv without the interpreter and its own options: `python3 -X dev -c CODE` or `python3 -m MOD`
    or `python3 daemon.pyz` leave what follows the code, module or script (python's own -c is not
    the daemon's -c)."""
    if not os.path.basename(argv[0]).startswith("python"):
        return argv[1:]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "-m"):
            return argv[i + 2:]
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            i += 2
            continue
        if not arg.startswith("-") or arg == "-":
            return argv[i + 1:]
        i += 1
    return []


def _config_of(pid: int, argv: list[str]) -> str | None:
    """The -c/--config argument (relative to the process's cwd), else its $DAEMON_CONFIG."""
    path = None
    argv = _program_args(argv)
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            path = argv[i + 1]
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            break
    if path is None:
        env = _read(f"/proc/{pid}/environ").split(b"\0")
        prefix = f"{config_mod.ENV_CONFIG}=".encode()
        path = next((e[len(prefix):].decode(errors="replace") for e in env if e.startswith(prefix)), None)
    if not path:
        return None
    return os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
