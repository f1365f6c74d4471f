"""A small Manager written in the test from proto/daemon.proto alone, with grpcio's generic handlers
(not daemon_manager): raw bytes in and out, so a test can also send what no real Manager should."""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from daemon_app.proto import daemon_pb2 as pb

SERVICE = "daemon.v1.DaemonService"


class IndependentManager:
    """Records every call; the attributes below change how it answers, while it runs."""

    def __init__(self, pki_dir: Path) -> None:
        self.lock = threading.Lock()
        self.registers: list[pb.RegisterRequest] = []
        self.heartbeats: list[tuple[float, pb.HeartbeatRequest]] = []
        self.reports: dict[int, pb.Report] = {}  # by seq: a resend overwrites, a gap shows
        self.report_calls = 0
        self.statuses: list[pb.CommandStatus] = []
        self.streams_opened = 0
        self.refuse_reports_until = 0.0  # monotonic: ReportMetrics answers UNAVAILABLE before it
        self.next_interval_ms: int = 0  # HeartbeatResponse.next_interval_ms
        self.node_id = ""  # RegisterResponse.node_id
        self.ack_at_most = 0  # >0: ack only this many reports of each batch (a partial ack)
        self.batch_sizes: list[int] = []
        self._stream_generation = 0  # end_streams() bumps it: every open stream ends
        self._stream_queues: list[queue.Queue[bytes]] = []  # one per Commands stream, newest last
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="independent"))
        handlers = {
            "Register": grpc.unary_unary_rpc_method_handler(self._register),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(self._heartbeat),
            "ReportMetrics": grpc.unary_unary_rpc_method_handler(self._report),
            "ReportCommandStatus": grpc.unary_unary_rpc_method_handler(self._status),
            "Commands": grpc.unary_stream_rpc_method_handler(self._commands),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        creds = grpc.ssl_server_credentials(
            [((pki_dir / "server.key").read_bytes(), (pki_dir / "server.crt").read_bytes())],
            root_certificates=(pki_dir / "ca.crt").read_bytes(), require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
        self.address = f"127.0.0.1:{port}"
        self._server = server
        server.start()

    def stop(self) -> None:
        self._server.stop(0)

    # --- what a test does -----------------------------------------------------------------------

    def push(self, item: pb.Command | bytes) -> None:
        """Send a command (or raw bytes) on the newest Commands stream."""
        with self.lock:
            target = self._stream_queues[-1]
        target.put(item.SerializeToString() if isinstance(item, pb.Command) else item)

    def end_streams(self) -> None:
        """End every open Commands stream (OK status), as a Manager restarting its stream side would."""
        with self.lock:
            self._stream_generation += 1

    def heartbeat_count(self) -> int:
        with self.lock:
            return len(self.heartbeats)

    # --- the service, on raw bytes ----------------------------------------------------------------

    def _register(self, raw: bytes, context: Any) -> bytes:
        req = pb.RegisterRequest.FromString(raw)
        with self.lock:
            self.registers.append(req)
            acked = max(self.reports, default=0)
        return pb.RegisterResponse(node_id=self.node_id, acked_seq=acked).SerializeToString()

    def _heartbeat(self, raw: bytes, context: Any) -> bytes:
        with self.lock:
            self.heartbeats.append((time.monotonic(), pb.HeartbeatRequest.FromString(raw)))
        return pb.HeartbeatResponse(next_interval_ms=self.next_interval_ms).SerializeToString()

    def _report(self, raw: bytes, context: Any) -> bytes:
        batch = pb.ReportBatch.FromString(raw)
        with self.lock:
            self.report_calls += 1
        if time.monotonic() < self.refuse_reports_until:
            context.abort(grpc.StatusCode.UNAVAILABLE, "storage is down")
        with self.lock:
            self.batch_sizes.append(len(batch.reports))
            taken = batch.reports[:self.ack_at_most] if self.ack_at_most else batch.reports
            for report in taken:
                self.reports[report.seq] = report
            acked = max(self.reports, default=0)
        return pb.ReportAck(acked_seq=acked).SerializeToString()

    def _status(self, raw: bytes, context: Any) -> bytes:
        with self.lock:
            self.statuses.append(pb.CommandStatus.FromString(raw))
        return pb.CommandStatusAck().SerializeToString()

    def _commands(self, raw: bytes, context: Any):
        mine: queue.Queue[bytes] = queue.Queue()
        with self.lock:
            self.streams_opened += 1
            self._stream_queues.append(mine)
            generation = self._stream_generation
        while context.is_active() and generation == self._stream_generation:
            try:
                yield mine.get(timeout=0.1)
            except queue.Empty:
                continue
