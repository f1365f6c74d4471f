"""`daemon-manager`: the reference Manager's command line (a click group; add commands with @main.command)."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import click

from daemon_manager.release import release_group

DB_OPTION = click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
                         help="The Manager's SQLite database.")
FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True)
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def open_store(db_path: str) -> Any:
    from daemon_manager.store import Store

    return Store(db_path)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def _json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reference Manager for daemon.pyz: a mutual-TLS gRPC server that stores nodes, reports and
    command results in SQLite, and queues commands for nodes."""


main.add_command(release_group, "release")


@main.group("pki")
def pki_group() -> None:
    """A DEVELOPMENT ONLY certificate authority."""


@pki_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--node", "nodes", multiple=True, help="Make a client certificate for this node (repeatable).")
def pki_init(directory: str, nodes: tuple[str, ...]) -> None:
    """Write a development CA, a server certificate for localhost/127.0.0.1 and one client
    certificate per --node into DIRECTORY (see its README.txt)."""
    from daemon_manager import pki

    for node in nodes:
        if not _NODE_NAME.fullmatch(node):
            raise click.BadParameter(f"{node!r}: use letters, digits, '.', '_' and '-'", param_hint="--node")
    pki.init(directory, list(nodes))
    click.echo(f"wrote a {pki.DEV_MARK} PKI to {directory}: ca.crt, server.crt/key"
               + "".join(f", {n}.crt/key" for n in nodes))


@main.command("serve")
@click.option("--listen", default="127.0.0.1:50051", show_default=True,
              help="HOST:PORT; port 0 picks a free one.")
@DB_OPTION
@click.option("--tls-dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Directory with ca.crt, server.crt and server.key (see `pki init`).")
@click.option("--heartbeat-interval", type=float, default=0.0, show_default=True,
              help="Seconds; tells daemons their heartbeat interval (0: they keep their own).")
@click.option("--files-listen", default=None, metavar="HOST:PORT",
              help="Where update packages are served over HTTPS with mutual TLS (default: the --listen "
                   "host, a free port). The URL is kept in the database for `push-update`.")
def serve(listen: str, db_path: str, tls_dir: str, heartbeat_interval: float,
          files_listen: str | None) -> None:
    """Run the gRPC server and the update package server. The bound gRPC HOST:PORT is the first line
    on stdout, the package server's base URL the second. SIGTERM stops it."""
    import asyncio
    import logging
    import signal

    from daemon_manager.server import ManagerServer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        files = files_listen or f"{listen.rsplit(':', 1)[0]}:0"
        server = ManagerServer(db_path, tls_dir, listen, heartbeat_interval_ms=int(heartbeat_interval * 1000),
                               files_listen=files)
        address = await server.start()
        click.echo(address)
        click.echo(server.files.url)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logging.getLogger("daemon_manager").info("stopping")
        await server.stop(2.0)

    asyncio.run(run())


@main.command("nodes")
@DB_OPTION
@FORMAT_OPTION
def nodes_cmd(db_path: str, fmt: str) -> None:
    """Every node: id, hostname, ip, os, versions, last seen, agent state."""
    rows = open_store(db_path).nodes()
    if fmt == "json":
        _json(rows)
        return
    click.echo(f"{'NODE':<38} {'HOSTNAME':<20} {'IP':<16} {'OS':<22} {'DAEMON':<8} {'AGENT':<8} "
               f"{'LAST SEEN':<21} AGENT STATE")
    for n in rows:
        click.echo(f"{n['node_id']:<38} {n['hostname'] or '-':<20} {n['ip'] or '-':<16} "
                   f"{(n['os'] or '-')[:22]:<22} {n['daemon_version'] or '-':<8} "
                   f"{n['agent_version'] or '-':<8} {_when(n['last_seen']):<21} "
                   f"{n['agent_state'] or '-'}")


@main.command("reports")
@DB_OPTION
@click.option("--node", "node_id", required=True, help="Node id.")
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the newest N reports.")
@FORMAT_OPTION
def reports_cmd(db_path: str, node_id: str, last: int | None, fmt: str) -> None:
    """A node's reports in sequence order: seq, timestamp, metrics."""
    rows = open_store(db_path).reports(node_id, last)
    if fmt == "json":
        _json(rows)
        return
    click.echo(f"{'SEQ':>8} {'TIMESTAMP':<28} {'DROPPED':>7} METRICS")
    for r in rows:
        summary = []
        for name, group in sorted(r["metrics"].items()):
            values = group["values"]
            pct = values.get("usage_percent", values.get("used_percent"))
            summary.append(f"{name}={pct}" if pct is not None else name)
        click.echo(f"{r['seq']:>8} {r['timestamp']:<28} {r['outbox_dropped']:>7} {' '.join(summary)}")


@main.command("commands")
@DB_OPTION
@click.option("--node", "node_id", default=None, help="Only this node's commands.")
@FORMAT_OPTION
def commands_cmd(db_path: str, node_id: str | None, fmt: str) -> None:
    """Queued and finished commands with their states and every status received."""
    rows = open_store(db_path).commands(node_id)
    if fmt == "json":
        _json(rows)
        return
    click.echo(f"{'COMMAND':<34} {'NODE':<38} {'KIND':<9} {'STATE':<12} {'UPDATED':<21} DETAIL")
    for c in rows:
        last = c["statuses"][-1]["message"] if c["statuses"] else ""
        detail = (c["result"] or {}).get("error") or last or json.dumps(
            {k: v for k, v in c["command"].items() if k not in ("id", "type")})
        click.echo(f"{c['id']:<34} {c['node_id']:<38} {c['kind']:<9} {c['state']:<12} "
                   f"{_when(c['updated_at']):<21} {detail}")


@main.command("agent-command")
@DB_OPTION
@click.option("--node", "node_id", required=True, help="Node id.")
@click.argument("action", type=click.Choice(["start", "stop", "restart", "reset"]))
def agent_command(db_path: str, node_id: str, action: str) -> None:
    """Queue an Agent command (start, stop, restart, reset) for a node; prints the command id."""
    click.echo(open_store(db_path).enqueue_command(node_id, {"type": "agent", "action": action}))


@main.command("push-update")
@DB_OPTION
@click.option("--node", "node_id", required=True, help="Node id.")
@click.option("--file", "package", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The package: an Agent binary or a daemon.pyz.")
@click.option("--manifest", "manifest_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory with manifest.json and manifest.json.sig (`release sign`).")
def push_update(db_path: str, node_id: str, package: str, manifest_dir: str) -> None:
    """Serve FILE to a node over the Manager's HTTPS (mutual TLS) and queue an update command with
    the signed manifest; prints the command id. `serve` must run on the same --db (it serves the
    file and pushes the command); follow the update with `daemon-manager updates`."""
    from pathlib import Path

    from daemon_manager.files import URL_SETTING, add_file

    directory = Path(manifest_dir)
    try:
        raw = (directory / "manifest.json").read_bytes()
        sig = (directory / "manifest.json.sig").read_bytes().strip()
    except OSError as exc:
        raise click.ClickException(f"cannot read the release in {manifest_dir}: {exc}") from None
    try:
        manifest = json.loads(raw)
        component, sha256, size = manifest["component"], manifest["sha256"], manifest["size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{directory / 'manifest.json'} is not a release manifest: "
                                   f"{exc}") from None
    store = open_store(db_path)
    if store.node(node_id) is None:
        raise click.ClickException(f"unknown node {node_id!r}: it has never registered with this Manager")
    base = store.setting(URL_SETTING)
    if not base:
        raise click.ClickException(f"no package server recorded in {db_path}: start `daemon-manager serve "
                                   f"--db {db_path} ...` first")
    digest, length = add_file(db_path, package)
    if (digest, length) != (sha256, size):
        raise click.ClickException(f"{package} ({length} bytes, sha256 {digest}) is not the file the "
                                   f"manifest names ({size} bytes, sha256 {sha256})")
    command_id = store.enqueue_command(node_id, {"type": "update", "component": component,
                                                 "url": f"{base}/files/{digest}", "manifest": raw,
                                                 "manifest_sig": sig})
    click.echo(command_id)


MAX_AGENT_CONFIG = 3 * 1024 * 1024  # the proto's 4 MiB message limit, with room; daemons cap lower


@main.command("push-config")
@DB_OPTION
@click.option("--node", "node_id", required=True, help="Node id.")
@click.option("--agent-config", "agent_config", type=click.Path(exists=True, dir_okay=False),
              help="The whole new content of the Agent's config file (agent.config_file).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A daemon setting by dotted key, e.g. daemon.report_interval=30s (repeatable; "
              "only the node's remote_config.allowed_keys).")
def push_config(db_path: str, node_id: str, agent_config: str | None, settings: tuple[str, ...]) -> None:
    """Queue an agent_config command (--agent-config: the node checks, installs and verifies the file,
    then commits it or rolls back to its last-known-good) or a daemon_settings command (--set: checked
    by the node's config schema and applied by a reload); prints the command id. Follow it with
    `configs`."""
    from pathlib import Path

    if bool(agent_config) == bool(settings):
        raise click.UsageError("give either --agent-config FILE or one or more --set KEY=VALUE")
    command: dict[str, Any]
    if agent_config:
        content = Path(agent_config).read_bytes()
        if len(content) > MAX_AGENT_CONFIG:
            raise click.ClickException(f"{agent_config} is {len(content)} bytes; at most {MAX_AGENT_CONFIG} "
                                       "can be pushed (and the node's remote_config.max_agent_config_bytes)")
        command = {"type": "agent_config", "content": content}
    else:
        values = {}
        for item in settings:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise click.UsageError(f"--set {item!r}: expected KEY=VALUE")
            values[key.strip()] = value
        command = {"type": "daemon_settings", "values": values}
    store = open_store(db_path)
    if store.node(node_id) is None:
        raise click.ClickException(f"unknown node {node_id!r}: it has never registered with this Manager")
    click.echo(store.enqueue_command(node_id, command))


@main.command("configs")
@DB_OPTION
@click.option("--node", "node_id", required=True, help="Node id.")
@FORMAT_OPTION
def configs_cmd(db_path: str, node_id: str, fmt: str) -> None:
    """A node's Agent config pushes with every state, and the config effective after them."""
    data = open_store(db_path).configs(node_id)
    if fmt == "json":
        _json(data)
        return
    click.echo(f"effective agent config: {data['effective_agent_config'] or '(unknown: none committed)'}")
    reported = data["reported_agent_config"]
    drift = " (DRIFT: not what the pushes left)" if reported and data["effective_agent_config"] and \
        reported != data["effective_agent_config"] else ""
    click.echo(f"reported by heartbeat:  {reported or '(none)'}{drift}")
    click.echo(f"daemon settings:        {data['reported_daemon_settings'] or '(none set remotely)'}")
    for p in data["pushes"]:
        what = f"{p['sha256'][:19]}  {p['bytes']} bytes" if p["kind"] == "agent_config" else \
            "settings " + ", ".join(f"{k}={v}" for k, v in sorted(p["values"].items()))
        click.echo(f"{p['id']}  {what}  {p['state']}  (queued {_when(p['created_at'])})")
        for st in p["statuses"]:
            click.echo(f"    {_when(st['received_at'])}  {st['state']}  {st['message'] or ''}".rstrip())
        r = p["result"]
        if r:
            click.echo(f"    result: {r['old_version'] or '(none)'} -> {r['new_version'] or '?'}"
                       + (" (rolled back)" if r["rolled_back"] else ""))


@main.command("updates")
@DB_OPTION
@click.option("--node", "node_id", required=True, help="Node id.")
@FORMAT_OPTION
def updates_cmd(db_path: str, node_id: str, fmt: str) -> None:
    """A node's updates and rollbacks: every state it reported, and the final result."""
    rows = open_store(db_path).updates(node_id)
    if fmt == "json":
        _json(rows)
        return
    for u in rows:
        click.echo(f"{u['id']}  {u['kind']} {u['component']} {u['version'] or ''}  {u['state']}  "
                   f"(queued {_when(u['created_at'])})")
        for st in u["statuses"]:
            pct = f" {st['percent']:.0f}%" if st["state"] == "downloading" else ""
            click.echo(f"    {_when(st['received_at'])}  {st['state']}{pct}  {st['message'] or ''}".rstrip())
        r = u["result"]
        if r:
            outcome = "success" if r["success"] else ("rolled back" if r["rolled_back"] else "failed")
            click.echo(f"    result: {outcome}, {r['old_version'] or '?'} -> {r['new_version'] or '?'}"
                       + (f", {r['error']}" if r["error"] else ""))

