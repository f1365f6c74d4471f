"""Agent process helpers: /proc parsing, the pid file, clean environment, copy-truncate rotation, tails."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

from daemon_app import config
from daemon_app.agent.process import (
    clean_env,
    proc_stat,
    read_pid_file,
    rotate_copy_truncate,
    start_ticks,
    tail_lines,
    write_pid_file,
)


def test_proc_stat_survives_a_command_name_with_spaces_and_parentheses(tmp_path):
    odd = tmp_path / "x) (y z"
    shutil.copy(sys.executable, odd)
    proc = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        state, ticks = proc_stat(proc.pid)
        with open("/proc/self/stat") as fh:
            mine = int(fh.read().rsplit(")", 1)[1].split()[19])
        assert state in "RSD" and ticks >= mine
        assert start_ticks(proc.pid) == ticks
    finally:
        proc.kill()
        proc.wait()
    assert proc_stat(proc.pid) is None and start_ticks(proc.pid) is None


def test_pid_file_round_trip_and_garbage_is_ignored_with_a_warning(tmp_path, caplog):
    path = str(tmp_path / "agent.pid")
    assert read_pid_file(path) is None
    write_pid_file(path, 1234, 5678, "/bin/agent")
    assert read_pid_file(path) == (1234, 5678)
    assert json.loads(open(path).read())["binary"] == "/bin/agent"
    for garbage in ("not json", '{"pid": "1234", "start_ticks": 1}', '{"pid": 1, "start_ticks": 1}', "[]",
                    "[" * 60000, '{"pid": 1' + "0" * 5000 + ', "start_ticks": 1}',
                    '{"pid": true, "start_ticks": 1}',
                    '{"pid": 1234, "start_ticks": 1, "pad": "' + "x" * 10000 + '"}', "\xff\xfe", "{}"):
        with open(path, "w") as fh:
            fh.write(garbage)
        with caplog.at_level(logging.WARNING):
            assert read_pid_file(path) is None
    assert "ignoring unreadable agent pid file" in caplog.text


def test_clean_env_carries_only_what_the_agent_needs(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LISTEN_FDS", "3")
    monkeypatch.setenv("PATH", "/opt/bin:/usr/bin")
    monkeypatch.delenv("LANG", raising=False)
    env = clean_env("/run/agent.sock", "/etc/agent.yaml")
    assert env == {"PATH": "/opt/bin:/usr/bin", "LANG": "C.UTF-8", "AGENT_SOCKET": "/run/agent.sock",
                   "AGENT_CONFIG": "/etc/agent.yaml"}


def test_copy_truncate_keeps_the_writer_appending_and_shifts_backups(tmp_path):
    path = str(tmp_path / "stderr.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"a" * 100 + b"\n")
        assert not rotate_copy_truncate(path, 1000, 2)
        assert rotate_copy_truncate(path, 50, 2)
        assert os.path.getsize(path) == 0 and os.path.getsize(path + ".1") == 101
        os.write(fd, b"b" * 60 + b"\n")  # the writer's next line lands at the start, no hole
        assert open(path, "rb").read() == b"b" * 60 + b"\n"
        assert rotate_copy_truncate(path, 50, 2)
        assert open(path + ".2", "rb").read().startswith(b"a") and open(path + ".1", "rb").read()[:1] == b"b"
        os.write(fd, b"c" * 60 + b"\n")
        assert rotate_copy_truncate(path, 50, 2)
        assert not os.path.exists(path + ".3")
    finally:
        os.close(fd)


def test_tail_reads_only_this_process_output_and_falls_back_after_rotation(tmp_path):
    path = str(tmp_path / "stderr.log")
    with open(path, "w") as fh:
        fh.write("old 1\nold 2\n")
    offset = os.path.getsize(path)
    with open(path, "a") as fh:
        fh.writelines(f"new {i}\n" for i in range(30))
    tail = tail_lines(path, 20, since=offset)
    assert tail[0] == "new 10" and tail[-1] == "new 29" and len(tail) == 20
    assert tail_lines(path, 5, max_bytes=20)[-1] == "new 29"
    assert tail_lines(path, since=os.path.getsize(path)) == []
    rotate_copy_truncate(path, 10, 1)
    assert tail_lines(path, 3, since=offset) == ["new 27", "new 28", "new 29"]
    assert tail_lines(str(tmp_path / "missing.log")) == []


def test_agent_config_has_start_seconds_and_rejects_bad_values():
    cfg = config.validate({"agent": {"start_seconds": "250ms"}})
    assert cfg.agent.start_seconds == 0.25
    try:
        config.validate({"agent": {"start_seconds": "soon"}})
    except config.ConfigValidateError as exc:
        assert "agent.start_seconds" in str(exc) and "D1002" in str(exc)
    else:
        raise AssertionError("accepted a bad duration")
