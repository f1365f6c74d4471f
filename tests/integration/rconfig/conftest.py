"""A daemon config for remote config tests: the sample Agent reading the pushed file, fast health
checks and restarts, remote config on with a 4 KiB cap and a 3 s verify window, and a config check."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.helpers import DaemonProcess, base_config, deep_merge, sample_agent_executable, wait_until

CHECKER = textwrap.dedent("""\
    import sys
    text = open(sys.argv[1]).read()
    if "forbidden" in text:
        print("line 1: 'forbidden' is not a setting")
        sys.exit(4)
    """)


def node_config(work: Path, tmp: Path, address: str, pki_dir: Path, **overrides: Any) -> dict[str, Any]:
    config_file = work / "agent" / "agent.conf"
    checker = tmp / "check.py"
    checker.write_text(CHECKER)
    cfg = base_config(
        work, daemon={"report_interval": "1s"},
        manager={"address": address, "heartbeat_interval": "500ms", "reconnect_interval": "200ms",
                 "reconnect_max": "1s", "timeout": "5s",
                 "tls": {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / "node-a.crt"),
                         "key_file": str(pki_dir / "node-a.key")}},
        agent={"enabled": True, "binary_path": sample_agent_executable(),
               "args": ["--config", str(config_file), "--interval", "0.2"],
               "config_file": str(config_file), "config_check": [sys.executable, str(checker)],
               "stop_timeout": "3s", "start_seconds": "200ms",
               "health_check": {"interval": "200ms", "heartbeat_timeout": "2s"},
               "restart": {"backoff_base": "100ms", "backoff_max": "300ms", "max_retries": 20}},
        remote_config={"enabled": True, "max_agent_config_bytes": 4096, "verify_timeout": "3s",
                       "check_timeout": "10s"})
    return deep_merge(cfg, overrides)


# A `pre_config` veto (its body given by the test) beside a `post_config` that records every answer
# in <plugin file>.results, one JSON object per line.
FREEZE_PLUGIN = """\
import json
from daemon_app.hookspecs import hookimpl

@hookimpl
def pre_config(request):
{veto}

@hookimpl
def post_config(result):
    with open(__file__ + ".results", "a") as fh:
        fh.write(json.dumps(result) + "\\n")
"""


def restart_with_freeze_plugin(node: Any, veto: str) -> Path:
    """Stop `node`'s daemon, put the freeze plugin in its plugin directory, start a new daemon in
    its place (node.daemon; the caller stops it) and wait for its command stream. Returns the file
    where post_config records the answers."""
    plugins = node.work / "plugins"
    plugins.mkdir(exist_ok=True)
    node.daemon.kill()
    (plugins / "freeze.py").write_text(FREEZE_PLUGIN.format(veto=textwrap.indent(veto, "    ")))
    node.daemon = DaemonProcess(node.daemon.config_path)
    wait_until(lambda: node.manager.streams_opened >= 2, timeout=30, what="the new daemon's stream")
    return plugins / "freeze.py.results"
