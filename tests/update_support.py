"""Test support for the update area: keys, signed releases, a test PKI and a real mutual-TLS HTTPS server."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import os
import ssl
import subprocess
import sys
import threading
import time
import zipapp
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from daemon_app import config as config_mod
from daemon_app.update.manifest import Manifest
from daemon_manager.release import sign_bytes
from tests.helpers import ROOT, base_config

# --- keys and releases --------------------------------------------------------------------------


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def manifest_bytes(component: str, version: str, package: bytes, *, expires_in: float = 3600.0,
                   size: int | None = None, sha256: str | None = None) -> bytes:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)
    return Manifest(component, version, sha256 or hashlib.sha256(package).hexdigest(),
                    len(package) if size is None else size, expires).to_bytes()


def write_release(out: Path, key: Any, component: str, version: str, package: bytes, **kw: Any) -> Path:
    """out/package, out/manifest.json, out/manifest.json.sig, signed with `key`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "package").write_bytes(package)
    raw = manifest_bytes(component, version, package, **kw)
    (out / "manifest.json").write_bytes(raw)
    (out / "manifest.json.sig").write_bytes(base64.b64encode(sign_bytes(key, raw)) + b"\n")
    return out


# --- a config with every path in tmp ------------------------------------------------------------


def update_config(work: Path, pki: TestPKI | None = None, *, ca_file: str = "",
                  **update: Any) -> config_mod.Config:
    raw = base_config(work, agent={"binary_path": str(work / "bin" / "agent")},
                      update={"min_free_bytes": 0, "connect_timeout": "2s", "read_timeout": "1s",
                              "download_deadline": "3s", "daemon_path": str(work / "bin" / "daemon.pyz"),
                              **update})
    if pki is not None:
        raw["manager"] = {"tls": {"ca_file": ca_file or str(pki.ca_file), "cert_file": str(pki.client_cert),
                                  "key_file": str(pki.client_key)}}
    return config_mod.validate(raw)


# --- PKI and HTTPS server -----------------------------------------------------------------------


class TestPKI:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, written to `directory`."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "update test CA")])
        self.ca_cert = self._cert(name, self.ca_key.public_key(), ca=True)
        self.ca_file = self._write("ca.crt", self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue("server", server=True)
        self.client_cert, self.client_key = self.issue("client")

    def _cert(self, subject: x509.Name, public_key: Any, *, ca: bool = False, server: bool = False
              ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(self.ca_cert.subject if not ca else subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                             x509.DNSName("localhost")]), critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def issue(self, name: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = self._cert(subject, key.public_key(), server=server)
        return (self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{name}.key", private_pem(key)))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
        return path


class PackageServer:
    """HTTPS (client certificate required) serving /pkg and misbehaving paths:
    /big (more bytes than announced), /endless (a byte every 20 ms forever), /stall (a few bytes,
    then silence), anything else 404."""

    def __init__(self, pki: TestPKI, package: bytes = b"") -> None:
        self.package = package
        self.stop_event = threading.Event()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                server.requests.append(self.path)
                try:
                    self._serve()
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            def _serve(self) -> None:
                if self.path == "/pkg":
                    self._head(len(server.package))
                    self.wfile.write(server.package)
                elif self.path == "/big":
                    self._head(None)
                    self.wfile.write(server.package + b"X" * 4096)
                elif self.path == "/endless":
                    self._head(None)
                    while not server.stop_event.is_set():
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        server.stop_event.wait(0.02)
                elif self.path == "/stall":
                    self._head(len(server.package))
                    self.wfile.write(server.package[:10])
                    self.wfile.flush()
                    server.stop_event.wait(60)
                else:
                    self.send_error(404)

            def _head(self, length: int | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        ctx.load_verify_locations(pki.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def new_ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def snapshot(cfg: config_mod.Config) -> dict[str, Any]:
    """What a failed update must leave untouched: the installed files, the state file, and
    download_dir (no leftovers)."""
    def read(path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    download_dir = Path(cfg.update.download_dir)
    return {
        "agent": read(cfg.agent.binary_path),
        "daemon": read(cfg.update.daemon_path),
        "state": read(os.path.join(cfg.daemon.work_dir, "update", "state.json")),
        "downloads": sorted(os.listdir(download_dir)) if download_dir.exists() else [],
        "journal": read(os.path.join(cfg.daemon.work_dir, "update", "journal.json")),
        "bin": sorted(os.listdir(os.path.dirname(cfg.agent.binary_path))),
    }


# --- a real Agent process and a small supervisor double (tests only) -----------------------------

def agent_script(version: str, *, healthy: bool = True) -> bytes:
    """A Python 'Agent' that reports `version` through a file (its heartbeat) and stays up;
    an unhealthy one exits at once without reporting."""
    body = ('import os, pathlib, time\n'
            f'pathlib.Path(os.environ["AGENT_VERSION_FILE"]).write_text({version!r})\n'
            'time.sleep(600)\n') if healthy else 'raise SystemExit(3)\n'
    return f"#!{sys.executable}\n".encode() + body.encode()


class ProcessSupervisor:
    """Implements the update's Supervisor interface against a real child process."""

    def __init__(self, binary: str, work: Path) -> None:
        self.binary = binary
        self.version_file = work / "agent.version"
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.started_versions: list[bytes] = []

    def start_agent(self) -> None:
        self.version_file.unlink(missing_ok=True)
        self.started_versions.append(Path(self.binary).read_bytes())
        env = dict(os.environ, AGENT_VERSION_FILE=str(self.version_file))
        self.proc = subprocess.Popen([self.binary], env=env, stdin=subprocess.DEVNULL)

    def stop_agent(self, timeout: float | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout or 10)
        self.proc = None

    def current_version(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return ""
        try:
            return self.version_file.read_text()
        except FileNotFoundError:
            return ""

    def wait_for_heartbeat(self, version: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.current_version() == version:
                return True
            if self.proc is None or self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


# --- a stand-in daemon.pyz for self-update tests ------------------------------------------------

# A zipapp that plays the daemon around a self-update: records that it started, recovers, commits
# (healthy), fails in the given way (crash: exit 1, exit2, abort: SIGABRT, hang: never commits,
# exits 0 on SIGTERM), or runs the update its test left in OUT/update-request and execs into it.
MAIN = '''
import json, os, pathlib, signal, sys, time
sys.path.insert(0, {root!r})
from daemon_app import config
from daemon_app.update.flow import Updater, UpdateRequest
from daemon_app.update.selfupdate import commit_pending_update

VERSION, MODE = {version!r}, {mode!r}
cfg = config.load(sys.argv[1])
out = pathlib.Path(sys.argv[2])

def record(name, data):
    (out / (name + ".tmp")).write_text(json.dumps(data))
    os.replace(out / (name + ".tmp"), out / name)

record(VERSION + ".started", {{"pid": os.getpid()}})
with open(out / "starts.log", "a") as fh:
    fh.write("%s %d\\n" % (VERSION, os.getpid()))
if MODE == "crash":
    sys.exit(1)
if MODE == "exit2":
    sys.exit(2)
if MODE == "abort":
    os.abort()
# Like the real daemon: SIGTERM is a clean stop, exit status 0.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
result = Updater(cfg).recover()
record(VERSION + ".recovered", result.to_dict() if result else None)
if MODE == "healthy":
    record(VERSION + ".commit", commit_pending_update(cfg.daemon.work_dir))
request = out / "update-request"
if request.exists():
    os.rename(request, out / "update-request.taken")
    rel = str(out / "release")
    req = UpdateRequest.from_dir("daemon", rel, file=rel + "/package")
    pyz = cfg.update.daemon_path  # become the new daemon: same pid, same arguments, the new file
    argv = [sys.executable, pyz, *sys.argv[1:]]
    res = Updater(cfg, daemon_restart=lambda: os.execv(sys.executable, argv)).run(req)
    record(VERSION + ".update-failed", res.to_dict())
deadline = time.monotonic() + 60
while not (out / "stop").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
'''


def make_pyz(path: Path, version: str, mode: str) -> bytes:
    src = path.parent / f"src-{version}-{mode}"
    src.mkdir()
    (src / "__main__.py").write_text(MAIN.format(root=str(ROOT), version=version, mode=mode))
    zipapp.create_archive(src, path)
    return path.read_bytes()
