"""Manifest parsing and signature verification with keys made by cryptography (openssl-made ones
are in tests/integration/update/test_openssl_signatures.py)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from daemon_app.update.errors import (
    BadSignatureError,
    MalformedManifestError,
    MalformedSignatureError,
    TrustedKeysError,
)
from daemon_app.update.manifest import Manifest, load_trusted_keys, verify_signature
from daemon_manager.release import sign_bytes
from tests.update_support import manifest_bytes, new_ed25519, public_pem

KEYS = {
    "rsa": lambda: rsa.generate_private_key(65537, 2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed25519": new_ed25519,
}


@pytest.mark.parametrize("kind", list(KEYS))
@pytest.mark.parametrize("pss", [False, True])
def test_each_key_type_signs_and_verifies(tmp_path, kind, pss) -> None:
    key = KEYS[kind]()
    raw = manifest_bytes("agent", "1.0.0", b"x")
    sig = base64.b64encode(sign_bytes(key, raw, rsa_pss=pss))
    path = tmp_path / "k.pub"
    path.write_bytes(public_pem(key))
    assert verify_signature(raw, sig, load_trusted_keys(str(path))) == 0
    with pytest.raises(BadSignatureError):
        verify_signature(raw + b" ", sig, load_trusted_keys(str(path)))


def test_other_ec_curves_are_refused_in_the_trusted_file(tmp_path) -> None:
    path = tmp_path / "k.pub"
    path.write_bytes(public_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(TrustedKeysError, match="P-256"):
        load_trusted_keys(str(path))


def test_a_file_without_keys_is_refused(tmp_path) -> None:
    path = tmp_path / "k.pub"
    path.write_text("nothing here\n")
    with pytest.raises(TrustedKeysError, match="no PEM public key"):
        load_trusted_keys(str(path))


@pytest.mark.parametrize("sig", [b"", b"   \n", b"!!!!", b"QUJ"])
def test_malformed_signature_text(sig: bytes) -> None:
    with pytest.raises(MalformedSignatureError):
        verify_signature(b"{}", sig, [])


@pytest.mark.parametrize(("change", "message"), [
    ({"component": "kernel"}, "component"),
    ({"version": "latest"}, "not a version"),
    ({"sha256": "ABC"}, "sha256"),
    ({"size": -1}, "size"),
    ({"size": True}, "size"),
    ({"expires": "2030-01-01T00:00:00"}, "time zone"),
    ({"expires": "tomorrow"}, "RFC 3339"),
])
def test_manifest_fields_are_checked(change, message) -> None:
    data = json.loads(manifest_bytes("agent", "1.0.0", b"x"))
    data.update(change)
    with pytest.raises(MalformedManifestError, match=message) as caught:
        Manifest.parse(json.dumps(data).encode())
    assert str(caught.value).startswith("D4002")


def test_manifest_round_trips() -> None:
    raw = manifest_bytes("daemon", "2.0.0-rc.1", b"payload")
    assert Manifest.parse(raw).to_bytes() == raw
