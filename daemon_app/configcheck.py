"""`config check` beyond the syntax: does the world the configuration names exist?

A valid file can still name an Agent binary that is not there, an update key file nobody
installed, TLS files that are missing or do not belong together, or a plugin section with a typo
(`collectors.filenrr:` is taken for a plugin collector that never runs). The daemon still starts
with each of these, so they are warnings (D1002), not refusals; `config check` exits 1 for them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from typing import Any

from daemon_app.config import SCHEMA, Config


def world_problems(cfg: Config, collector_plugins: Iterable[str]) -> list[str]:
    """Every problem with the files and plugins the config names, as `key: what is wrong` lines.

    `collector_plugins` are the names of the loaded plugins that implement `collect`.
    """
    out: list[str] = []
    out += _agent_binary(cfg)
    out += _update_key(cfg)
    if cfg.manager.address:
        out += _manager_tls(cfg)
    out += _plugin_sections(cfg, set(collector_plugins))
    return out


def _agent_binary(cfg: Config) -> list[str]:
    if not cfg.agent.enabled:
        return []
    path = cfg.agent.binary_path
    if not os.path.exists(path):
        return [f"agent.binary_path: {path} does not exist; the Agent cannot start (the daemon runs "
                "without it and retries)"]
    if not os.path.isfile(path):
        return [f"agent.binary_path: {path} is not a file; the Agent cannot start"]
    if not os.access(path, os.X_OK):
        return [f"agent.binary_path: {path} is not executable (chmod +x); the Agent cannot start"]
    return []


# Key and certificate files are a few KiB; a bigger one is the wrong file, and is not read whole.
MAX_PEM_BYTES = 1024 * 1024


def _update_key(cfg: Config) -> list[str]:
    from daemon_app.errors import DaemonError
    from daemon_app.update.manifest import load_trusted_keys

    path = cfg.update.public_key_file
    if not os.path.exists(path):
        return [f"update.public_key_file: {path} does not exist; every update will be refused until "
                "it holds a trusted key"]
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_PEM_BYTES:
        return [f"update.public_key_file: {path} is not a key file (not a regular file of at most "
                f"{MAX_PEM_BYTES} bytes); every update would be refused"]
    try:
        load_trusted_keys(path)
    except DaemonError as exc:
        return [f"update.public_key_file: {exc.message}; every update would be refused ({exc.code})"]
    return []


def _manager_tls(cfg: Config) -> list[str]:
    tls = cfg.manager.tls
    missing = [f"manager.tls.{key}: {path or '(empty)'} does not exist; the Manager link cannot connect"
               for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                                 ("key_file", tls.key_file))
               if not path or not os.path.isfile(path)]
    if missing:
        return missing
    return _tls_mismatch(tls.ca_file, tls.cert_file, tls.key_file)


def _tls_mismatch(ca_file: str, cert_file: str, key_file: str) -> list[str]:
    """The key must belong to the certificate, and one CA of the bundle must have signed it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(path: str) -> bytes:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
        if len(data) > MAX_PEM_BYTES:
            raise ValueError(f"larger than {MAX_PEM_BYTES} bytes")
        return data

    for key, path in (("cert_file", cert_file), ("key_file", key_file), ("ca_file", ca_file)):
        if not os.access(path, os.R_OK):
            return [f"manager.tls.{key}: cannot read {path} (permission denied; run config check as "
                    "the daemon's user)"]

    def spki(public_key: Any) -> bytes:
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    try:
        cert = x509.load_pem_x509_certificate(read(cert_file))
    except (OSError, ValueError) as exc:
        return [f"manager.tls.cert_file: {cert_file} is not a PEM certificate: {exc}"]
    try:
        key = serialization.load_pem_private_key(read(key_file), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return [f"manager.tls.key_file: {key_file} is not an unencrypted PEM private key: {exc}"]
    try:
        cas = x509.load_pem_x509_certificates(read(ca_file))
    except (OSError, ValueError) as exc:
        return [f"manager.tls.ca_file: {ca_file} is not a PEM certificate bundle: {exc}"]
    out = []
    if spki(key.public_key()) != spki(cert.public_key()):
        out.append(f"manager.tls.key_file: {key_file} is not the key of {cert_file} (they do not match)")
    if not any(_issued_by(cert, ca) for ca in cas):
        out.append(f"manager.tls.ca_file: no certificate in {ca_file} signed {cert_file} "
                   f"(issuer {cert.issuer.rfc4514_string()}); the Manager will refuse this client")
    return out


def _issued_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, ValueError (wrong key type), TypeError: all mean "not this CA"
        return False
    return True


def _plugin_sections(cfg: Config, collector_plugins: set[str]) -> list[str]:
    known = set(SCHEMA["collectors"]) | collector_plugins
    out = []
    for name in cfg.collectors:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.append(f"collectors.{name}: no installed plugin collects under this name{hint}; "
                   "this section does nothing")
    return out
