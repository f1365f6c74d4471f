"""Planted paths under the daemon's own state: a pid file, work_dir, outbox, reports file or plugin
directory that is a symlink, foreign, or writable by others is refused with its D-code and the path,
and the planted target is never written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from daemon_app import config as config_mod
from daemon_app.comm.outbox import Outbox
from daemon_app.errors import ManagerReportError
from daemon_app.plugins import Plugins
from daemon_app.reporters.file import FileReporter

from .conftest import cli, plugin, stand_alone, write


def precious(base: Path) -> Path:
    target = base / "elsewhere" / "precious"
    target.parent.mkdir(exist_ok=True)
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return target


def test_pid_file_planted_as_symlink_is_refused_and_its_target_not_truncated(ops_dir) -> None:
    target = precious(ops_dir)
    work = ops_dir / "w"
    work.mkdir()
    (work / "daemon.pid").symlink_to(target)
    res = cli("-c", write(ops_dir, stand_alone(work)), "run")
    assert res.returncode == 2, res.stderr
    assert (f"D1002 config: daemon.pid_file: cannot open {work / 'daemon.pid'}: is a symlink (to {target}); "
            "refusing to follow it") in res.stderr
    assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


@pytest.mark.parametrize("problem", ["symlink", "world_writable"])
def test_work_dir_that_is_not_the_daemons_own_is_refused(ops_dir, problem) -> None:
    real = ops_dir / "real"
    real.mkdir()
    work = ops_dir / "w"
    if problem == "symlink":
        work.symlink_to(real)
        why = f"is a symlink (to {real}); refusing to follow it"
    else:
        work.mkdir()
        os.chmod(work, 0o777)
        why = "writable by group or others (mode 0777)"
    raw = stand_alone(work, daemon={"log_file": str(ops_dir / "daemon.log"),
                                    "pid_file": str(ops_dir / "d.pid")})
    res = cli("-c", write(ops_dir, raw), "run")
    assert res.returncode == 2, res.stderr
    assert f"D1002 config: daemon.work_dir: {work}: {why}" in res.stderr
    assert os.listdir(real) == []


@pytest.mark.parametrize("name", ["outbox.db", "outbox.db-wal", "outbox.db-shm"])
def test_outbox_planted_as_symlink_is_refused_with_d2003(tmp_path, name) -> None:
    target = precious(tmp_path)
    work = tmp_path / "w"
    work.mkdir(mode=0o750)
    (work / name).symlink_to(target)
    expected = rf"D2003 outbox: {work / name}: is a symlink \(to {target}\)"
    with pytest.raises(ManagerReportError, match=expected):
        Outbox(str(work / "outbox.db"), 1 << 20)
    assert target.read_text().startswith("root:x")


def test_reports_file_planted_as_symlink_is_refused_counted_and_logged(tmp_path, caplog) -> None:
    target = precious(tmp_path)
    (tmp_path / "reports.jsonl").symlink_to(target)
    reporter = FileReporter(str(tmp_path / "reports.jsonl"), 1 << 20)
    with caplog.at_level(logging.ERROR):
        for n in range(3):
            reporter.report({"n": n})
    assert reporter.dropped == 3
    assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # once per cause, not once per report
    path = tmp_path / "reports.jsonl"
    assert errors[0].startswith(f"D2003 reports file: cannot write {path}: is a symlink"), errors


def test_plugin_directory_others_can_write_is_not_loaded(ops_dir, caplog) -> None:
    plugin(ops_dir, "planted", "RAN = True\n@hookimpl\ndef collect(ctx):\n    return None\n")
    os.chmod(ops_dir / "plugins", 0o777)
    cfg = config_mod.validate(stand_alone(ops_dir))
    plugins = Plugins()
    with caplog.at_level(logging.ERROR):
        plugins.load_directory(cfg)
    assert "planted" not in plugins.info
    expected = f"D5001 plugins.dir: {ops_dir / 'plugins'}: writable by group or others"
    assert any(r.getMessage().startswith(expected) for r in caplog.records)
    os.chmod(ops_dir / "plugins", 0o755)
    plugins.load_directory(cfg)
    assert "planted" in plugins.info  # the same directory, once it is the daemon's own, loads


def test_control_socket_in_a_directory_others_can_write_is_refused(ops_dir) -> None:
    shared = ops_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    work = ops_dir / "w"
    work.mkdir()
    res = cli("-c", write(ops_dir, stand_alone(work, daemon={"control_socket": str(shared / "c.sock")})),
              "run")
    assert res.returncode == 2, res.stderr
    assert f"D1002 config: daemon.control_socket: {shared}: writable by group or others (mode 0777)" \
        in res.stderr
    assert os.listdir(shared) == []


def test_node_id_planted_as_symlink_is_refused_not_sent_as_our_id(ops_dir) -> None:
    target = precious(ops_dir)
    work = ops_dir / "w"
    work.mkdir()
    (work / "node_id").symlink_to(target)
    raw = stand_alone(work)
    raw["daemon"].pop("id", None)
    res = cli("-c", write(ops_dir, raw), "run")
    assert res.returncode == 2, res.stderr
    assert f"D1002 config: daemon.work_dir: {work / 'node_id'}: is a symlink (to {target})" in res.stderr
    assert target.read_text().startswith("root:x")
