"""The daemon's client of `daemon.v1.DaemonService` on grpclib, typed by the generated messages.

Written by hand rather than generated: five methods, and grpcio's generated stubs
(daemon_pb2_grpc.py, kept for the reference Manager) would pull grpcio into the daemon.
tests/unit/comm/test_rpc.py checks every method here against the service in daemon_pb2's
descriptor, so a change of the proto that this file misses fails a test, like stale generated code.
"""

from __future__ import annotations

from typing import Any

from grpclib.client import Channel, Handler, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.protocol import H2Protocol

from daemon_app.proto import daemon_pb2 as pb

SERVICE = "daemon.v1.DaemonService"


class _AbortOnClose:
    """The connection's transport, closed by abort(): no TLS close_notify exchange.

    grpclib closes the connection when a keepalive PING goes unanswered; a plain close() of a TLS
    transport first waits for the peer's close_notify (asyncio: 30 s), so a Manager that vanished
    would keep the dead connection, and the calls on it, alive that long."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._transport.abort()


class _LinkProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol, plus: the reason the connection was lost (a TLS alert from the
    Manager arrives only there, after the handshake) and an abortive close."""

    lost: BaseException | None = None
    handshake_done = False  # asyncio calls connection_made once the TLS handshake completed
    heard = False  # any byte from the Manager after the handshake

    def connection_made(self, transport: Any) -> None:
        self.handshake_done = True
        super().connection_made(transport)
        self.connection._transport = _AbortOnClose(transport)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc
        super().connection_lost(exc)


class LinkChannel(Channel):
    """A grpclib Channel whose connections close at once and remember why they were lost."""

    last_protocol: _LinkProtocol | None = None

    def _protocol_factory(self) -> H2Protocol:
        protocol = _LinkProtocol(Handler(), self._config, self._h2_config)
        self.last_protocol = protocol
        return protocol

    @property
    def silent_after_handshake(self) -> bool:
        """The latest connection completed the TLS handshake, then ended before the Manager sent a
        byte. With TLS 1.3 the server checks the client certificate after the handshake, and its
        alert is often lost when it closes the connection: this is how a refusal looks."""
        p = self.last_protocol
        return p is not None and p.handshake_done and not p.heard and p.lost is not None

    @property
    def lost_with(self) -> BaseException | None:
        """The error that ended the latest connection (None: still open, or closed cleanly)."""
        return self.last_protocol.lost if self.last_protocol is not None else None


class DaemonServiceClient:
    """One attribute per RPC; call it with a request and `timeout=` (every call has a deadline)."""

    def __init__(self, channel: Channel) -> None:
        self.Register = UnaryUnaryMethod[pb.RegisterRequest, pb.RegisterResponse](
            channel, f"/{SERVICE}/Register", pb.RegisterRequest, pb.RegisterResponse)
        self.Heartbeat = UnaryUnaryMethod[pb.HeartbeatRequest, pb.HeartbeatResponse](
            channel, f"/{SERVICE}/Heartbeat", pb.HeartbeatRequest, pb.HeartbeatResponse)
        self.ReportMetrics = UnaryUnaryMethod[pb.ReportBatch, pb.ReportAck](
            channel, f"/{SERVICE}/ReportMetrics", pb.ReportBatch, pb.ReportAck)
        self.ReportCommandStatus = UnaryUnaryMethod[pb.CommandStatus, pb.CommandStatusAck](
            channel, f"/{SERVICE}/ReportCommandStatus", pb.CommandStatus, pb.CommandStatusAck)
        # A server stream: open it with `.open(timeout=...)`, send the request, iterate the commands.
        self.Commands = UnaryStreamMethod[pb.CommandStreamRequest, pb.Command](
            channel, f"/{SERVICE}/Commands", pb.CommandStreamRequest, pb.Command)
