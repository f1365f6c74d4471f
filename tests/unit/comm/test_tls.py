"""TLS material checks: clear D2001 errors, change detection, certificate details without `cryptography`."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess

import pytest

from daemon_app import config
from daemon_app.comm import tls
from daemon_app.errors import ManagerConnectError
from daemon_manager import pki


@pytest.fixture(scope="module")
def ca():
    return pki.CertificateAuthority.create()


def _cfg(tmp_path):
    return config.validate({"manager": {"tls": {
        "ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "c.crt"),
        "key_file": str(tmp_path / "c.key")}}}).manager.tls


def test_missing_or_non_pem_files_raise_d2001_naming_the_file(tmp_path, ca):
    cfg = _cfg(tmp_path)
    with pytest.raises(ManagerConnectError, match=r"^D2001 manager.tls.ca_file: cannot read .*ca.crt"):
        tls.load(cfg)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue_client("n1").write(tmp_path / "c.crt", tmp_path / "c.key")
    (tmp_path / "c.key").write_text("not a key")
    with pytest.raises(ManagerConnectError, match="manager.tls.key_file: .* is not a PEM file"):
        tls.load(cfg)


def test_fingerprint_changes_when_a_file_is_replaced(tmp_path, ca):
    cfg = _cfg(tmp_path)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue_client("n1").write(tmp_path / "c.crt", tmp_path / "c.key")
    before = tls.load(cfg).fingerprint
    assert tls.fingerprint(cfg) == before
    ca.issue_client("n1").write(tmp_path / "c.crt", tmp_path / "c.key")
    assert tls.fingerprint(cfg) != before


def test_certificate_details_match_what_cryptography_reads(tmp_path, ca):
    issued = ca.issue_client("web-1")
    issued.write(tmp_path / "c.crt", tmp_path / "c.key")
    info = tls.describe_cert(str(tmp_path / "c.crt"))
    assert info["subject_cn"] == "web-1" and info["serial"] == issued.serial
    assert info["not_after"] == issued.cert.not_valid_after_utc


def test_an_expired_certificate_is_logged_with_d2001(tmp_path, ca, caplog):
    ca.issue_client("old", expired=True).write(tmp_path / "c.crt", tmp_path / "c.key")
    tls.check_validity(str(tmp_path / "c.crt"))
    assert any(r.code == "D2001" and "expired" in r.getMessage() for r in caplog.records)


def test_a_broken_certificate_is_refused(tmp_path):
    path = tmp_path / "c.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ManagerConnectError, match="not a valid certificate"):
        tls.check_validity(os.fspath(path))


def _openssl_cert(tmp_path, name: str, subject: str, *extra: str) -> str:
    key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-subj", subject, "-utf8", *extra],
                   check=True, capture_output=True)
    return str(crt)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("subject, extra", [
    ("/O=fleet/CN=node-7", ["-days", "30", "-set_serial", "0x00ff0a"]),            # UTCTime, short serial
    ("/CN=n\u00f6de-\u4e00/OU=ops", ["-days", "36500", "-set_serial", "0x8f" + "11" * 15]),
    ("/C=DE/CN=first/CN=second", ["-days", "1"]),                                 # the last CN wins
])
def test_certificate_details_agree_with_openssl_for_certificates_made_by_openssl(tmp_path, subject, extra):
    # "-days 36500" ends after 2049: notAfter is a GeneralizedTime; a serial with the high bit set
    # carries a leading zero byte in DER.
    path = _openssl_cert(tmp_path, "c", subject, *extra)
    ours = tls.describe_cert(path)
    theirs = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    names = dict(pair for rdn in theirs["subject"] for pair in rdn)
    assert ours["subject_cn"] == names["commonName"]
    assert ours["serial"] == theirs["serialNumber"].lower().lstrip("0")
    assert ours["not_before"].timestamp() == ssl.cert_time_to_seconds(theirs["notBefore"])
    assert ours["not_after"].timestamp() == ssl.cert_time_to_seconds(theirs["notAfter"])


def test_a_truncated_certificate_is_refused_with_d2001(tmp_path, ca):
    ca.issue_client("n1").write(tmp_path / "c.crt", tmp_path / "c.key")
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "c.crt").read_text())
    (tmp_path / "t.crt").write_text(ssl.DER_cert_to_PEM_cert(der[: len(der) // 2]))
    with pytest.raises(ManagerConnectError, match=r"^D2001 .*t.crt is not a valid certificate: truncated"):
        tls.describe_cert(str(tmp_path / "t.crt"))
