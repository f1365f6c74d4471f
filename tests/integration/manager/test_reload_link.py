"""SIGHUP applies a new Manager address without a restart: off -> Manager A -> Manager B."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from tests.helpers import wait_until
from tests.integration.manager.conftest import Manager, daemon_config, node_tls


@pytest.mark.timeout(90)
def test_reload_turns_the_link_on_and_moves_it_to_another_manager(pki_dir, tmp_path, daemon_processes):
    first = Manager(str(tmp_path / "a.db"), pki_dir)
    second = Manager(str(tmp_path / "b.db"), pki_dir)
    first.start(0)
    second.start(0)
    try:
        work = tmp_path / "d"
        cfg_path = daemon_config(work, first.address, node_tls(pki_dir))
        cfg = yaml.safe_load(Path(cfg_path).read_text())
        cfg["manager"]["address"] = ""
        Path(cfg_path).write_text(yaml.safe_dump(cfg))
        daemon = daemon_processes(cfg_path)
        wait_until(lambda: (work / "node_id").exists(), timeout=20, what="the daemon to start")
        node_id = (work / "node_id").read_text().strip()

        def reload_to(address: str) -> None:
            cfg["manager"]["address"] = address
            Path(cfg_path).write_text(yaml.safe_dump(cfg))
            daemon.signal(signal.SIGHUP)

        reload_to(first.address)
        wait_until(lambda: first.store().reports(node_id), timeout=30, what="reports at Manager A")

        reload_to(second.address)
        wait_until(lambda: second.store().reports(node_id), timeout=30, what="reports at Manager B")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        first.stop()
        second.stop()
