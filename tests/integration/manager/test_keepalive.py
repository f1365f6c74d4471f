"""A Manager that vanishes without closing the connection (host gone, cable cut) is noticed by the
link's HTTP/2 PINGs while nothing else is sent, and the link connects again when it is back."""

from __future__ import annotations

import selectors
import socket
import threading

import pytest

from daemon_app import config
from daemon_app.comm.link import ManagerLink
from tests.helpers import base_config, wait_until
from tests.integration.manager.conftest import node_tls
from tests.integration.manager.test_link_inprocess import EngineStandIn


class SilentProxy:
    """Forwards loopback TCP to `target` until `vanish()`: from then on it reads and drops every byte
    in both directions and closes nothing, like a peer whose host disappeared."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.silent = threading.Event()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silent-proxy", daemon=True)
        self._thread.start()

    def vanish(self) -> None:
        self.silent.set()

    def come_back(self) -> None:
        self.silent.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        socks = [self.listener]
        while not self._stop.is_set():
            for key, _ in sel.select(0.1):
                if key.data is None:
                    client, _ = self.listener.accept()
                    if self.silent.is_set():  # a vanished host does not accept either: drop it
                        client.close()
                        continue
                    upstream = socket.create_connection(self.target)
                    self.connections += 1
                    sel.register(client, selectors.EVENT_READ, upstream)
                    sel.register(upstream, selectors.EVENT_READ, client)
                    socks += [client, upstream]
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (key.fileobj, key.data):
                        try:
                            sel.unregister(s)
                        except (KeyError, ValueError):
                            pass
                        s.close()
                    continue
                if not self.silent.is_set():
                    key.data.sendall(data)
        for s in socks:
            s.close()


@pytest.mark.timeout(60)
def test_a_manager_that_goes_silent_is_noticed_by_keepalive_and_the_link_comes_back(manager, tmp_path,
                                                                                     pki_dir):
    proxy = SilentProxy(manager.address)
    # Heartbeats and call deadlines far away: only the PING can notice the silence.
    cfg = config.validate(base_config(tmp_path, manager={
        "address": proxy.address, "tls": node_tls(pki_dir), "reconnect_interval": "100ms",
        "reconnect_max": "500ms", "heartbeat_interval": "600s", "timeout": "60s",
        "keepalive_time": "1s", "keepalive_timeout": "1s"}))
    link = ManagerLink(cfg, EngineStandIn("keepalive-node"), agent=lambda: None,
                      config_hashes=lambda: None)
    link.start()
    try:
        wait_until(lambda: link.status()["registered"], timeout=15, what="registration")
        proxy.vanish()
        error = wait_until(lambda: link.status()["last_error"], timeout=15, what="the silence to be noticed")
        assert error.startswith(f"D2001 command stream from manager {proxy.address} failed: connection lost")
        assert not link.status()["connected"]
        before = proxy.connections
        proxy.come_back()
        wait_until(lambda: link.status()["registered"] and proxy.connections > before, timeout=15,
                   what="a new connection after the Manager came back")
        assert link.status()["last_error"] == ""
    finally:
        link.stop(0)
        proxy.close()
