"""Mutual-TLS material for the Manager link: read the files, notice when they change, warn on expiry."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

from daemon_app.errors import ManagerConnectError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsMaterial:
    ca: bytes
    key: bytes
    cert: bytes
    fingerprint: tuple[Any, ...]


def _paths(tls_cfg: Any) -> dict[str, str]:
    return {"ca_file": tls_cfg.ca_file, "key_file": tls_cfg.key_file, "cert_file": tls_cfg.cert_file}


def fingerprint(tls_cfg: Any) -> tuple[Any, ...]:
    """Changes whenever any of the three files is replaced or rewritten (inode, size, mtime)."""
    out: list[Any] = []
    for path in _paths(tls_cfg).values():
        try:
            st = os.stat(path)
            out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            out.append((path, str(exc)))
    return tuple(out)


def load(tls_cfg: Any) -> TlsMaterial:
    """Read manager.tls.*; ManagerConnectError (D2001) names the file that is missing or not PEM."""
    data: dict[str, bytes] = {}
    for key, path in _paths(tls_cfg).items():
        if not path:
            raise ManagerConnectError(f"manager.tls.{key} is not set; mutual TLS needs it")
        try:
            with open(path, "rb") as fh:
                body = fh.read()
        except OSError as exc:
            raise ManagerConnectError(
                f"manager.tls.{key}: cannot read {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN " not in body:
            raise ManagerConnectError(f"manager.tls.{key}: {path} is not a PEM file")
        data[key] = body
    return TlsMaterial(data["ca_file"], data["key_file"], data["cert_file"], fingerprint(tls_cfg))


def describe_cert(path: str) -> dict[str, Any]:
    """Subject CN, serial and validity of a PEM certificate file.

    Uses the ssl module's decoder rather than `cryptography`: grpc already loads the TLS libraries,
    and `cryptography` would add ~13 MB to the daemon's resident memory.
    """
    import ssl

    try:
        info = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        raise ManagerConnectError(f"manager.tls.cert_file: {path} is not a valid certificate: {exc}") from exc
    subject = dict(pair for rdn in info.get("subject", ()) for pair in rdn)
    serial = info.get("serialNumber", "").lower().lstrip("0")
    return {"subject_cn": subject.get("commonName", ""), "serial": serial,
            "not_before": _when(info["notBefore"]), "not_after": _when(info["notAfter"])}


def _when(text: str) -> datetime.datetime:
    import ssl

    return datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(text), datetime.UTC)


def check_validity(path: str) -> dict[str, Any]:
    """Log D2001 when the client certificate is expired or not yet valid: the handshake will fail,
    and gRPC's own message for it is cryptic. Returns describe_cert(path)."""
    info = describe_cert(path)
    now = datetime.datetime.now(datetime.UTC)
    if info["not_after"] < now:
        log.error("D2001 client certificate %s (CN %s) expired at %s; the Manager will refuse it", path,
                  info["subject_cn"], info["not_after"].isoformat(), extra={"code": ManagerConnectError.code})
    elif info["not_before"] > now:
        log.error("D2001 client certificate %s (CN %s) is not valid before %s", path, info["subject_cn"],
                  info["not_before"].isoformat(), extra={"code": ManagerConnectError.code})
    return info
