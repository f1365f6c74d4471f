"""The reference Manager's gRPC server (asyncio, mutual TLS): validates, stores, pushes commands.

All database work happens on the event loop's thread, so one Store connection serves every call.
Commands queued by other processes (`push-update`, Store.enqueue_command) are found by one poller
(`CommandPoller`), which wakes the streams of the nodes concerned.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from daemon_app.comm import messages
from daemon_app.proto import daemon_pb2 as pb
from daemon_app.proto import daemon_pb2_grpc as pb_grpc
from daemon_manager.store import Store

log = logging.getLogger("daemon_manager")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_BATCH = 1000
MAX_METRIC_GROUPS = 256
MAX_LOGS = 1000
POLL_SECONDS = 0.25
STREAM_IDLE_SECONDS = 5.0
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
TERMINAL = messages.TERMINAL_STATES
STATES = messages.TERMINAL_STATES | messages.PROGRESS_STATES
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Daemons ping every 10 s even without calls (seed §3.5.1); allow it instead of sending GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


class Invalid(ValueError):
    """A field that fails validation; becomes INVALID_ARGUMENT with this message."""


def _timestamp(value: str, what: str) -> str:
    if len(value) > 64:
        raise Invalid(f"{what}: too long")
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{what}: not an RFC 3339 timestamp: {value[:40]!r}") from None
    return value


def _node_id(value: str) -> str:
    if not _NODE_ID.fullmatch(value):
        raise Invalid(f"node_id: must be 1-128 characters of [A-Za-z0-9._:@-], got {value[:40]!r}")
    return value


def _short(value: str, what: str, limit: int = 256) -> str:
    if len(value) > limit:
        raise Invalid(f"{what}: longer than {limit} characters")
    return value


def validate_node(info: pb.NodeInfo) -> None:
    _node_id(info.node_id)
    for name in ("hostname", "ip", "os", "arch", "daemon_version", "agent_version", "register_at"):
        _short(getattr(info, name), f"node.{name}")
    if len(info.labels) > 64:
        raise Invalid("node.labels: more than 64 labels")
    for key, value in info.labels.items():
        _short(key, "node.labels key", 128)
        _short(value, f"node.labels[{key[:20]}]", 256)


def validate_report(report: pb.Report, node_id: str) -> dict[str, Any]:
    """A Report -> the dict the store keeps; Invalid when it is not something a daemon sends."""
    if report.node_id != node_id:
        raise Invalid(f"report {report.seq}: node_id {report.node_id[:40]!r} differs from the batch's")
    if report.seq < 1:
        raise Invalid("report seq must be >= 1")
    _timestamp(report.timestamp, f"report {report.seq}: timestamp")
    if len(report.metrics) > MAX_METRIC_GROUPS:
        raise Invalid(f"report {report.seq}: more than {MAX_METRIC_GROUPS} metric groups")
    if len(report.logs) > MAX_LOGS:
        raise Invalid(f"report {report.seq}: more than {MAX_LOGS} log entries")
    try:
        data = messages.report_from_pb(report)
    except ValueError as exc:
        raise Invalid(f"report {report.seq}: a JSON field is not valid JSON: {exc}") from None
    for name, group in data["metrics"].items():
        _short(name, "metric group name", 128)
        if not isinstance(group["values"], dict):
            raise Invalid(f"report {report.seq}: metrics[{name[:40]}].values must be a JSON object")
        if group["timestamp"]:
            _timestamp(group["timestamp"], f"report {report.seq}: metrics[{name[:40]}].timestamp")
    known = ("node_id", "seq", "timestamp", "metrics", "agent_status", "logs", "outbox_dropped")
    data["extra"] = {k: v for k, v in data.items() if k not in known}
    return data


@dataclass(frozen=True)
class Peer:
    cn: str
    serial: str
    address: str


class DaemonService(pb_grpc.DaemonServiceServicer):
    def __init__(self, store: Store, heartbeat_interval_ms: int = 0) -> None:
        self.store = store
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.waiters: dict[str, asyncio.Event] = {}
        self._cert_cache: dict[bytes, tuple[str, str]] = {}

    # --- identity --------------------------------------------------------------------------------

    def _peer(self, context: grpc.aio.ServicerContext) -> Peer:
        auth = context.auth_context()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        if pem not in self._cert_cache:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(pem)
            cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            if len(self._cert_cache) > 10_000:
                self._cert_cache.clear()
            self._cert_cache[pem] = (str(cns[0].value) if cns else "", format(cert.serial_number, "x"))
        cn, serial = self._cert_cache[pem]
        return Peer(cn, serial, context.peer())

    async def _known(self, node_id: str, context: grpc.aio.ServicerContext) -> Peer:
        """The caller must have registered this node id with a certificate of the same CN."""
        peer = self._peer(context)
        try:
            _node_id(node_id)
        except Invalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        node = self.store.node(node_id)
        if node is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"node {node_id} is not registered")
        if node["cert_cn"] != peer.cn:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {node_id} belongs to certificate CN {node['cert_cn']!r}, "
                                f"not {peer.cn!r}")
        return peer

    # --- RPCs ------------------------------------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        peer = self._peer(context)
        try:
            validate_node(request.node)
        except Invalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        existing = self.store.node(request.node.node_id)
        if existing is not None and existing["cert_cn"] != peer.cn:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {request.node.node_id} is registered with certificate CN "
                                f"{existing['cert_cn']!r}, not {peer.cn!r}")
        acked = self.store.register_node(request.node, peer.address, peer.cn, peer.serial)
        log.info("node %s registered from %s (CN %s, serial %s), acked seq %d", request.node.node_id,
                 peer.address, peer.cn, peer.serial, acked)
        return pb.RegisterResponse(node_id=request.node.node_id, acked_seq=acked,
                                   heartbeat_interval_ms=self.heartbeat_interval_ms)

    async def Heartbeat(self, request: pb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        await self._known(request.node_id, context)
        agent = None
        if request.HasField("agent_status"):
            agent = messages.agent_status_from_pb(request.agent_status)
        self.store.heartbeat(request.node_id, agent, request.outbox_depth, request.outbox_dropped,
                             agent_config_hash=request.agent_config_hash,
                             daemon_settings_hash=request.daemon_settings_hash)
        return pb.HeartbeatResponse(next_interval_ms=self.heartbeat_interval_ms)

    async def ReportMetrics(self, request: pb.ReportBatch, context: grpc.aio.ServicerContext) -> pb.ReportAck:
        await self._known(request.node_id, context)
        if len(request.reports) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"more than {MAX_BATCH} reports in a batch")
        good, rejected, errors = [], [], []
        for report in request.reports:
            try:
                good.append(validate_report(report, request.node_id))
            except Invalid as exc:
                rejected.append(report.seq)
                errors.append(str(exc))
        last_seq = max((r.seq for r in request.reports), default=0)
        stored, dups, acked = self.store.store_reports(request.node_id, good, last_seq)
        if rejected:
            log.warning("node %s: refused %d invalid report(s): %s", request.node_id, len(rejected),
                        errors[0])
        return pb.ReportAck(acked_seq=acked, stored=stored, duplicates=dups, rejected_seqs=rejected,
                            error="; ".join(errors[:5]))

    async def ReportCommandStatus(self, request: pb.CommandStatus,
                                  context: grpc.aio.ServicerContext) -> pb.CommandStatusAck:
        await self._known(request.node_id, context)
        if request.state not in STATES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown command state {request.state[:40]!r}")
        if len(request.message) > 65536 or len(request.command_id) > 128:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "command status fields too long")
        accepted = self.store.record_status(request.node_id, request)
        level = logging.INFO if request.state in TERMINAL else logging.DEBUG
        log.log(level, "node %s: command %s %s %s", request.node_id, request.command_id, request.state,
                request.message)
        return pb.CommandStatusAck(accepted=accepted)

    async def Commands(self, request: pb.CommandStreamRequest, context: grpc.aio.ServicerContext) -> None:
        """Push every command not yet answered: at once when the stream opens (so commands from
        before a reconnect are delivered again; the daemon ignores repeats), then as they are queued."""
        await self._known(request.node_id, context)
        node_id = request.node_id
        event = asyncio.Event()
        self.waiters[node_id] = event  # the newest stream of a node is the one that gets woken
        sent: set[str] = set()
        try:
            while not context.done():
                event.clear()
                for cmd in self.store.deliverable_commands(node_id):
                    if cmd.id in sent:
                        continue
                    await context.write(cmd)
                    self.store.mark_sent(cmd.id)
                    sent.add(cmd.id)
                    log.info("node %s: command %s (%s) sent", node_id, cmd.id, cmd.WhichOneof("kind"))
                try:
                    await asyncio.wait_for(event.wait(), STREAM_IDLE_SECONDS)
                except TimeoutError:
                    pass
        finally:
            if self.waiters.get(node_id) is event:
                del self.waiters[node_id]


class CommandPoller:
    """The one place that notices newly queued commands (from any process) and wakes their streams."""

    def __init__(self, service: DaemonService, interval: float = POLL_SECONDS) -> None:
        self.service = service
        self.interval = interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                waiting = self.service.store.nodes_with_queued_commands() & set(self.service.waiters)
            except Exception:
                log.exception("polling the command queue failed")
                continue
            for node_id in waiting:
                self.service.waiters[node_id].set()


def _generic_handler(service: DaemonService) -> grpc.GenericRpcHandler:
    """The service's methods, with requests parsed here so that garbage becomes INVALID_ARGUMENT
    (gRPC's own deserializer would answer UNKNOWN and log a traceback per bad message)."""
    from google.protobuf.message import DecodeError

    def wrap(method: Any, request_type: Any) -> Any:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = request_type.FromString(raw)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"not a valid {request_type.DESCRIPTOR.full_name} message")
            return await method(request, context)
        return handle

    def unary(method: Any, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(wrap(method, request_type),
                                                   response_serializer=response_type.SerializeToString)

    return grpc.method_handlers_generic_handler("daemon.v1.DaemonService", {
        "Register": unary(service.Register, pb.RegisterRequest, pb.RegisterResponse),
        "Heartbeat": unary(service.Heartbeat, pb.HeartbeatRequest, pb.HeartbeatResponse),
        "ReportMetrics": unary(service.ReportMetrics, pb.ReportBatch, pb.ReportAck),
        "ReportCommandStatus": unary(service.ReportCommandStatus, pb.CommandStatus, pb.CommandStatusAck),
        "Commands": grpc.unary_stream_rpc_method_handler(wrap(service.Commands, pb.CommandStreamRequest),
                                                         response_serializer=pb.Command.SerializeToString),
    })


def server_credentials(tls_dir: str) -> grpc.ServerCredentials:
    d = Path(tls_dir)
    pair = ((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=(d / "ca.crt").read_bytes(),
                                       require_client_auth=True)


class ManagerServer:
    """Start with `await start()`, stop with `await stop()`; `address` is the bound host:port."""

    def __init__(self, db_path: str, tls_dir: str, listen: str = "127.0.0.1:0",
                 heartbeat_interval_ms: int = 0, files_listen: str | None = None) -> None:
        self.db_path, self.tls_dir, self.listen = db_path, tls_dir, listen
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # HOST:PORT of the update package server (mutual TLS); None: no package server.
        self.files_listen = files_listen
        self.files: Any = None
        self.address = ""
        self._server: grpc.aio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self.store: Store | None = None

    async def start(self) -> str:
        self.store = Store(self.db_path)
        service = DaemonService(self.store, self.heartbeat_interval_ms)
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        self._server.add_generic_rpc_handlers((_generic_handler(service),))
        port = self._server.add_secure_port(self.listen, server_credentials(self.tls_dir))
        if not port:
            raise OSError(f"cannot listen on {self.listen}")
        await self._server.start()
        host = self.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        self._poller = asyncio.get_running_loop().create_task(CommandPoller(service).run())
        if self.files_listen is not None:
            from daemon_manager.files import URL_SETTING, FileServer

            self.files = FileServer(self.db_path, self.tls_dir, self.files_listen)
            self.store.set_setting(URL_SETTING, self.files.start())
        log.info("manager listening on %s (db %s)", self.address, self.db_path)
        return self.address

    async def stop(self, grace: float = 1.0) -> None:
        if self.files is not None:
            self.files.stop()
            self.files = None
        if self._poller is not None:
            self._poller.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        if self.store is not None:
            self.store.close()
            self.store = None


class ThreadedManager:
    """The Manager on its own event loop in a background thread (tests and benchmarks)."""

    def __init__(self, db_path: str, tls_dir: str, listen: str = "127.0.0.1:0", **kw: Any) -> None:
        self.server = ManagerServer(db_path, tls_dir, listen, **kw)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="manager", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0.2), self.loop).result(30)
        # Stream handlers still winding down would be destroyed pending when the loop closes.
        asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
