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


def describe_cert(cert_pem: bytes) -> dict[str, Any]:
    """Subject CN, serial and validity of the client certificate (for logs and status)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return {"subject_cn": str(cns[0].value) if cns else "", "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc, "not_after": cert.not_valid_after_utc}


def check_validity(cert_pem: bytes, path: str) -> None:
    """Log D2001 when the client certificate is expired or not yet valid: the handshake will fail,
    and gRPC's own message for it is cryptic."""
    try:
        info = describe_cert(cert_pem)
    except ValueError as exc:
        raise ManagerConnectError(f"manager.tls.cert_file: {path} is not a valid certificate: {exc}") from exc
    now = datetime.datetime.now(datetime.UTC)
    if info["not_after"] < now:
        log.error("D2001 client certificate %s (CN %s) expired at %s; the Manager will refuse it", path,
                  info["subject_cn"], info["not_after"].isoformat(), extra={"code": ManagerConnectError.code})
    elif info["not_before"] > now:
        log.error("D2001 client certificate %s (CN %s) is not valid before %s", path, info["subject_cn"],
                  info["not_before"].isoformat(), extra={"code": ManagerConnectError.code})
