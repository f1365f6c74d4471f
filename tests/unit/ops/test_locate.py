"""Finding the running daemon without -c: the installed config first, then this user's running
daemons as /proc shows them (a process holding a daemon.lock, its -c or $DAEMON_CONFIG)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_app import locate
from tests.helpers import wait_until

HOLD_LOCK = ("import fcntl, os, sys, time\n"
             "fd = os.open(os.path.join(sys.argv[1], 'daemon.lock'), os.O_RDWR | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "time.sleep(60)\n")


@pytest.fixture
def lock_holder(work_dir: Path):
    """start(*argv_tail, env=) -> a real process holding <work_dir>/daemon.lock, argv `... WORK tail`."""
    started: list[subprocess.Popen[str]] = []

    def start(*tail: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_dir), *tail], cwd=work_dir,
                                env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def test_a_running_daemons_relative_config_is_resolved_against_its_own_directory(work_dir, lock_holder):
    proc = lock_holder("--config=sub/d.yaml", "run")
    assert (proc.pid, str(work_dir / "sub" / "d.yaml")) in locate.running_daemons()


def test_dash_c_wins_over_daemon_config_in_the_environment(work_dir, lock_holder):
    by_flag = lock_holder("-c", "/etc/x.yaml", "run", env={"DAEMON_CONFIG": "/etc/y.yaml"})
    found = dict(locate.running_daemons())
    assert found[by_flag.pid] == "/etc/x.yaml"


def test_daemon_config_from_the_environment_and_none_for_the_defaults(work_dir, lock_holder):
    by_env = lock_holder("run", env={"DAEMON_CONFIG": "e.yaml"})
    assert dict(locate.running_daemons())[by_env.pid] == str(work_dir / "e.yaml")


def test_a_process_without_run_or_without_the_lock_is_not_a_daemon(work_dir, lock_holder):
    status_like = lock_holder("-c", "x.yaml", "status")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "run"])
    try:
        wait_until(lambda: Path(f"/proc/{other.pid}/cmdline").read_bytes().endswith(b"run\0"), 10)
        pids = {pid for pid, _ in locate.running_daemons()}
        assert status_like.pid not in pids and other.pid not in pids
    finally:
        other.kill()
        other.wait(10)


def test_the_installed_configs_daemon_is_asked_first_when_it_answers(work_dir, monkeypatch):
    installed = work_dir / "installed.yaml"
    installed.write_text(f"daemon:\n  work_dir: {work_dir / 'state'}\n")
    monkeypatch.setattr(locate, "INSTALLED_CONFIG", str(installed))
    (work_dir / "state").mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(work_dir / "state" / "control.sock"))
        listener.listen(8)
        chosen = locate.choose(None, "-c")
        assert chosen == locate.Candidate(str(work_dir / "state" / "control.sock"),
                                          f"from the installed config {installed}")
    finally:
        listener.close()


def test_a_broken_config_still_names_its_control_socket(work_dir):
    broken = work_dir / "broken.yaml"
    broken.write_text(f"daemon:\n  work_dir: {work_dir}\n  report_interval: soon\n")
    assert locate.control_socket_of(str(broken)) == str(work_dir / "control.sock")
    garbage = work_dir / "garbage.yaml"
    garbage.write_bytes(b"\xff\xfe: [")
    assert locate.control_socket_of(str(garbage)) == "/var/lib/daemon/control.sock"


def test_the_lock_holders_are_found_through_their_open_file_not_the_lock_state(work_dir):
    fd = os.open(work_dir / "daemon.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert os.getpid() not in {pid for pid, _ in locate.running_daemons()}  # never itself
    finally:
        os.close(fd)


@pytest.mark.parametrize(("argv", "config"), [
    (["python3", "/opt/daemon/daemon.pyz", "-c", "/etc/daemon/daemon.yaml", "run"],
     "/etc/daemon/daemon.yaml"),
    (["/usr/bin/python3.11", "-X", "dev", "-u", "-m", "daemon_app", "--config", "d.yaml", "run"], "d.yaml"),
    (["/usr/bin/python3", "-c", "code", "--config=x.yaml", "run"], "x.yaml"),
    (["/venv/bin/daemon", "-c", "y.yaml", "run"], "y.yaml"),
])
def test_the_daemons_own_config_argument_is_told_from_the_interpreters(argv, config):
    assert locate._config_of(os.getpid(), argv) == os.path.join(os.getcwd(), config)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_users_process_or_socket_is_never_taken_for_our_daemon(work_dir):
    """As root, a user's process posing as a daemon (a daemon.lock, `-c evil.yaml run`) is ignored,
    and so is a control socket that user owns."""
    python = "/usr/bin/python3"  # one the other user may run (ours lives under root's home)
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} is needed to run a process as another user")
    os.chmod(work_dir, 0o777)
    other = subprocess.Popen([python, "-c", HOLD_LOCK, str(work_dir), "-c", "evil.yaml", "run"],
                             cwd=work_dir, stdout=subprocess.PIPE, text=True, user=65534, group=65534)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert other.stdout is not None and other.stdout.readline() == "locked\n"
        assert other.pid not in {pid for pid, _ in locate.running_daemons()}
        path = str(work_dir / "control.sock")
        listener.bind(path)
        listener.listen(8)
        assert locate.answers(path)
        os.chown(path, 65534, 65534)
        assert not locate.answers(path)
    finally:
        listener.close()
        other.kill()
        other.wait(10)
