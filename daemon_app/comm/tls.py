"""Mutual-TLS material for the Manager link: read the files, build the client's ssl.SSLContext
(TLS 1.3 unless `manager.tls.min_version` allows 1.2, ALPN h2), notice when the files change, warn on
expiry."""

from __future__ import annotations

import binascii
import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon_app.errors import ManagerConnectError

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

MIN_VERSIONS = ("1.3", "1.2")  # manager.tls.min_version: what the link accepts, newest first
# TLS 1.2 suites with forward secrecy and AEAD, as HTTP/2 (RFC 7540 9.2.2) requires; 1.3 has its own.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


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


def client_context(tls_cfg: Any, server_name: str = "") -> ssl.SSLContext:
    """A client SSLContext from the files as they are now: the CA verifies the Manager (hostname
    included), the certificate and key identify this node, ALPN offers only h2 (gRPC), and nothing
    below `tls_cfg.min_version` is offered. D2001 names the file that cannot be used."""
    import ssl

    version = str(getattr(tls_cfg, "min_version", "1.3"))
    if version not in MIN_VERSIONS:
        raise ManagerConnectError(f"manager.tls.min_version: must be one of {', '.join(MIN_VERSIONS)}, "
                                  f"got {version!r}")
    material = load(tls_cfg)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    if version == "1.2":
        ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(["h2"])
    try:
        ctx.load_verify_locations(cadata=material.ca.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ManagerConnectError(f"manager.tls.ca_file: {tls_cfg.ca_file} holds no usable CA "
                                  f"certificate: {exc}") from exc
    try:
        ctx.load_cert_chain(tls_cfg.cert_file, tls_cfg.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ManagerConnectError(f"manager.tls.cert_file/key_file: {tls_cfg.cert_file} and "
                                  f"{tls_cfg.key_file} are not a matching certificate and private key: "
                                  f"{exc}") from exc
    return ctx


def describe_cert(path: str) -> dict[str, Any]:
    """Subject CN, serial and validity of the first certificate in a PEM file.

    Read with a small DER walker rather than `cryptography` (~13 MB of resident memory): `config
    check` and the start-up check run it without loading OpenSSL at all.
    """
    try:
        with open(path, "rb") as fh:
            der = _pem_body(fh.read())
        return _describe(der)
    except (OSError, ValueError) as exc:
        raise ManagerConnectError(f"manager.tls.cert_file: {path} is not a valid certificate: {exc}") from exc


_CN_OID = bytes([0x55, 0x04, 0x03])  # 2.5.4.3 commonName
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be",
                  0x1C: "utf-32-be"}


def _pem_body(pem: bytes) -> bytes:
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start + 1)
    if start < 0 or stop < 0:
        raise ValueError("no PEM CERTIFICATE block")
    try:
        return binascii.a2b_base64(pem[start + len(begin):stop])
    except binascii.Error as exc:
        raise ValueError(f"bad base64 in the PEM block: {exc}") from exc


def _tlv(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One DER element at `pos`: (tag, start of its value, end of its value)."""
    if pos + 2 > end:
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _items(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        out.append(_tlv(der, start, end))
        start = out[-1][2]
    return out


def _describe(der: bytes) -> dict[str, Any]:
    tag, start, end = _tlv(der, 0, len(der))
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, start, end = _tlv(der, start, end)  # tbsCertificate
    fields = _items(der, start, end)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 5 or [f[0] for f in fields[:5]] != [0x02, 0x30, 0x30, 0x30, 0x30]:
        raise ValueError("unexpected certificate structure")
    serial, _, _, validity, subject = fields[:5]
    times = _items(der, validity[1], validity[2])
    if len(times) != 2:
        raise ValueError("unexpected validity structure")
    cn = ""
    for rdn in _items(der, subject[1], subject[2]):
        for attr in _items(der, rdn[1], rdn[2]):
            parts = _items(der, attr[1], attr[2])
            if len(parts) == 2 and parts[0][0] == 0x06 and der[parts[0][1]:parts[0][2]] == _CN_OID:
                codec = _STRING_CODECS.get(parts[1][0], "utf-8")
                cn = der[parts[1][1]:parts[1][2]].decode(codec, errors="replace")
    return {"subject_cn": cn, "serial": der[serial[1]:serial[2]].hex().lstrip("0"),
            "not_before": _time(der, *times[0]), "not_after": _time(der, *times[1])}


def _time(der: bytes, tag: int, start: int, end: int) -> datetime.datetime:
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("unexpected time type")
    if len(text) != 15 or not text.endswith("Z"):
        raise ValueError(f"unexpected time {text!r}")
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)  # noqa: UP017 - Python 3.9


def check_validity(path: str) -> dict[str, Any]:
    """Log D2001 when the client certificate is expired or not yet valid: the handshake will fail,
    and gRPC's own message for it is cryptic. Returns describe_cert(path)."""
    info = describe_cert(path)
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - Python 3.9
    if info["not_after"] < now:
        log.error("D2001 client certificate %s (CN %s) expired at %s; the Manager will refuse it", path,
                  info["subject_cn"], info["not_after"].isoformat(), extra={"code": ManagerConnectError.code})
    elif info["not_before"] > now:
        log.error("D2001 client certificate %s (CN %s) is not valid before %s", path, info["subject_cn"],
                  info["not_before"].isoformat(), extra={"code": ManagerConnectError.code})
    return info
