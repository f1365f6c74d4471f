"""The self-update watcher (a stdlib-only script the daemon writes and starts with its own
sys.executable) restores the previous pyz under every Python the pyz supports, 3.9 to 3.13.

Real interpreters (this machine's pyenv builds), a real dead pid, real files; the watcher is the
very text daemon_app.update.selfupdate writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from daemon_app.update.selfupdate import WATCHER_SOURCE
from tests.e2e.test_pyz_hosts import SUPPORTED, pyenv_python


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("minor", SUPPORTED)
def test_the_watcher_restores_the_previous_pyz_when_the_new_daemon_died_on_python(minor, tmp_path):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv Python {minor} on this machine")
    target, backup = tmp_path / "daemon.pyz", tmp_path / "daemon.pyz.bak"
    target.write_bytes(b"the new pyz, which crashed")
    backup.write_bytes(b"the previous pyz")
    marker = tmp_path / "pending.json"
    marker.write_text(json.dumps({
        "status": "pending", "pid": dead_pid(), "pid_start": "0", "deadline": time.time() + 60,
        "deadline_s": 60, "target": str(target), "backup": str(backup), "mode": 0o755,
        "systemd": True,  # systemd restarts the daemon: the watcher only restores the file
        "python": python, "args": []}))
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER_SOURCE)
    result = subprocess.run([python, "-I", str(script), str(marker)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "exited before it became healthy" in result.stdout
    assert target.read_bytes() == b"the previous pyz"
    assert json.loads(marker.read_text())["status"] == "rolled_back"
