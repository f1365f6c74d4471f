"""Signatures made by the openssl command line (keys from `openssl genpkey`) verify; removed keys don't."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon_app.update.errors import BadSignatureError
from daemon_app.update.manifest import load_trusted_keys, verify_signature
from tests.update_support import manifest_bytes

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

KEYS = {
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ed25519": ["-algorithm", "ed25519"],
}
SIGN = {
    "rsa-pkcs1": ("rsa", ["dgst", "-sha256"]),
    "rsa-pss-digest-salt": ("rsa", ["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss",
                                    "-sigopt", "rsa_pss_saltlen:-1"]),
    "rsa-pss-max-salt": ("rsa", ["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss",
                                 "-sigopt", "rsa_pss_saltlen:-2"]),
    "ecdsa-p256": ("ec", ["dgst", "-sha256"]),
    "ed25519": ("ed25519", ["pkeyutl", "-rawin"]),
}


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out = {}
    d = tmp_path_factory.mktemp("openssl-keys")
    for name, args in KEYS.items():
        priv, pub = d / f"{name}.pem", d / f"{name}.pub"
        openssl("genpkey", *args, "-out", str(priv))
        openssl("pkey", "-in", str(priv), "-pubout", "-out", str(pub))
        out[name] = (priv, pub)
    return out


def openssl_sign(kind: str, keys: dict[str, tuple[Path, Path]], manifest: Path) -> bytes:
    key_name, cmd = SIGN[kind]
    sig = manifest.with_suffix(".bin")
    if cmd[0] == "pkeyutl":
        openssl("pkeyutl", "-sign", "-inkey", str(keys[key_name][0]), "-rawin", "-in", str(manifest),
                "-out", str(sig))
    else:
        openssl(*cmd, "-sign", str(keys[key_name][0]), "-out", str(sig), str(manifest))
    return base64.b64encode(sig.read_bytes())


@pytest.mark.parametrize("kind", list(SIGN))
def test_openssl_signature_verifies_with_the_trusted_keys_file(tmp_path, keys, kind) -> None:
    manifest = tmp_path / "manifest.json"
    raw = manifest_bytes("agent", "2.0.0", b"package")
    manifest.write_bytes(raw)
    sig = openssl_sign(kind, keys, manifest)
    trusted = tmp_path / "update.pub"
    # every key in one file (rotation): the signing key is found among them, whatever its position
    trusted.write_bytes(b"".join(pub.read_bytes() for _, pub in keys.values()))
    index = verify_signature(raw, sig, load_trusted_keys(str(trusted)))
    assert index == list(keys).index(SIGN[kind][0])


@pytest.mark.parametrize("kind", list(SIGN))
def test_signature_stops_verifying_when_its_key_is_removed_from_the_file(tmp_path, keys, kind) -> None:
    manifest = tmp_path / "manifest.json"
    raw = manifest_bytes("agent", "2.0.0", b"package")
    manifest.write_bytes(raw)
    sig = openssl_sign(kind, keys, manifest)
    trusted = tmp_path / "update.pub"
    others = [pub for name, (_, pub) in keys.items() if name != SIGN[kind][0]]
    trusted.write_bytes(b"".join(pub.read_bytes() for pub in others))
    with pytest.raises(BadSignatureError) as caught:
        verify_signature(raw, sig, load_trusted_keys(str(trusted)))
    assert caught.value.code == "D4002"


def test_release_sign_output_verifies_with_openssl(tmp_path, keys) -> None:
    """The other direction: our signer's files are what openssl expects (RSA PKCS#1 v1.5, PSS, EC, Ed)."""
    from daemon_manager.release import make_release, parse_expires

    package = tmp_path / "agent"
    package.write_bytes(b"agent binary")
    for name, (priv, pub) in keys.items():
        for pss in ((False, True) if name == "rsa" else (False,)):
            out = tmp_path / f"{name}-{pss}"
            make_release(str(priv), "agent", "2.0.0", str(package), str(out), parse_expires("1d"),
                         rsa_pss=pss)
            sig = out / "sig.bin"
            sig.write_bytes(base64.b64decode((out / "manifest.json.sig").read_bytes()))
            m = str(out / "manifest.json")
            if name == "ed25519":
                openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in", m,
                        "-sigfile", str(sig))
            else:
                extra = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"] if pss else []
                openssl("dgst", "-sha256", *extra, "-verify", str(pub), "-signature", str(sig), m)
