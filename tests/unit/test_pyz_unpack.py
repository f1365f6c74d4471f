"""build/unpack.py, the pyz's own unpacking: a lock that dies with its holder, a half-finished unpack
redone, bytecode compiled by a child that never outlives the unpacking process."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, wait_until

spec = importlib.util.spec_from_file_location("pyz_unpack", ROOT / "build" / "unpack.py")
unpack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(unpack)


@pytest.fixture
def archive(tmp_path) -> Path:
    path = tmp_path / "app.pyz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in {"site-packages/pkg/__init__.py": "VALUE = 1\n",
                           "site-packages/pkg/mod.py": "def f():\n    return 2\n",
                           "site-packages/_interp/cp00/other.py": "X = 1\n",
                           "__main__.py": "print('not unpacked')\n"}.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o644 << 16
            zf.writestr(info, text)
    return path


def unpack_in_child(archive: Path, target: Path, pause_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Another process unpacking; with `pause_file`, stopped (DAEMON_TEST_PAUSE_AT=unpack) while it
    holds the lock."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('u', sys.argv[1])\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "m.ensure_unpacked(sys.argv[2], sys.argv[3])\n")
    env = dict(os.environ)
    if pause_file is not None:
        env.update(DAEMON_TEST_PAUSE_AT="unpack", DAEMON_TEST_PAUSE_FILE=str(pause_file))
    return subprocess.Popen([sys.executable, "-c", code, str(ROOT / "build" / "unpack.py"), str(archive),
                             str(target)], env=env)


def test_unpacks_site_packages_once_and_compiles_only_this_interpreters_code(archive, tmp_path):
    target = tmp_path / "root" / "app.pyz_b1"
    unpack.ensure_unpacked(str(archive), str(target))
    site = target / "site-packages"
    assert (site / "pkg" / "mod.py").read_text() == "def f():\n    return 2\n"
    assert not (target / "__main__.py").exists()
    assert list((site / "pkg" / "__pycache__").glob("mod.cpython-*.pyc"))
    assert not (site / "_interp" / "cp00" / "__pycache__").exists()
    assert not Path(str(target) + ".tmp").exists()
    (site / "pkg" / "mod.py").write_text("changed\n")
    unpack.ensure_unpacked(str(archive), str(target))  # in place: nothing done again
    assert (site / "pkg" / "mod.py").read_text() == "changed\n"


@pytest.mark.timeout(60)
def test_a_holder_killed_mid_unpack_neither_blocks_the_next_start_nor_leaves_its_half(archive, tmp_path):
    target = tmp_path / "root" / "app.pyz_b1"
    pause = tmp_path / "paused"
    child = unpack_in_child(archive, target, pause)
    wait_until(lambda: pause.exists() and pause.read_text().strip(), timeout=30, what="the lock holder")
    half = Path(str(target) + ".tmp")
    (half / "site-packages" / "leftover.py").write_text("half-written garbage (\n")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)

    unpack.ensure_unpacked(str(archive), str(target))  # would wait forever on a lock that outlived it
    site = target / "site-packages"
    assert (site / "pkg" / "__init__.py").exists()
    assert not (site / "leftover.py").exists()  # the dead holder's half was thrown away, not finished
    assert not half.exists()


@pytest.mark.timeout(60)
def test_a_live_holder_is_waited_for(archive, tmp_path):
    target = tmp_path / "root" / "app.pyz_b1"
    pause = tmp_path / "paused"
    child = unpack_in_child(archive, target, pause)
    try:
        wait_until(lambda: pause.exists() and pause.read_text().strip(), timeout=30, what="the child")
        waiter = unpack_in_child(archive, target)
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(1.0)  # the holder is alive: its lock holds
        os.kill(child.pid, signal.SIGKILL)
        assert waiter.wait(30) == 0  # ...and is released the moment the holder dies
        assert (target / "site-packages" / "pkg" / "mod.py").exists()
    finally:
        if child.poll() is None:
            child.kill()
