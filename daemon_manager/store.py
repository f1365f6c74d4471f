"""The reference Manager's SQLite store: nodes, reports (unique by node and seq), commands and their statuses.

The `serve` process and the CLI commands (`nodes`, `reports`, `commands`, `push-update`, ...) open
the same file; WAL lets them read and write side by side.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from typing import Any

from daemon_app.comm import messages
from daemon_app.proto import daemon_pb2 as pb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, hostname TEXT, ip TEXT, peer TEXT, os TEXT, arch TEXT, labels_json TEXT,
    daemon_version TEXT, agent_version TEXT, registered_at REAL, last_seen REAL,
    cert_cn TEXT, cert_serial TEXT, agent_state TEXT, agent_status_json TEXT,
    acked_seq INTEGER NOT NULL DEFAULT 0, outbox_depth INTEGER, outbox_dropped INTEGER);
CREATE TABLE IF NOT EXISTS reports (
    node_id TEXT NOT NULL, seq INTEGER NOT NULL, timestamp TEXT NOT NULL, received_at REAL NOT NULL,
    outbox_dropped INTEGER NOT NULL, metrics_json TEXT NOT NULL, agent_status_json TEXT,
    logs_json TEXT NOT NULL, extra_json TEXT, PRIMARY KEY (node_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, node_id TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL,
    state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, result_json TEXT);
CREATE INDEX IF NOT EXISTS commands_by_node ON commands (node_id, state);
CREATE TABLE IF NOT EXISTS command_status (
    id INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL, node_id TEXT NOT NULL,
    state TEXT NOT NULL, percent REAL, message TEXT, result_json TEXT, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS status_by_command ON command_status (command_id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
DELIVERABLE = ("queued", "sent")  # no status seen yet: delivered again when the node reconnects


_REPORTED_HASH = "agent_config_hash/"  # settings key prefix: the hash a node's last heartbeat carried
_REPORTED_SETTINGS = "daemon_settings_hash/"


def _digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class Store:
    """One connection; not shared between threads (each thread or process opens its own Store)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, timeout=10)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- nodes -----------------------------------------------------------------------------------

    def register_node(self, info: pb.NodeInfo, peer: str, cert_cn: str, cert_serial: str) -> int:
        """Insert or refresh a node; returns the highest report seq held for it."""
        now = time.time()
        with self.db:
            self.db.execute(
                """INSERT INTO nodes (node_id, hostname, ip, peer, os, arch, labels_json, daemon_version,
                       agent_version, registered_at, last_seen, cert_cn, cert_serial)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(node_id) DO UPDATE SET hostname=excluded.hostname, ip=excluded.ip,
                       peer=excluded.peer, os=excluded.os, arch=excluded.arch,
                       labels_json=excluded.labels_json,
                       daemon_version=excluded.daemon_version, agent_version=excluded.agent_version,
                       registered_at=excluded.registered_at, last_seen=excluded.last_seen,
                       cert_cn=excluded.cert_cn, cert_serial=excluded.cert_serial""",
                (info.node_id, info.hostname, info.ip, peer, info.os, info.arch,
                 json.dumps(dict(info.labels)), info.daemon_version, info.agent_version, now, now, cert_cn,
                 cert_serial))
        row = self.db.execute("SELECT acked_seq FROM nodes WHERE node_id = ?", (info.node_id,)).fetchone()
        return int(row[0])

    def node(self, node_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return self._node(row) if row else None

    def nodes(self) -> list[dict[str, Any]]:
        return [self._node(r) for r in self.db.execute("SELECT * FROM nodes ORDER BY node_id")]

    @staticmethod
    def _node(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        out["labels"] = _loads(out.pop("labels_json")) or {}
        out["agent_status"] = _loads(out.pop("agent_status_json"))
        return out

    def heartbeat(self, node_id: str, agent: dict[str, Any] | None, depth: int, dropped: int,
                  agent_config_hash: str = "", daemon_settings_hash: str = "") -> None:
        with self.db:
            reported = ((_REPORTED_HASH, agent_config_hash), (_REPORTED_SETTINGS, daemon_settings_hash))
            for prefix, value in reported:
                if value:
                    self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) "
                                    "DO UPDATE SET value = excluded.value", (prefix + node_id, value))
            self.db.execute("UPDATE nodes SET last_seen=?, outbox_depth=?, outbox_dropped=? WHERE node_id=?",
                            (time.time(), depth, dropped, node_id))
            if agent is not None:
                self.db.execute("UPDATE nodes SET agent_state=?, agent_status_json=? WHERE node_id=?",
                                (agent.get("state", ""), json.dumps(agent), node_id))

    # --- reports ---------------------------------------------------------------------------------

    def store_reports(self, node_id: str, reports: list[dict[str, Any]],
                      last_seq: int) -> tuple[int, int, int]:
        """Store reports once each (a repeat of (node, seq) is ignored). Returns (stored, duplicates,
        acked_seq) where acked_seq covers `last_seq`, the highest seq in the batch."""
        now = time.time()
        stored = 0
        latest_agent = None
        with self.db:
            for r in reports:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO reports (node_id, seq, timestamp, received_at, outbox_dropped, "
                    "metrics_json, agent_status_json, logs_json, extra_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (node_id, r["seq"], r["timestamp"], now, r["outbox_dropped"], json.dumps(r["metrics"]),
                     json.dumps(r["agent_status"]) if r["agent_status"] is not None else None,
                     json.dumps(r["logs"]), json.dumps(r.get("extra") or {})))
                stored += cur.rowcount
                if r["agent_status"] is not None:
                    latest_agent = r["agent_status"]
            self.db.execute("UPDATE nodes SET acked_seq = MAX(acked_seq, ?), last_seen = ? WHERE node_id = ?",
                            (last_seq, now, node_id))
            if latest_agent is not None:
                self.db.execute("UPDATE nodes SET agent_state = ?, agent_status_json = ? WHERE node_id = ?",
                                (latest_agent.get("state", ""), json.dumps(latest_agent), node_id))
        row = self.db.execute("SELECT acked_seq FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return stored, len(reports) - stored, int(row[0]) if row else last_seq

    def reports(self, node_id: str, last: int | None = None) -> list[dict[str, Any]]:
        """Reports of a node in seq order (the newest `last` ones when given)."""
        sql = "SELECT * FROM reports WHERE node_id = ? ORDER BY seq DESC"
        args: tuple[Any, ...] = (node_id,)
        if last is not None:
            sql += " LIMIT ?"
            args += (last,)
        rows = list(self.db.execute(sql, args))
        rows.reverse()
        out = []
        for row in rows:
            d = {"node_id": row["node_id"], "seq": row["seq"], "timestamp": row["timestamp"],
                 "received_at": row["received_at"], "outbox_dropped": row["outbox_dropped"],
                 "metrics": json.loads(row["metrics_json"]), "agent_status": _loads(row["agent_status_json"]),
                 "logs": json.loads(row["logs_json"])}
            d.update(_loads(row["extra_json"]) or {})
            out.append(d)
        return out

    # --- commands --------------------------------------------------------------------------------

    def enqueue_command(self, node_id: str, command: pb.Command | dict[str, Any]) -> str:
        """Queue a command for a node; the serve process pushes it within ~0.5 s (or at the node's
        next connection). `command` is a daemon.v1.Command or a dict like {"type": "agent",
        "action": "restart"}. Returns the command id."""
        if isinstance(command, dict):
            msg = messages.command_from_dict(command)
        else:
            msg = pb.Command()
            msg.CopyFrom(command)
        kind = msg.WhichOneof("kind")
        if kind is None:
            raise ValueError("a command needs a kind: update, rollback, agent or agent_config")
        if not msg.id:
            msg.id = uuid.uuid4().hex
        now = time.time()
        with self.db:
            self.db.execute("INSERT INTO commands (id, node_id, kind, body, state, created_at, updated_at) "
                            "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                            (msg.id, node_id, kind, msg.SerializeToString(), now, now))
        return msg.id

    def deliverable_commands(self, node_id: str) -> list[pb.Command]:
        rows = self.db.execute("SELECT body FROM commands WHERE node_id = ? AND state IN (?, ?) "
                               "ORDER BY created_at, id", (node_id, *DELIVERABLE)).fetchall()
        return [pb.Command.FromString(r[0]) for r in rows]

    def nodes_with_queued_commands(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT node_id FROM commands WHERE state = 'queued'")}

    def mark_sent(self, command_id: str) -> None:
        with self.db:
            self.db.execute("UPDATE commands SET state = 'sent', updated_at = ? "
                            "WHERE id = ? AND state = 'queued'", (time.time(), command_id))

    def record_status(self, node_id: str, status: pb.CommandStatus) -> bool:
        """Keep every status row; the command's state becomes the latest. False for an unknown command."""
        result = None
        if status.HasField("result"):
            r = status.result
            result = {"success": r.success, "old_version": r.old_version, "new_version": r.new_version,
                      "error": r.error, "rolled_back": r.rolled_back, "component": r.component}
        now = time.time()
        with self.db:
            known = self.db.execute("SELECT 1 FROM commands WHERE id = ? AND node_id = ?",
                                    (status.command_id, node_id)).fetchone()
            if not known:
                return False
            result_json = json.dumps(result) if result else None
            self.db.execute("INSERT INTO command_status (command_id, node_id, state, percent, message, "
                            "result_json, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (status.command_id, node_id, status.state, status.percent, status.message,
                             result_json, now))
            self.db.execute("UPDATE commands SET state = ?, updated_at = ?, "
                            "result_json = COALESCE(?, result_json) WHERE id = ?",
                            (status.state, now, result_json, status.command_id))
        return True

    def commands(self, node_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, node_id, kind, body, state, created_at, updated_at, result_json FROM commands"
        args: tuple[Any, ...] = ()
        if node_id:
            sql += " WHERE node_id = ?"
            args = (node_id,)
        out = []
        for row in self.db.execute(sql + " ORDER BY created_at, id", args):
            d = dict(row)
            cmd = messages.command_to_dict(pb.Command.FromString(d.pop("body")))
            cmd.pop("manifest", None)
            content = cmd.pop("content", None)
            if content is not None:
                cmd["sha256"], cmd["bytes"] = _digest(content), len(content)
            d["command"] = cmd
            d["result"] = _loads(d.pop("result_json"))
            d["statuses"] = self.command_statuses(d["id"])
            out.append(d)
        return out

    def command_statuses(self, command_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT state, percent, message, result_json, received_at FROM command_status "
                               "WHERE command_id = ? ORDER BY id", (command_id,))
        return [{**{k: r[k] for k in ("state", "percent", "message", "received_at")},
                 "result": _loads(r["result_json"])} for r in rows]

    def updates(self, node_id: str) -> list[dict[str, Any]]:
        """A node's update and rollback commands, oldest first: component, version (from the signed
        manifest, for display), state, every status received and the final UpdateResult."""
        out = []
        rows = self.db.execute("SELECT id, kind, body, state, created_at, updated_at, result_json "
                               "FROM commands WHERE node_id = ? AND kind IN ('update', 'rollback') "
                               "ORDER BY created_at, id", (node_id,))
        for row in rows:
            cmd = messages.command_to_dict(pb.Command.FromString(row["body"]))
            version = ""
            if cmd["type"] == "update":
                try:
                    version = str(json.loads(cmd["manifest"]).get("version", ""))
                except (ValueError, AttributeError):
                    version = "?"
            out.append({"id": row["id"], "kind": row["kind"], "component": cmd.get("component", ""),
                        "version": version, "url": cmd.get("url", ""), "state": row["state"],
                        "created_at": row["created_at"], "updated_at": row["updated_at"],
                        "result": _loads(row["result_json"]), "statuses": self.command_statuses(row["id"])})
        return out

    def configs(self, node_id: str) -> dict[str, Any]:
        """A node's Agent config pushes, oldest first (the content's sha256 and size, state, every
        status, the result), and the config effective after the last one that ended: the pushed one
        when it ended `completed`, the previous one when it was `rolled_back`."""
        pushes, effective = [], ""
        rows = self.db.execute("SELECT id, kind, body, state, created_at, updated_at, result_json "
                               "FROM commands WHERE node_id = ? AND kind IN ('agent_config', "
                               "'daemon_settings') ORDER BY created_at, id", (node_id,))
        for row in rows:
            cmd = pb.Command.FromString(row["body"])
            result = _loads(row["result_json"])
            common = {"id": row["id"], "kind": row["kind"], "state": row["state"],
                      "created_at": row["created_at"], "updated_at": row["updated_at"], "result": result,
                      "statuses": self.command_statuses(row["id"])}
            if row["kind"] == "daemon_settings":
                pushes.append({**common, "values": dict(cmd.daemon_settings.values)})
                continue
            content = cmd.agent_config.content
            if result and row["state"] == "completed":
                effective = result.get("new_version") or effective
            elif result and row["state"] == "rolled_back":
                effective = result.get("old_version") or effective
            pushes.append({**common, "sha256": _digest(content), "bytes": len(content)})
        return {"node_id": node_id, "effective_agent_config": effective,
                "reported_agent_config": self.setting(_REPORTED_HASH + node_id) or "",
                "reported_daemon_settings": self.setting(_REPORTED_SETTINGS + node_id) or "",
                "pushes": pushes}

    # --- settings (e.g. the package server's address, written by `serve`) ---------------------------

    def set_setting(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None
