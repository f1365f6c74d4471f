"""`python -m daemon_manager`: pki init, serve (a real subprocess), nodes, reports, commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from cryptography import x509

from tests.helpers import ROOT, wait_until
from tests.integration.manager.conftest import daemon_config, node_tls


def _manager(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "daemon_manager", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=60, **kw)


def test_pki_init_writes_development_certificates_marked_as_such(tmp_path):
    result = _manager("pki", "init", str(tmp_path / "pki"), "--node", "web-1", "--node", "db-1")
    assert result.returncode == 0, result.stderr
    pki = tmp_path / "pki"
    assert "DEVELOPMENT ONLY" in (pki / "README.txt").read_text()
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert "DEVELOPMENT ONLY" in ca.subject.rfc4514_string()
    server = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    for node in ("web-1", "db-1"):
        cert = x509.load_pem_x509_certificate((pki / f"{node}.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == node
        assert (pki / f"{node}.key").stat().st_mode & 0o077 == 0
    bad = _manager("pki", "init", str(tmp_path / "x"), "--node", "../evil")
    assert bad.returncode != 0 and "--node" in bad.stderr


@pytest.mark.timeout(60)
def test_serve_prints_its_address_first_stores_a_daemon_and_stops_on_sigterm(pki_dir, tmp_path,
                                                                             daemon_processes):
    db = str(tmp_path / "m.db")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    serve = subprocess.Popen([sys.executable, "-m", "daemon_manager", "serve", "--listen", "127.0.0.1:0",
                              "--db", db, "--tls-dir", str(pki_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        address = serve.stdout.readline().strip()
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        work = tmp_path / "d"
        daemon = daemon_processes(daemon_config(work, address, node_tls(pki_dir)))

        def nodes():
            out = _manager("nodes", "--db", db, "--format", "json")
            return json.loads(out.stdout) if out.returncode == 0 else []

        node = wait_until(lambda: nodes() and nodes()[0], timeout=20, what="the node in `nodes`")
        for key in ("node_id", "hostname", "ip", "os", "daemon_version", "agent_version", "last_seen",
                    "agent_state"):
            assert key in node
        node_id = node["node_id"]
        wait_until(lambda: len(json.loads(_manager("reports", "--db", db, "--node", node_id, "--format",
                                                   "json").stdout)) >= 2, timeout=20, what="two reports")
        assert daemon.stop() == 0
        last = json.loads(_manager("reports", "--db", db, "--node", node_id, "--last", "1", "--format",
                                   "json").stdout)
        assert len(last) == 1 and {"seq", "timestamp", "metrics"} <= set(last[0])
        table = _manager("reports", "--db", db, "--node", node_id)
        assert table.returncode == 0 and "SEQ" in table.stdout

        queued = _manager("agent-command", "--db", db, "--node", node_id, "restart")
        assert queued.returncode == 0
        listing = json.loads(_manager("commands", "--db", db, "--node", node_id, "--format", "json").stdout)
        assert listing[0]["id"] == queued.stdout.strip() and listing[0]["state"] == "queued"
        assert "restart" in _manager("commands", "--db", db, "--node", node_id).stdout
        assert node_id in _manager("nodes", "--db", db).stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0
    assert "stopping" in serve.stderr.read()
