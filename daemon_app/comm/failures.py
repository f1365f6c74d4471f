"""What went wrong on the Manager link, in words and with its D-code.

grpclib reports a failure in one of several shapes: the server's gRPC status (GRPCError), the
connection dying under a call (StreamTerminatedError), a TCP or TLS failure while connecting
(OSError, ssl.SSLError), a deadline (asyncio.TimeoutError). The operator should not have to know
which: `describe_failure` turns each into D2001 (cannot connect or keep the connection), D2002 (the
Manager refused registration) or D2003 (a report, heartbeat or status failed), naming the cause.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from daemon_app.errors import DaemonError, ManagerConnectError, ManagerRegisterError, ManagerReportError

# OpenSSL's reasons when the two sides share no protocol version: the peer's alert, or our refusal of
# the version it chose.
_VERSION_REASONS = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION",
                              "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW"})
# Alerts a Manager sends when it refuses our client certificate.
_CLIENT_CERT_REASONS = frozenset({"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
                                  "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
                                  "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                                  "TLSV13_ALERT_CERTIFICATE_REQUIRED", "TLSV1_ALERT_ACCESS_DENIED"})
_CONNECT_STATUSES = frozenset({"UNAVAILABLE", "UNAUTHENTICATED"})


def call_errors() -> tuple[type[BaseException], ...]:
    """Every exception a grpclib call can end with (imported lazily: grpclib is not on the
    stand-alone daemon's path)."""
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    return (GRPCError, StreamTerminatedError, ProtocolError, OSError, asyncio.TimeoutError)


def connection_errors() -> tuple[type[BaseException], ...]:
    """Failures that mean the connection itself is gone (or never came up)."""
    from grpclib.exceptions import StreamTerminatedError

    return (StreamTerminatedError, OSError)


def describe_stream_failure(exc: BaseException, mcfg: Any) -> DaemonError:
    """A failure of the command stream alone (the connection still stands) as D2001 with its cause:
    the Manager's gRPC status, or a message that is not a Command."""
    address = mcfg.address
    status = getattr(exc, "status", None)
    if status is not None and hasattr(exc, "message"):
        cause = f"{getattr(status, 'name', status)}: {getattr(exc, 'message', '') or ''}".rstrip(": ")
    elif type(exc).__name__ == "DecodeError":  # google.protobuf.message.DecodeError
        cause = f"the Manager sent a message that is not a daemon.v1.Command ({exc})"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    return ManagerConnectError(f"command stream from manager {address} failed: {cause}")


def answered_errors() -> tuple[type[BaseException], ...]:
    """Failures of one call that leave the connection usable: the Manager answered with a gRPC
    status, or did not answer in time (a dead connection is noticed by keepalive, not here)."""
    from grpclib.exceptions import GRPCError

    return (GRPCError, asyncio.TimeoutError)


def is_cancelled(exc: BaseException) -> bool:
    """True for a gRPC CANCELLED status: the call was ended on purpose, not a failure."""
    status = getattr(exc, "status", None)
    return getattr(status, "name", "") == "CANCELLED"


def tls_cause(exc: BaseException, min_version: str) -> str | None:
    """The TLS handshake's failure in words, or None when `exc` is not one."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the Manager's certificate was refused: {exc.verify_message or exc.reason} "
                "(check manager.tls.ca_file and manager.server_name)")
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or ""
    if reason in _VERSION_REASONS:
        allow = ' (manager.tls.min_version: "1.2" allows an older Manager)' if min_version == "1.3" else ""
        return (f"TLS handshake failed: the Manager offers no TLS version this daemon accepts; "
                f"the daemon requires TLS {min_version} or newer{allow} [{reason}]")
    if reason in _CLIENT_CERT_REASONS:
        return (f"the Manager refused this daemon's client certificate (manager.tls.cert_file) "
                f"[{reason}]")
    return f"TLS handshake failed: {reason or exc}"


def describe_failure(exc: BaseException, phase: str, mcfg: Any, node_id: str,
                     lost_with: BaseException | None = None, silent: bool = False) -> DaemonError:
    """`exc` from a call made in `phase` (connect, commands, report, heartbeat, status) as a
    D-coded error whose text says what failed and why. `lost_with` is what ended the connection
    under the call, when known: a TLS alert the Manager sent after the handshake shows only there.
    `silent`: the Manager closed the connection after the TLS handshake without sending anything."""
    address = mcfg.address
    min_version = str(getattr(mcfg.tls, "min_version", "1.3"))
    status = getattr(exc, "status", None)
    if status is not None and hasattr(exc, "message"):  # GRPCError: the Manager answered with a status
        code = getattr(status, "name", str(status))
        details = f"{code}: {exc.message or ''}".rstrip(": ")
        if phase == "connect" and code in _CONNECT_STATUSES:
            return ManagerConnectError(f"cannot connect to manager {address}: {details}")
        if phase == "connect":
            return ManagerRegisterError(f"manager {address} refused registration of node {node_id}: "
                                        f"{details}")
        if phase == "commands":
            return ManagerConnectError(f"command stream from manager {address} failed: {details}")
        return ManagerReportError(f"{phase} to manager {address} failed: {details}")
    tls = tls_cause(exc, min_version)
    if tls is None and lost_with is not None and status is None:
        tls = tls_cause(lost_with, min_version)
    if tls is not None:
        return ManagerConnectError(f"cannot connect to manager {address}: {tls}")
    if silent and phase == "connect" and status is None and not isinstance(exc, asyncio.TimeoutError):
        return ManagerConnectError(
            f"cannot connect to manager {address}: the Manager closed the connection right after the TLS "
            f"handshake without a word: most likely it refused this daemon's client certificate "
            f"(manager.tls.cert_file: not signed by a CA the Manager trusts, expired or revoked)")
    if isinstance(exc, asyncio.TimeoutError):
        cause = f"no answer within manager.timeout ({mcfg.timeout:g}s)"
    elif isinstance(exc, OSError):
        cause = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno and os.strerror(exc.errno) not in cause:  # asyncio's own text omits the reason
            cause = f"{os.strerror(exc.errno)}: {cause}"
    else:  # StreamTerminatedError, ProtocolError: the connection went away under the call
        cause = f"connection lost ({exc or type(exc).__name__})"
    if phase == "connect":
        return ManagerConnectError(f"cannot connect to manager {address}: {cause}")
    if phase == "commands":
        return ManagerConnectError(f"command stream from manager {address} failed: {cause}")
    return ManagerReportError(f"{phase} to manager {address} failed: {cause}")
