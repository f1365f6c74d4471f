"""deploy/install.sh into a temporary root: files, modes, the unit, and idempotence."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from daemon_app import config
from tests.helpers import ROOT

INSTALL = ROOT / "deploy" / "install.sh"
UNIT = ROOT / "deploy" / "daemon.service"


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    pyz = tmp_path / "src" / "daemon.pyz"
    pyz.parent.mkdir()
    pyz.write_bytes(b"#!/usr/bin/env python3\nPK fake zipapp\n")
    config = tmp_path / "src" / "daemon.yaml"
    config.write_text("daemon:\n  log_level: info\n")
    return {"pyz": pyz, "config": config}


def install(root: Path, sources: dict[str, Path], *extra: str, env: dict[str, str] | None = None):
    args = ["sh", str(INSTALL), "--pyz", str(sources["pyz"]), "--config", str(sources["config"]), *extra]
    if env is None:
        args += ["--prefix", str(root)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def listing(root: Path) -> list[tuple[str, str, str, str]]:
    """(path, type, mode, sha256) of everything under root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "f" else ""
            out.append((str(path.relative_to(root)), kind, oct(stat.S_IMODE(st.st_mode)), digest))
    return sorted(out)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_puts_files_dirs_and_unit_in_place_with_the_right_modes(tmp_path, sources):
    root = tmp_path / "root"
    result = install(root, sources)
    assert result.returncode == 0, result.stderr
    assert "systemctl not run" in result.stdout
    assert (root / "opt/daemon/daemon.pyz").read_bytes() == sources["pyz"].read_bytes()
    assert mode(root / "opt/daemon/daemon.pyz") == 0o755
    assert (root / "etc/daemon/daemon.yaml").read_text() == sources["config"].read_text()
    assert mode(root / "etc/daemon/daemon.yaml") == 0o640
    assert mode(root / "etc/daemon/certs") == 0o700
    assert mode(root / "etc/daemon/keys") == 0o755
    assert mode(root / "var/lib/daemon") == 0o750
    assert mode(root / "var/lib/daemon/pyz") == 0o750
    assert mode(root / "var/log/daemon") == 0o750
    unit = root / "etc/systemd/system/daemon.service"
    assert unit.read_text() == UNIT.read_text() and mode(unit) == 0o644


def test_running_it_twice_changes_nothing(tmp_path, sources):
    root = tmp_path / "root"
    assert install(root, sources).returncode == 0
    before = listing(root)
    again = install(root, sources)
    assert again.returncode == 0
    assert listing(root) == before
    assert "installed" not in again.stdout


def test_an_existing_config_is_kept_and_the_reference_goes_to_dist(tmp_path, sources):
    root = tmp_path / "root"
    assert install(root, sources).returncode == 0
    mine = root / "etc/daemon/daemon.yaml"
    mine.write_text("daemon:\n  log_level: debug\n")
    os.chmod(root / "var/lib/daemon", 0o777)  # a drifted mode is put right
    sources["config"].write_text("daemon:\n  log_level: warning\n")
    result = install(root, sources)
    assert result.returncode == 0, result.stderr
    assert mine.read_text() == "daemon:\n  log_level: debug\n"
    assert (root / "etc/daemon/daemon.yaml.dist").read_text() == "daemon:\n  log_level: warning\n"
    assert mode(root / "var/lib/daemon") == 0o750
    assert not list(root.rglob("*.tmp.*")), "no temp files left behind"


def test_destdir_works_like_prefix(tmp_path, sources):
    root = tmp_path / "staged"
    result = install(root, sources, env={"DESTDIR": str(root)})
    assert result.returncode == 0, result.stderr
    assert (root / "opt/daemon/daemon.pyz").exists()


def test_bad_arguments_and_missing_files_are_clear_errors(tmp_path, sources):
    bad = install(tmp_path / "root", sources, "--frobnicate")
    assert bad.returncode == 1 and "unknown argument: --frobnicate" in bad.stderr
    missing = install(tmp_path / "root", {"pyz": tmp_path / "nope.pyz", "config": sources["config"]})
    assert missing.returncode == 1 and "missing" in missing.stderr


def test_the_unit_is_what_the_daemon_needs():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "KillMode=process", "Restart=always",
                 "WatchdogSec=60s", "ExecReload=/bin/kill -HUP $MAINPID",
                 "ExecStart=/usr/bin/python3 /opt/daemon/daemon.pyz -c /etc/daemon/daemon.yaml run",
                 "Environment=SHIV_ROOT=/var/lib/daemon/pyz"):
        assert line in text.splitlines(), line
    # Sandboxing that would stop the daemon from replacing the Agent binary or the pyz.
    for forbidden in ("ProtectSystem=strict", "ProtectSystem=full", "NoNewPrivileges=yes", "PrivateTmp=yes"):
        assert forbidden not in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path):
    unit = tmp_path / "daemon.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "daemon.service" not in result.stderr, result.stderr


def test_help_prints_the_usage_and_not_the_script():
    result = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: deploy/install.sh [--prefix DIR]")
    assert "--config FILE  the config to install (default: deploy/daemon.yaml)" in result.stdout
    for script_line in ("set -eu", "here=$(", "prefix=${DESTDIR"):
        assert script_line not in result.stdout


def test_the_installed_config_keeps_the_fhs_layout_with_absolute_paths(tmp_path):
    pyz = tmp_path / "daemon.pyz"
    pyz.write_bytes(b"PK fake")
    root = tmp_path / "root"
    result = subprocess.run(["sh", str(INSTALL), "--pyz", str(pyz), "--prefix", str(root)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    installed = root / "etc/daemon/daemon.yaml"
    assert installed.read_text() == (ROOT / "deploy" / "daemon.yaml").read_text()
    cfg = config.load(installed)
    assert cfg.daemon.work_dir == "/var/lib/daemon"
    assert cfg.daemon.log_file == "/var/log/daemon/daemon.log"
    assert cfg.daemon.pid_file == "/run/daemon.pid"
    assert cfg.agent.socket_path == "/run/agent.sock"
    assert cfg.manager.tls.cert_file == "/etc/daemon/certs/client.crt"
    assert cfg.update.public_key_file == "/etc/daemon/keys/update.pub"
    # Only the report file is left to work_dir; nothing lands outside the FHS directories.
    assert cfg.derived == ("reporters.file.path",)
