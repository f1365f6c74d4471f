"""`daemon-manager release sign` (the click group the lead mounts, and `python -m`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from daemon_app.update.manifest import load_trusted_keys, verify_signature
from daemon_manager.release import release_group
from tests.helpers import ROOT
from tests.update_support import new_ed25519, private_pem, public_pem


def test_sign_writes_a_manifest_that_verifies(tmp_path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    (tmp_path / "key.pem").write_bytes(private_pem(key))
    (tmp_path / "key.pub").write_bytes(public_pem(key))
    (tmp_path / "agent").write_bytes(b"agent binary")
    res = CliRunner().invoke(release_group, ["sign", "--key", str(tmp_path / "key.pem"),
                                             "--component", "agent",
                                             "--version", "1.2.0", "--file", str(tmp_path / "agent"),
                                             "--expires", "1d", "--out", str(tmp_path / "rel"), "--rsa-pss"])
    assert res.exit_code == 0, res.output
    raw = (tmp_path / "rel" / "manifest.json").read_bytes()
    data = json.loads(raw)
    assert data["size"] == 12 and data["version"] == "1.2.0" and data["component"] == "agent"
    sig = (tmp_path / "rel" / "manifest.json.sig").read_bytes()
    assert verify_signature(raw, sig, load_trusted_keys(str(tmp_path / "key.pub"))) == 0


def test_bad_version_is_a_usage_error(tmp_path) -> None:
    (tmp_path / "key.pem").write_bytes(private_pem(new_ed25519()))
    (tmp_path / "f").write_bytes(b"x")
    res = CliRunner().invoke(release_group, ["sign", "--key", str(tmp_path / "key.pem"),
                                             "--component", "agent",
                                             "--version", "latest", "--file", str(tmp_path / "f"),
                                             "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a version" in res.output


def test_runs_standalone_with_python_m(tmp_path) -> None:
    (tmp_path / "key.pem").write_bytes(private_pem(new_ed25519()))
    (tmp_path / "f").write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-m", "daemon_manager.release", "sign", "--key",
                           str(tmp_path / "key.pem"), "--component", "daemon", "--version", "0.2.0", "--file",
                           str(tmp_path / "f"), "--out", str(tmp_path / "o")], cwd=str(ROOT), timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "signed daemon 0.2.0" in proc.stdout


@pytest.mark.parametrize("expires", ["2020-01-01T00:00:00Z", "0d", "0s", "1999-12-31T23:59:59+01:00",
                                     "99999999999999d"])
def test_sign_refuses_an_expiry_that_is_past_or_impossible_and_writes_nothing(tmp_path, expires) -> None:
    (tmp_path / "key.pem").write_bytes(private_pem(new_ed25519()))
    (tmp_path / "f").write_bytes(b"x")
    res = CliRunner().invoke(release_group, ["sign", "--key", str(tmp_path / "key.pem"),
                                             "--component", "agent", "--version", "1.0.0",
                                             "--file", str(tmp_path / "f"), "--expires", expires,
                                             "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "--expires" in res.output and ("past" in res.output or "zero" in res.output
                                          or "too far" in res.output)
    assert not (tmp_path / "o").exists()
