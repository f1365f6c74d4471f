"""`daemon-manager release sign`: write manifest.json and manifest.json.sig for a package.

The signature is over the exact bytes of manifest.json, base64 in manifest.json.sig, the same
thing `openssl dgst -sha256 -sign` (RSA, ECDSA) or `openssl pkeyutl -sign -rawin` (Ed25519) makes
(docs/updates.md). Runs stand-alone too: `python -m daemon_manager.release sign ...`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from daemon_app.update.manifest import COMPONENTS, MANIFEST_NAME, SIGNATURE_NAME, Manifest
from daemon_app.update.versions import Version

_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_expires(value: str, now: datetime | None = None) -> datetime:
    """'30d' / '12h' from now, or an absolute RFC 3339 time."""
    now = now or datetime.now(UTC)
    m = _DURATION_RE.match(value.strip())
    if m:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise click.BadParameter(f"must be a duration longer than zero, got {value!r}")
        try:
            return now + timedelta(seconds=seconds)
        except OverflowError:
            raise click.BadParameter(f"{value!r} is too far in the future") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"must be a duration like 30d or an RFC 3339 time, got {value!r}") from None
    if when.tzinfo is None:
        raise click.BadParameter(f"an RFC 3339 time needs a zone (Z or +hh:mm), got {value!r}")
    if when <= now:
        # Every daemon would refuse it (D4002 expired): better to say so before it is published.
        raise click.BadParameter(f"{value!r} is in the past (now {now:%Y-%m-%dT%H:%M:%SZ}); "
                                 "a release must expire in the future")
    return when


def load_private_key(path: str, password: bytes | None = None) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(path, "rb") as fh:
        key = load_pem_private_key(fh.read(), password=password)
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
        raise click.ClickException(f"{path}: only P-256 EC keys are accepted, got {key.curve.name}")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise click.ClickException(f"{path}: unsupported key type {type(key).__name__} "
                                   "(RSA, ECDSA P-256 or Ed25519)")
    return key


def sign_bytes(key: Any, data: bytes, *, rsa_pss: bool = False) -> bytes:
    """The raw signature over `data`: PKCS#1 v1.5 or PSS (salt = digest length) for RSA, DER ECDSA,
    or Ed25519 over the message itself."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        pad = (padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH) if rsa_pss
               else padding.PKCS1v15())
        return key.sign(data, pad, hashes.SHA256())
    raise TypeError(type(key).__name__)


def file_digest(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def make_release(key_path: str, component: str, version: str, package: str, out_dir: str,
                 expires: datetime, *, rsa_pss: bool = False) -> Manifest:
    """Write out_dir/manifest.json and out_dir/manifest.json.sig; return the manifest."""
    sha256, size = file_digest(package)
    manifest = Manifest(component, version, sha256, size, expires)
    raw = manifest.to_bytes()
    signature = sign_bytes(load_private_key(key_path), raw, rsa_pss=rsa_pss)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, MANIFEST_NAME), "wb") as fh:
        fh.write(raw)
    with open(os.path.join(out_dir, SIGNATURE_NAME), "wb") as fh:
        fh.write(base64.b64encode(signature) + b"\n")
    return manifest


def _version(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        Version(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.group("release", context_settings={"help_option_names": ["-h", "--help"]})
def release_group() -> None:
    """Sign release manifests for `daemon update`."""


def _expires(ctx: click.Context, param: click.Parameter, value: str) -> datetime:
    return parse_expires(value)


@release_group.command("sign")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Private key, PEM (RSA, ECDSA P-256 or Ed25519), unencrypted.")
@click.option("--component", required=True, type=click.Choice(COMPONENTS))
@click.option("--version", required=True, callback=_version, help="Release version, e.g. 1.4.2.")
@click.option("--file", "package", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The package (agent binary or daemon.pyz).")
@click.option("--expires", default="30d", show_default=True, callback=_expires,
              help="Validity: a duration from now (30d, 12h) or an RFC 3339 time.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for manifest.json and manifest.json.sig.")
@click.option("--rsa-pss", is_flag=True, help="RSA keys: sign with PSS instead of PKCS#1 v1.5.")
def sign_cmd(key_path: str, component: str, version: str, package: str, expires: datetime, out_dir: str,
             rsa_pss: bool) -> None:
    """Write OUT/manifest.json (component, version, sha256, size, expires) and its signature."""
    try:
        manifest = make_release(key_path, component, version, package, out_dir, expires,
                                rsa_pss=rsa_pss)
    except (OSError, ValueError, TypeError) as exc:
        raise click.ClickException(f"cannot sign: {exc}") from exc
    click.echo(f"signed {component} {version}: {manifest.size} bytes, sha256 {manifest.sha256}, "
               f"expires {manifest.to_dict()['expires']} -> {out_dir}")


if __name__ == "__main__":
    sys.exit(release_group())
