"""Release manifests: the signed statement of what a package is (component, version, size, hash, expiry).

`manifest.json` is a JSON object; `manifest.json.sig` is the base64 signature over the EXACT bytes
of manifest.json. Signing the manifest, and the manifest binding the package's size and SHA-256,
covers the whole package. Keys: RSA (PKCS#1 v1.5 or PSS, SHA-256), ECDSA P-256 (SHA-256, DER),
Ed25519 (the raw manifest). The trusted-keys file may hold several PEM public keys (rotation): a
signature is good when ANY of them verifies it. `cryptography` is imported only when verifying.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon_app.compat import UTC, fromisoformat
from daemon_app.update.errors import (
    BadSignatureError,
    MalformedManifestError,
    MalformedSignatureError,
    TrustedKeysError,
)
from daemon_app.update.versions import Version

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
COMPONENTS = ("agent", "daemon")
MAX_MANIFEST_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 16 * 1024
# 16 GiB: far beyond any Agent or pyz; a size past it is a mistake or an attack (free-space checks).
MAX_PACKAGE_BYTES = 16 << 30
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----", re.S)


@dataclass(frozen=True)
class Manifest:
    component: str
    version: str
    sha256: str
    size: int
    expires: datetime

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """Check the shape of a (signature-verified) manifest; MalformedManifestError if wrong, for any
        input (the property tests feed it arbitrary bytes)."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise MalformedManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                              parse_constant=_no_constant)
        except RecursionError:  # json has no depth limit of its own: `[[[[...` under the size cap
            raise MalformedManifestError("manifest: not a JSON document: nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedManifestError(f"manifest: not a JSON document: {str(exc)[:200]}") from None
        if not isinstance(data, dict):
            raise MalformedManifestError("manifest: must be a JSON object")
        missing = [k for k in ("component", "version", "sha256", "size", "expires") if k not in data]
        if missing:
            raise MalformedManifestError(f"manifest: missing field(s) {', '.join(missing)}")
        component, version, sha256, size, expires = (
            data["component"], data["version"], data["sha256"], data["size"], data["expires"])
        if not isinstance(component, str) or component not in COMPONENTS:
            raise MalformedManifestError("manifest: component must be agent or daemon, got "
                                         f"{_short(component)}")
        try:
            Version(version)
        except ValueError as exc:
            raise MalformedManifestError(f"manifest: {exc}") from exc
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise MalformedManifestError("manifest: sha256 must be 64 lowercase hex digits, got "
                                         f"{_short(sha256)}")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_PACKAGE_BYTES:
            raise MalformedManifestError(f"manifest: size must be an integer from 0 to {MAX_PACKAGE_BYTES}, "
                                         f"got {_short(size)}")
        return cls(component, version, sha256, size, parse_rfc3339(expires))

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "version": self.version, "sha256": self.sha256,
                "size": self.size, "expires": format_rfc3339(self.expires)}

    def to_bytes(self) -> bytes:
        """The canonical file content the release tool signs (sorted keys, one trailing newline)."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two `version` keys would let a reviewer's viewer show one and the daemon use the other."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(value: Any) -> str:
    """A bad value, quoted in an error, is at most a short excerpt."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # str() of a huge int is slow, or refused
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_rfc3339(value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise MalformedManifestError(f"manifest: expires must be an RFC 3339 time, got {_short(value)}")
    try:
        when = fromisoformat(value)
    except ValueError:
        raise MalformedManifestError("manifest: expires must be an RFC 3339 time, got "
                                     f"{_short(value)}") from None
    if when.tzinfo is None:
        raise MalformedManifestError("manifest: expires needs a time zone (Z or +hh:mm), got "
                                     f"{_short(value)}")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # year 1 at +01:00 is before the first representable UTC instant
        raise MalformedManifestError(f"manifest: expires is out of range: {_short(value)}") from None


def format_rfc3339(when: datetime) -> str:
    """UTC with a Z; fractions of a second only when there are some, so that a manifest that gave
    them round-trips (release sign writes whole seconds)."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if when.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def load_trusted_keys(path: str) -> list[Any]:
    """Every PEM public key in `path` (RSA, EC P-256, Ed25519); TrustedKeysError if none or any bad."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise TrustedKeysError(f"trusted keys: cannot read {path}: {exc.strerror or exc}") from exc
    keys = []
    for n, match in enumerate(_PEM_RE.finditer(data), start=1):
        try:
            key = load_pem_public_key(match.group(0))
        except ValueError as exc:
            raise TrustedKeysError(f"trusted keys: {path}: PEM block {n} is not a public key: {exc}") from exc
        if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
            raise TrustedKeysError(f"trusted keys: {path}: key {n}: only the P-256 curve is accepted, "
                                   f"got {key.curve.name}")
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
            raise TrustedKeysError(f"trusted keys: {path}: key {n}: unsupported type {type(key).__name__} "
                                   "(RSA, ECDSA P-256 or Ed25519)")
        keys.append(key)
    if not keys:
        raise TrustedKeysError(f"trusted keys: {path} holds no PEM public key")
    return keys


def decode_signature(sig_text: bytes) -> bytes:
    text = sig_text.strip()
    if not text:
        raise MalformedSignatureError("signature: manifest.json.sig is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedSignatureError(f"signature: manifest.json.sig is not base64: {exc}") from exc


def verify_signature(raw: bytes, sig_text: bytes, keys: list[Any]) -> int:
    """Return the index of the first trusted key that verifies; BadSignatureError when none does."""
    signature = decode_signature(sig_text)
    for index, key in enumerate(keys):
        if _verifies(key, raw, signature):
            return index
    raise BadSignatureError(
        f"signature: manifest.json is not signed by any of the {len(keys)} trusted key(s) "
        "(unknown key, or the manifest was altered)")


def _verifies(key: Any, raw: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, raw)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, raw, ec.ECDSA(hashes.SHA256()))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            # AUTO reads the salt length from the signature: openssl's saltlen -1 (digest) and max verify.
            for pad in (padding.PKCS1v15(), padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO)):
                try:
                    key.verify(signature, raw, pad, hashes.SHA256())
                    return True
                except InvalidSignature:
                    continue
    except InvalidSignature:
        return False
    return False
