"""Conversions between the daemon's plain dicts (seed §4) and the daemon.v1 protobuf messages."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
from typing import Any

from daemon_app.proto import daemon_pb2 as pb

_AGENT_FIELDS = ("pid", "state", "version", "start_time", "cpu_percent", "memory_bytes", "restart_count",
                 "last_restart")
_REPORT_FIELDS = ("node_id", "timestamp", "metrics", "agent_status", "logs")
TERMINAL_STATES = frozenset({"completed", "rolled_back", "failed", "rejected"})
PROGRESS_STATES = frozenset({"downloading", "verifying", "installing", "restarting", "watching"})


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _text(value: Any) -> str:
    """Timestamps may be RFC 3339 text, Unix seconds or None; the wire carries RFC 3339 or ''."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)):
        from daemon_app.metrics import rfc3339

        return rfc3339(float(value))
    return str(value)


_SEED_STATUS = {"STARTING": "running", "RUNNING": "running", "STOPPING": "running", "STOPPED": "stopped",
                "BACKOFF": "stopped", "EXITED": "stopped", "FATAL": "stopped"}


def seed_status(state: str) -> str:
    """The seed's running / stopped / unknown (§4.2) for a supervisor state name."""
    return _SEED_STATUS.get(state.upper(), "unknown")


def agent_status_to_pb(status: dict[str, Any] | None) -> pb.AgentStatus | None:
    if not status:
        return None
    extra = {k: v for k, v in status.items() if k not in _AGENT_FIELDS and k != "status"}
    state = str(status.get("state") or status.get("status") or "")
    return pb.AgentStatus(
        pid=int(status.get("pid") or 0),
        state=state,
        status=seed_status(state),
        version=str(status.get("version") or ""),
        start_time=_text(status.get("start_time")),
        cpu_percent=float(status.get("cpu_percent") or 0.0),
        memory_bytes=max(0, int(status.get("memory_bytes") or 0)),
        restart_count=int(status.get("restart_count") or 0),
        last_restart=_text(status.get("last_restart")),
        extra_json=_json(extra) if extra else "",
    )


def agent_status_from_pb(msg: pb.AgentStatus) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(msg, name) for name in _AGENT_FIELDS}
    out["status"] = msg.status or seed_status(msg.state)
    if msg.extra_json:
        out.update(json.loads(msg.extra_json))
    return out


def report_to_pb(report: dict[str, Any]) -> pb.Report:
    """Seed §4.3 ReportData -> Report (seq, node id and drop count are set when it is sent)."""
    msg = pb.Report(timestamp=_text(report.get("timestamp")))
    for name, group in (report.get("metrics") or {}).items():
        entry = msg.metrics[name]
        entry.name = str(group.get("name", name))
        entry.timestamp = _text(group.get("timestamp"))
        entry.values_json = _json(group.get("values", {}))
    agent = agent_status_to_pb(report.get("agent_status"))
    if agent is not None:
        msg.agent_status.CopyFrom(agent)
    for item in report.get("logs") or ():
        msg.logs.add(level=str(item.get("level", "")), message=str(item.get("message", "")),
                     timestamp=_text(item.get("timestamp")),
                     fields={str(k): str(v) for k, v in (item.get("fields") or {}).items()})
    extra = {k: v for k, v in report.items() if k not in _REPORT_FIELDS}
    if extra:
        msg.extra_json = _json(extra)
    return msg


def report_from_pb(msg: pb.Report) -> dict[str, Any]:
    """The inverse of report_to_pb, plus seq and outbox_dropped (the Manager stores this shape)."""
    out: dict[str, Any] = {
        "node_id": msg.node_id,
        "seq": msg.seq,
        "timestamp": msg.timestamp,
        "metrics": {name: {"name": g.name, "timestamp": g.timestamp,
                           "values": json.loads(g.values_json or "{}")} for name, g in msg.metrics.items()},
        "agent_status": agent_status_from_pb(msg.agent_status) if msg.HasField("agent_status") else None,
        "logs": [{"level": e.level, "message": e.message, "timestamp": e.timestamp, "fields": dict(e.fields)}
                 for e in msg.logs],
        "outbox_dropped": msg.outbox_dropped,
    }
    if msg.extra_json:
        out.update(json.loads(msg.extra_json))
    return out


def command_to_dict(cmd: pb.Command) -> dict[str, Any]:
    """The dict `engine.dispatch_command` takes."""
    kind = cmd.WhichOneof("kind")
    if kind == "update":
        u = cmd.update
        return {"id": cmd.id, "type": "update", "component": u.component, "url": u.url,
                "manifest": bytes(u.manifest),
                "manifest_sig": u.manifest_sig.decode("ascii", errors="replace")}
    if kind == "rollback":
        return {"id": cmd.id, "type": "rollback", "component": cmd.rollback.component}
    if kind == "agent":
        return {"id": cmd.id, "type": "agent", "action": cmd.agent.action}
    if kind == "agent_config":
        return {"id": cmd.id, "type": "agent_config", "content": bytes(cmd.agent_config.content)}
    if kind == "daemon_settings":
        return {"id": cmd.id, "type": "daemon_settings", "values": dict(cmd.daemon_settings.values)}
    return {"id": cmd.id, "type": kind or ""}


_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def node_id_problem(node_id: str) -> str:
    """Why a node id from the Manager cannot be used ("" when it can): 1-128 characters of letters,
    digits and . _ : @ -, starting with a letter or digit (it names files and log lines)."""
    if _NODE_ID.fullmatch(node_id):
        return ""
    return f"{node_id[:40]!r} is not 1-128 characters of letters, digits and . _ : @ -"


COMMAND_KINDS = ("update", "rollback", "agent", "agent_config", "daemon_settings")
AGENT_ACTIONS = ("start", "stop", "restart", "reset")


def command_problem(d: dict[str, Any]) -> str:
    """Why a command (command_to_dict's output) cannot be run at all, with its D-code; "" if it can.
    Such a command is answered `rejected`."""
    kind = d.get("type", "")
    if kind not in COMMAND_KINDS:
        what = f"kind {kind!r}" if kind else "no kind"
        return f"D2003 command {d.get('id', '')} has {what}; this daemon runs {', '.join(COMMAND_KINDS)}"
    if kind == "agent" and d.get("action") not in AGENT_ACTIONS:
        return (f"D3001 agent command {d.get('id', '')}: unknown action {str(d.get('action', ''))[:60]!r} "
                f"(expected {', '.join(AGENT_ACTIONS)})")
    return ""


def command_from_dict(d: dict[str, Any]) -> pb.Command:
    """A dict like command_to_dict's output (id optional) -> Command."""
    cmd = pb.Command(id=str(d.get("id") or ""))
    kind = d.get("type")
    if kind == "update":
        sig = d.get("manifest_sig", b"")
        cmd.update.CopyFrom(pb.UpdateCommand(
            component=str(d.get("component", "")), url=str(d.get("url", "")),
            manifest=bytes(d.get("manifest", b"")),
            manifest_sig=sig.encode("ascii") if isinstance(sig, str) else bytes(sig)))
    elif kind == "rollback":
        cmd.rollback.CopyFrom(pb.RollbackCommand(component=str(d.get("component", ""))))
    elif kind == "agent":
        cmd.agent.CopyFrom(pb.AgentCommand(action=str(d.get("action", ""))))
    elif kind == "agent_config":
        cmd.agent_config.CopyFrom(pb.AgentConfigCommand(content=bytes(d.get("content", b""))))
    elif kind == "daemon_settings":
        cmd.daemon_settings.CopyFrom(pb.DaemonSettingsCommand(
            values={str(k): str(v) for k, v in dict(d.get("values") or {}).items()}))
    else:
        raise ValueError(f"unknown command type {kind!r}: must be update, rollback, agent, agent_config "
                         "or daemon_settings")
    return cmd


# A status's message and error, each at most this long: whatever a handler quotes (a Manager's
# field, a tool's output), a status must stay far below the 4 MiB a Manager accepts, or its
# ReportCommandStatus fails for good and every later answer waits behind it.
MAX_STATUS_TEXT = 16 * 1024


def _cut(text: str) -> str:
    if len(text) <= MAX_STATUS_TEXT:
        return text
    return f"{text[:MAX_STATUS_TEXT]}… ({len(text) - MAX_STATUS_TEXT} characters cut)"


def status_to_pb(node_id: str, command_id: str, state: str, percent: float, message: str,
                 result: dict[str, Any] | None) -> pb.CommandStatus:
    msg = pb.CommandStatus(node_id=node_id, command_id=command_id, state=state, percent=float(percent),
                           message=_cut(message))
    if result is not None:
        msg.result.CopyFrom(pb.UpdateResult(
            success=bool(result.get("success")), old_version=str(result.get("old_version") or ""),
            new_version=str(result.get("new_version") or ""), error=_cut(str(result.get("error") or "")),
            rolled_back=bool(result.get("rolled_back")), component=str(result.get("component") or "")))
    return msg


def primary_ip(manager_address: str) -> str:
    """The local address the kernel would use to reach the Manager (a UDP connect sends nothing)."""
    host = manager_address.rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return ""


def os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def node_info(node_id: str, cfg: Any, agent_version: str, register_at: str) -> pb.NodeInfo:
    from daemon_app import __version__

    return pb.NodeInfo(node_id=node_id, hostname=socket.gethostname(), ip=primary_ip(cfg.manager.address),
                       os=os_name(), arch=platform.machine() or os.uname().machine,
                       labels=dict(cfg.daemon.labels), daemon_version=__version__,
                       agent_version=agent_version, register_at=register_at)
