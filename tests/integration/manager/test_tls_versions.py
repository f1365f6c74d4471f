"""TLS 1.3 by default (seed §6.1): the link and the Manager's package server refuse a TLS 1.2 peer with a
clear error; manager.tls.min_version "1.2" lets the link talk to an old Manager."""

from __future__ import annotations

import http.client
import ssl

import pytest

from daemon_app import config
from daemon_app.comm.link import ManagerLink
from daemon_app.errors import ConfigValidateError
from daemon_manager import pki
from daemon_manager.files import FileServer
from tests.helpers import base_config, wait_until
from tests.integration.manager.conftest import node_tls
from tests.integration.manager.test_link_inprocess import EngineStandIn
from tests.integration.manager.tls12_peer import Tls12OnlyPeer


def _link(work, address, pki_dir, **tls) -> ManagerLink:
    cfg = config.validate(base_config(work, manager={
        "address": address, "tls": {**node_tls(pki_dir), **tls}, "reconnect_interval": "50ms",
        "reconnect_max": "200ms", "timeout": "3s"}))
    return ManagerLink(cfg, EngineStandIn("tls-node"), agent=lambda: None,
                      config_hashes=lambda: None)


@pytest.mark.timeout(30)
def test_the_link_refuses_a_manager_that_offers_only_tls_1_2_with_d2001(tmp_path, pki_dir, caplog):
    with Tls12OnlyPeer(pki_dir) as peer:
        link = _link(tmp_path, peer.address, pki_dir)
        link.start()
        try:
            error = wait_until(lambda: link.status()["last_error"], timeout=15, what="the link's error")
        finally:
            link.stop(0)
        assert error.startswith(f"D2001 cannot connect to manager {peer.address}: TLS handshake failed: ")
        assert "offers no TLS version this daemon accepts" in error
        assert "requires TLS 1.3" in error and 'min_version: "1.2"' in error
        assert not link.status()["registered"]
        assert peer.outcomes and all(o.startswith("refused") for o in peer.outcomes), peer.outcomes
    assert any(r.getMessage() == error and r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.timeout(30)
def test_min_version_1_2_lets_the_link_complete_a_tls_1_2_handshake(tmp_path, pki_dir):
    with Tls12OnlyPeer(pki_dir) as peer:
        link = _link(tmp_path, peer.address, pki_dir, min_version="1.2")
        link.start()
        try:
            wait_until(lambda: "handshake TLSv1.2" in peer.outcomes, timeout=15, what="a TLS 1.2 handshake")
            error = wait_until(lambda: link.status()["last_error"], timeout=15, what="the link's error")
        finally:
            link.stop(0)
        # The peer is no gRPC server: the call fails after the handshake, not because of the version.
        assert error.startswith("D2001") and "offers no TLS version" not in error


@pytest.mark.timeout(30)
def test_the_link_still_registers_with_the_reference_manager_over_tls_1_3(tmp_path, pki_dir, manager):
    link = _link(tmp_path, manager.address, pki_dir)
    link.start()
    try:
        wait_until(lambda: link.status()["registered"], timeout=15, what="registration")
    finally:
        link.stop(0)


@pytest.mark.parametrize("value", ["1.3", "1.2", 1.2, 1.3])
def test_min_version_accepts_1_3_and_1_2_written_with_or_without_quotes(tmp_path, value):
    cfg = config.validate(base_config(tmp_path, manager={"tls": {"min_version": value}}))
    assert cfg.manager.tls.min_version == str(value)


@pytest.mark.parametrize("value", ["1.1", "1.0", "tls1.3", 1, True, ""])
def test_min_version_below_1_2_or_malformed_is_a_d1002_config_error(tmp_path, value):
    expected = r"(?s)^D1002 .*manager\.tls\.min_version: must be one of 1\.3, 1\.2"
    with pytest.raises(ConfigValidateError, match=expected):
        config.validate(base_config(tmp_path, manager={"tls": {"min_version": value}}))


@pytest.mark.timeout(30)
def test_the_package_server_refuses_a_tls_1_2_client_and_serves_a_tls_1_3_one(tmp_path, pki_dir):
    files = FileServer(str(tmp_path / "m.db"), str(pki_dir), "127.0.0.1:0")
    url = files.start()
    try:
        host, port = url.removeprefix("https://").rsplit(":", 1)

        def client(max_version: ssl.TLSVersion) -> http.client.HTTPSConnection:
            ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
            ctx.maximum_version = max_version
            ctx.load_cert_chain(pki_dir / "node-a.crt", pki_dir / "node-a.key")
            return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)

        old = client(ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError) as info:
            old.request("GET", "/files/" + "0" * 64)
        assert info.value.reason in {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"}, info.value
        new = client(ssl.TLSVersion.TLSv1_3)
        new.connect()
        assert new.sock.version() == "TLSv1.3"
        new.request("GET", "/files/" + "0" * 64)
        assert new.getresponse().status == 404  # served over TLS 1.3; there is no such package
    finally:
        files.stop()


@pytest.mark.timeout(30)
def test_a_client_certificate_the_manager_refuses_is_a_d2001_that_says_so(tmp_path, pki_dir, manager):
    other = tmp_path / "other-pki"
    pki.init(other, ["node-a"])  # the same names, another CA: the Manager does not trust it
    link = _link(tmp_path, manager.address, pki_dir, cert_file=str(other / "node-a.crt"),
                 key_file=str(other / "node-a.key"))
    link.start()
    try:
        error = wait_until(lambda: link.status()["last_error"], timeout=15, what="the link's error")
    finally:
        link.stop(0)
    assert error.startswith(f"D2001 cannot connect to manager {manager.address}: "), error
    assert "refused this daemon's client certificate (manager.tls.cert_file" in error, error
    assert manager.store().nodes() == []
