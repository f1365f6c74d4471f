"""A DEVELOPMENT ONLY certificate authority: a CA, a server cert for localhost, a client cert per node.

Good for tests, demos and a lab; a real fleet gets its certificates from the organisation's PKI.
The helpers can also make the bad certificates the tests need: expired, from another CA, or a
server certificate for the wrong name.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_MARK = "DEVELOPMENT ONLY"
README = f"""{DEV_MARK} certificates made by `daemon-manager pki init`.

Do not use them in production: the CA key sits next to them unencrypted.
  ca.crt / ca.key            the development CA (CN says {DEV_MARK})
  server.crt / server.key    the Manager's certificate (localhost, 127.0.0.1, ::1)
  <node>.crt / <node>.key    one client certificate per node

Daemon config:   manager.tls.ca_file: ca.crt, cert_file: <node>.crt, key_file: <node>.key
Manager:         daemon-manager serve --tls-dir THIS_DIR ...
"""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@dataclass
class Issued:
    """A certificate and its key, as PEM."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")

    def write(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        """Key first, then cert, each replaced atomically (a reader never sees half a file)."""
        _write(Path(key_path), self.key_pem, 0o600)
        _write(Path(cert_path), self.cert_pem, 0o644)


class CertificateAuthority:
    def __init__(self, issued: Issued) -> None:
        self.issued = issued

    @classmethod
    def create(cls, name: str = f"daemon-manager {DEV_MARK} CA", days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_MARK)])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(Issued(cert, key))

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str],
             key_path: str | os.PathLike[str]) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), "the development CA uses EC keys"
        return cls(Issued(cert, key))

    @property
    def cert_pem(self) -> bytes:
        return self.issued.cert_pem

    def issue(self, common_name: str, *, server: bool = False, names: tuple[str, ...] = (),
              expired: bool = False, days: int = 825) -> Issued:
        """A leaf certificate. `names` become SANs (IPs recognised); `expired` makes one that ended
        yesterday (valid signature, dead date)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        if expired:
            start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
        sans: list[x509.GeneralName] = []
        for name in names or (common_name,):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        ca_cert = self.issued.cert
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_MARK)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issued.key.public_key()),
                               critical=False)
                .sign(self.issued.key, hashes.SHA256()))
        return Issued(cert, key)

    def issue_server(self, names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"), **kw: bool) -> Issued:
        return self.issue(names[0], server=True, names=names, **kw)

    def issue_client(self, node: str, **kw: bool) -> Issued:
        return self.issue(node, **kw)


def init(directory: str | os.PathLike[str], nodes: list[str] | tuple[str, ...] = (),
         server_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> CertificateAuthority:
    """Write a development PKI into `directory` (see README)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create()
    ca.issued.write(out / "ca.crt", out / "ca.key")
    ca.issue_server(server_names).write(out / "server.crt", out / "server.key")
    for node in nodes:
        ca.issue_client(node).write(out / f"{node}.crt", out / f"{node}.key")
    (out / "README.txt").write_text(README)
    return ca
