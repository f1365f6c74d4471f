"""Trusted-key files and manifests an operator or a broken release tool gets wrong: each is refused
with its D4002 error that says what is wrong, never another exception."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ed448, rsa

from daemon_app.update.errors import BadSignatureError, MalformedManifestError, TrustedKeysError
from daemon_app.update.manifest import Manifest, load_trusted_keys, verify_signature
from daemon_manager.release import sign_bytes
from tests.update_support import TestPKI, manifest_bytes, private_pem, public_pem


def test_a_certificate_in_the_trusted_keys_file_is_refused_naming_the_block(tmp_path) -> None:
    """A common mix-up: the signing certificate pasted where its public key belongs."""
    pki = TestPKI(tmp_path / "pki")
    path = tmp_path / "update.pub"
    path.write_bytes(public_pem(rsa.generate_private_key(65537, 2048)) + pki.ca_file.read_bytes())
    with pytest.raises(TrustedKeysError, match="PEM block 2 is not a public key") as caught:
        load_trusted_keys(str(path))
    assert str(caught.value).startswith("D4002")


def test_a_private_key_in_the_trusted_keys_file_is_refused_without_echoing_it(tmp_path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    pem = private_pem(key)
    path = tmp_path / "update.pub"
    path.write_bytes(pem)
    with pytest.raises(TrustedKeysError, match="PEM block 1 is not a public key") as caught:
        load_trusted_keys(str(path))
    body = b"".join(pem.splitlines()[1:-1]).decode()
    assert body[:40] not in str(caught.value)


@pytest.mark.parametrize("make", [lambda: ed448.Ed448PrivateKey.generate(),
                                  lambda: dsa.generate_private_key(2048)], ids=["ed448", "dsa"])
def test_key_types_we_do_not_verify_with_are_refused_by_name(tmp_path, make) -> None:
    key = make()
    path = tmp_path / "update.pub"
    path.write_bytes(public_pem(key))
    with pytest.raises(TrustedKeysError, match="key 1: unsupported type .*RSA, ECDSA P-256 or Ed25519"):
        load_trusted_keys(str(path))


def test_an_rsa_signature_from_another_rsa_key_fails_both_paddings(tmp_path) -> None:
    trusted, other = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    path = tmp_path / "update.pub"
    path.write_bytes(public_pem(trusted))
    raw = manifest_bytes("agent", "1.0.0", b"x")
    for pss in (False, True):
        sig = base64.b64encode(sign_bytes(other, raw, rsa_pss=pss))
        with pytest.raises(BadSignatureError, match="not signed by any of the 1 trusted key"):
            verify_signature(raw, sig, load_trusted_keys(str(path)))


@pytest.mark.parametrize(("raw", "message"), [
    (b"component: agent\nversion: 1.0.0\n", "not a JSON document"),  # YAML from a hand-made release
    (b"\xff\xfe{}", "not a JSON document"),
    (b'[{"component": "agent"}]', "must be a JSON object"),
    (json.dumps({"component": "agent", "version": "1.0.0"}).encode(),
     "missing field(s) sha256, size, expires"),
    (json.dumps({"component": "agent", "version": "1.0.0", "sha256": "0" * 64, "size": 1,
                 "expires": 1893456000}).encode(), "expires must be an RFC 3339 time, got 1893456000"),
], ids=["yaml", "not-utf8", "array", "missing-fields", "epoch-expiry"])
def test_a_signed_manifest_of_the_wrong_shape_is_refused(raw: bytes, message: str) -> None:
    """The signature being good does not make the content sane: a release tool bug is caught here."""
    with pytest.raises(MalformedManifestError) as caught:
        Manifest.parse(raw)
    assert str(caught.value).startswith("D4002 manifest:")
    assert message in str(caught.value)
