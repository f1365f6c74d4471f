"""The Manager link: a gRPC client over mutual TLS that registers, heartbeats, drains the outbox,
receives pushed commands and reports their progress (seed §3.5.1).

The engine's `report` hook only writes to the durable outbox. All network work runs on one asyncio
loop in the "manager-link" thread: the sender (register, statuses, report batches, heartbeats) and
the command stream. Nothing here ever blocks the engine; an idle link sleeps until its next
heartbeat, keepalive ping or certificate check.

The client library is grpclib (pure-Python gRPC: h2 for HTTP/2, Python's ssl for TLS), not grpcio.
Measured side by side (one mutual-TLS channel, Commands stream open, a Heartbeat a second, the
daemon's other imports loaded): grpc.aio idled at 45.3 MB RSS and 8 threads, grpclib at 34.5 MB and
1 thread; in the daemon grpcio's C core alone held 12.3 MB of its 49.2 MB, plus six C-core threads.
The reference Manager stays on grpcio, so every end-to-end test runs two independent gRPC
implementations against each other.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daemon_app.comm import failures, messages, tls
from daemon_app.comm.outbox import Outbox
from daemon_app.comm.snapshot import LinkSnapshot
from daemon_app.errors import ManagerConnectError, ManagerRegisterError, ManagerReportError
from daemon_app.hookspecs import hookimpl
from daemon_app.metrics import rfc3339

if TYPE_CHECKING:
    import asyncio

    from grpclib.config import Configuration

    from daemon_app.comm.rpc import DaemonServiceClient
    from daemon_app.config import Config
    from daemon_app.host import AgentReport, ConfigHashes, Host, Peer

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 3 * 1024 * 1024  # the reference Manager refuses messages over 4 MiB
MAX_BATCH_BYTES = 1024 * 1024
# Command ids are the Manager's UUIDs; a longer one would be remembered, stored and quoted in every
# status and log line of its command, and its status may grow past what the Manager accepts.
MAX_COMMAND_ID = 256
STREAM_SECONDS = 600.0  # the command stream is re-opened this often, so even it has a deadline
TLS_CHECK_SECONDS = 5.0
STOP_GRACE_SECONDS = 2.0  # after the shutdown deadline, how long cancelling calls in flight may take


def keepalive_config(mcfg: Any) -> Configuration:
    """grpclib's HTTP/2 settings for the link: a PING every `keepalive_time`, whether or not a call
    is active, and the connection closed when one is not answered within `keepalive_timeout`, so a
    Manager that vanished without closing the connection (host gone, network cut) is noticed while
    the command stream is idle. grpclib's own defaults would stop pinging after two pings without
    data and send at most one every 300 s; the reference Manager permits a ping every 5 s."""
    from grpclib.config import Configuration

    return Configuration(
        _keepalive_time=float(mcfg.keepalive_time),
        _keepalive_timeout=float(mcfg.keepalive_timeout),
        _keepalive_permit_without_calls=True,
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=float(mcfg.keepalive_time),
        ssl_target_name_override=mcfg.server_name or None,
    )


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); D2001 when there is no port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ManagerConnectError(f"manager.address: {address!r} is not host:port")
    return host.strip("[]"), int(port)


class _ThreadPerCall(concurrent.futures.ThreadPoolExecutor):
    """The link loop's executor: asyncio resolves host names (getaddrinfo) in it. A short-lived
    thread per lookup instead of a pool, whose threads would idle for the life of the process after
    the first connection. (asyncio accepts only a ThreadPoolExecutor; its pool is never used.)"""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="manager-link-resolve", daemon=True).start()
        return future


_HANDLER_CODES = {"update": "D4003", "rollback": "D4004", "agent": "D3001", "agent_config": "D6001",
                  "daemon_settings": "D6001"}
# Their handlers send every state, the end included.
_SELF_REPORTING = frozenset({"update", "rollback", "agent_config", "daemon_settings"})


class _RateLimitedLog:
    """The first of a run of identical errors is logged; repeats within a minute are counted and the
    next one after the minute says how many there were (DESIGN.md §9a)."""

    def __init__(self) -> None:
        self._text = ""
        self._at = 0.0
        self._repeats = 0

    def error(self, text: str, code: str) -> None:
        now = time.monotonic()
        if text == self._text and now - self._at < 60:
            self._repeats += 1
            log.debug("%s", text, extra={"code": code})
            return
        more = ""
        if text == self._text and self._repeats:
            more = f" ({self._repeats} more like it in the last minute)"
        log.error("%s%s", text, more, extra={"code": code})
        self._text, self._at, self._repeats = text, now, 0

    def reset(self) -> None:
        self._text, self._at, self._repeats = "", 0.0, 0


class _Reconnect(Exception):
    """Leave the connection and open a new one at once (certificates or address changed)."""


class _Stopped(Exception):
    """stop() asked the sender to finish."""


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds passed, whichever comes first."""
    import asyncio

    if event.is_set():
        return
    try:
        await asyncio.wait_for(event.wait(), max(0.0, timeout))
    except asyncio.TimeoutError:  # noqa: UP041 - not the builtin before Python 3.11
        pass


class ManagerLink:
    """Engine Service and `report` plugin (registered as "manager-reporter")."""

    name = "manager"

    def __init__(self, cfg: Config, host: Host, *, agent: Peer[AgentReport],
                 config_hashes: Peer[ConfigHashes]) -> None:
        self.cfg = cfg
        self.host = host
        self._agent = agent  # what heartbeats and registration say of the Agent
        self._config_hashes = config_hashes  # what heartbeats say of the remote config in effect
        self._outbox: Outbox | None = None
        self._outbox_lock = threading.Lock()
        self._progress_lock = threading.Lock()
        self._progress: collections.deque[Any] = collections.deque(maxlen=256)
        self._stop = threading.Event()
        self._deadline = 0.0
        self._reconnect = False
        self._thread: threading.Thread | None = None
        # The loop and everything below it are used only on the link thread; other threads reach
        # it through _wake() and stop(), which go through call_soon_threadsafe.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kicked: Any = None  # asyncio.Events, made on the link thread with its loop
        self._stopping: Any = None
        self._main: asyncio.Task[None] | None = None
        self._commands: asyncio.Task[None] | None = None
        self._channel: Any = None
        self._gen = 0
        self._phase = "connect"
        self._stream_error: Exception | None = None
        self._state = "stopped"
        self._connected = False
        self._registered = False
        self._last_contact = 0.0
        self._last_error = ""
        self._last_logged = ("", 0.0)
        self._cert: dict[str, Any] = {}
        self._tls_fp: tuple[Any, ...] = ()
        self._heartbeat_override = 0.0
        # ReportMetrics failures back off on their own, across reconnects; only a report the Manager
        # takes resets them, and the connection, heartbeats and commands go on meanwhile.
        self._report_attempt = 0
        self._report_retry_at = 0.0
        self._report_error = ""
        self._report_log = _RateLimitedLog()
        # The command stream: its state for `daemon status`, and its own backoff and log.
        self._stream_state = "closed"
        self._stream_opened_at = 0.0
        self._stream_reopens = 0
        self._stream_last_error = ""
        self._stream_log = _RateLimitedLog()

    # --- Service ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the TLS files (D2001 when missing), open the outbox, start the link thread; no network."""
        tls.load(self.cfg.manager.tls)
        tls.check_validity(self.cfg.manager.tls.cert_file)
        # The transport (grpclib, h2, protobuf) is imported now, on the engine's thread: a host
        # where it cannot load fails the start with D2001 and exit 1, instead of a link that
        # retries an ImportError for ever while the daemon looks healthy.
        import daemon_app.comm.rpc  # noqa: F401
        import daemon_app.proto.daemon_pb2  # noqa: F401
        self.outbox  # noqa: B018 - open (and repair) the outbox now, not on the first report
        self._state = "connecting"
        self._thread = threading.Thread(target=self._thread_main, name="manager-link", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Flush what the Manager will take before `deadline`, then close."""
        self._deadline = deadline
        self._stop.set()
        self._call_soon(self._on_stop)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("manager link did not finish flushing by the shutdown deadline; %d report(s) "
                            "stay in the outbox for the next start", self.outbox.depth)
                self._call_soon(self._cancel_main)
                self._thread.join(STOP_GRACE_SECONDS)
        self._state = "stopped"
        with self._outbox_lock:
            if self._outbox is not None and not (self._thread and self._thread.is_alive()):
                self._outbox.close()
                self._outbox = None

    def reload(self, cfg: Config) -> None:
        old = self.cfg.manager
        self.cfg = cfg
        self.outbox.max_bytes = cfg.manager.outbox.max_bytes
        if (old.address, old.server_name) != (cfg.manager.address, cfg.manager.server_name):
            self._reconnect = True
            self._wake()

    def snapshot(self) -> LinkSnapshot:
        """What other parts read of the link (the self-update's commit check, the status line)."""
        box = self.outbox
        return LinkSnapshot(state=self._state, connected=self._connected, registered=self._registered,
                            acked_seq=box.acked_seq, last_seq=box.last_seq, outbox_depth=box.depth)

    def status(self) -> dict[str, Any]:
        box = self.outbox
        return {
            "address": self.cfg.manager.address,
            "state": self._state,
            "connected": self._connected,
            "registered": self._registered,
            "last_contact": rfc3339(self._last_contact) if self._last_contact else None,
            "outbox_depth": box.depth,
            "outbox_bytes": box.bytes,
            "outbox_max_bytes": box.max_bytes,
            "dropped": box.dropped,
            "acked_seq": box.acked_seq,
            "last_seq": box.last_seq,
            "pending_command_statuses": box.status_count,
            "last_error": self._last_error,
            "report_error": self._report_error,
            "report_retry_in_s": round(max(0.0, self._report_retry_at - time.monotonic()), 1)
            if self._report_retry_at else 0.0,
            "command_stream": {
                "state": self._stream_state,
                "opened_at": rfc3339(self._stream_opened_at) if self._stream_opened_at else None,
                "reopens": self._stream_reopens,
                "last_error": self._stream_last_error,
            },
            "client_cert": {k: str(v) for k, v in self._cert.items()},
        }

    # --- what the engine and the command handlers call ---------------------------------------------

    @property
    def outbox(self) -> Outbox:
        with self._outbox_lock:
            if self._outbox is None:
                limits = self.cfg.manager.outbox
                self._outbox = Outbox(os.path.join(self.cfg.daemon.work_dir, "outbox.db"), limits.max_bytes,
                                      max_item_bytes=MAX_REPORT_BYTES)
            return self._outbox

    @hookimpl
    def report(self, report: dict[str, Any]) -> None:
        """Put the report in the durable outbox and wake the sender; never touches the network."""
        self.outbox.enqueue(messages.report_to_pb(report).SerializeToString())
        self._wake()

    def send_command_status(self, command_id: str, state: str, percent: float = 0.0, message: str = "",
                            result: dict[str, Any] | None = None) -> None:
        """Report a command's progress (best effort) or its end: durable until the Manager acks it,
        recorded to answer a re-delivery, and only once per command (a second end is logged, not sent)."""
        if state not in messages.TERMINAL_STATES and state not in messages.PROGRESS_STATES:
            raise ValueError(f"unknown command state {state!r}")
        msg = messages.status_to_pb(self.host.node_id, command_id, state, percent, message, result)
        if state in messages.TERMINAL_STATES:
            if not self.outbox.put_result(command_id, msg.SerializeToString()):
                log.warning("command %s already ended; its later %r status is not sent", command_id, state)
                return
        else:
            with self._progress_lock:
                self._progress.append(msg)
        self._wake()

    # --- the link thread ----------------------------------------------------------------------------

    def _wake(self) -> None:
        """Any thread: make the sender look at the outbox, the statuses and the flags now."""
        self._call_soon(self._on_wake)

    def _on_wake(self) -> None:
        self._kicked.set()

    def _on_stop(self) -> None:
        self._stopping.set()
        self._kicked.set()

    def _call_soon(self, fn: Any) -> None:
        loop = self._loop
        if loop is None:  # not running yet: the thread checks _stop and the outbox when it starts
            return
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: the link has stopped, nothing is left to wake
            pass

    def _cancel_main(self) -> None:
        if self._main is not None:
            self._main.cancel()

    def _thread_main(self) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_default_executor(_ThreadPerCall())
        self._kicked, self._stopping = asyncio.Event(), asyncio.Event()
        self._loop = loop  # published last: _call_soon reaches the loop only once its events exist
        try:
            self._main = loop.create_task(self._run())
            loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            log.warning("manager link: calls still in flight at the shutdown deadline were cancelled")
        except Exception:
            log.exception("manager link thread failed")
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.close()
            self._state = "stopped"

    async def _run(self) -> None:
        call_errors = failures.call_errors()
        attempt = 0
        try:
            while not self._stop.is_set():
                self._state = "connecting"
                try:
                    stub = await self._connect()
                    attempt = 0
                    await self._serve(stub)
                except _Reconnect:
                    await self._close_channel()
                    continue
                except _Stopped:
                    break
                except (ManagerConnectError, ManagerRegisterError, ManagerReportError) as exc:
                    self._problem(str(exc), exc.code)
                except call_errors as exc:
                    self._rpc_failed(exc)
                except Exception as exc:  # a bug here must not end reporting for good
                    log.exception("manager link failed")
                    self._problem(f"D2003 manager link failed: {type(exc).__name__}: {exc}", "D2003")
                await self._close_channel()
                if self._stop.is_set():
                    break
                mcfg = self.cfg.manager
                cap = min(mcfg.reconnect_max, mcfg.reconnect_interval * 2 ** min(attempt, 30))
                delay = random.uniform(0, cap)  # full jitter: a fleet does not come back in step
                attempt += 1
                self._state = "backoff"
                log.debug("reconnecting to %s in %.2fs (attempt %d)", mcfg.address, delay, attempt)
                await _wait(self._stopping, delay)
        finally:
            await self._close_channel()
            self._state = "stopped"

    async def _connect(self) -> DaemonServiceClient:

        from daemon_app.comm.rpc import DaemonServiceClient, LinkChannel
        from daemon_app.proto import daemon_pb2 as pb

        mcfg = self.cfg.manager
        self._phase = "connect"
        host, port = split_address(mcfg.address)
        # The fingerprint is taken before the files are read: a file replaced in between shows as a
        # change at the next check and the link reconnects with it.
        fingerprint = tls.fingerprint(mcfg.tls)
        context = tls.client_context(mcfg.tls)  # built from the files on every connection: rotation
        if fingerprint != self._tls_fp:
            if self._tls_fp:
                log.info("client certificate files changed; using the new ones")
            self._cert = tls.check_validity(mcfg.tls.cert_file)
            self._tls_fp = fingerprint
        self._reconnect = False
        self._stream_error = None
        self._channel = LinkChannel(host, port, ssl=context, config=keepalive_config(mcfg))
        self._gen += 1
        gen = self._gen
        stub = DaemonServiceClient(self._channel)
        agent_report = self._agent()
        agent = agent_report.agent_status() if agent_report is not None else {}
        agent_version = str((agent or {}).get("version") or "")
        info = messages.node_info(self.host.node_id, self.cfg, agent_version, rfc3339())
        resp = await stub.Register(pb.RegisterRequest(node=info), timeout=self._call_timeout())
        self._contact()
        self._adopt_node_id(resp.node_id)
        self._registered = True
        self._heartbeat_override = resp.heartbeat_interval_ms / 1000.0
        box = self.outbox
        box.ensure_seq_after(resp.acked_seq)
        if resp.acked_seq:
            box.ack(resp.acked_seq)
        log.info("registered with manager %s as node %s (client cert CN %s, serial %s); outbox holds %d",
                 mcfg.address, self.host.node_id, self._cert.get("subject_cn"), self._cert.get("serial"),
                 box.depth)
        self._state = "ready"
        self._start_stream_task(stub, gen)
        return stub

    def _adopt_node_id(self, assigned: str) -> None:
        """A non-empty RegisterResponse.node_id is this node's id from now on (seed §3.5.1), kept
        across restarts. Everything sent later carries it, reports and command statuses queued
        before included (the id is set when they are sent); an empty one keeps the current id."""
        from daemon_app.nodeid import keep_manager_node_id

        current = self.host.node_id
        if not assigned or assigned == current:
            return
        problem = messages.node_id_problem(assigned)
        if problem:
            log.error("D2002 manager %s assigned node id %s; keeping %s", self.cfg.manager.address, problem,
                      current, extra={"code": ManagerRegisterError.code})
            return
        keep_manager_node_id(self.cfg.daemon.work_dir, assigned)
        self.host.adopt_node_id(assigned)
        log.warning("the manager assigned this node the id %s (was %s); it is kept in %s/node_id.manager",
                    assigned, current, self.cfg.daemon.work_dir)

    async def _serve(self, stub: Any) -> None:
        """Send statuses, report batches and heartbeats until the connection fails or we stop."""
        next_heartbeat = time.monotonic() + self._heartbeat_interval()
        next_tls_check = time.monotonic() + TLS_CHECK_SECONDS
        while True:
            await self._send_statuses(stub)
            more = await self._send_reports(stub)
            now = time.monotonic()
            if now >= next_heartbeat:
                await self._heartbeat(stub)
                next_heartbeat = time.monotonic() + self._heartbeat_interval()
            if now >= next_tls_check:
                next_tls_check = now + TLS_CHECK_SECONDS
                if tls.fingerprint(self.cfg.manager.tls) != self._tls_fp:
                    raise _Reconnect()
            if self._reconnect:
                raise _Reconnect()
            if self._stream_error is not None:
                self._phase, error, self._stream_error = "commands", self._stream_error, None
                raise error
            if self._stop.is_set():
                box = self.outbox
                if (box.depth == 0 and box.status_count == 0 and not self._progress) \
                        or time.monotonic() >= self._deadline:
                    raise _Stopped()
                if self._report_retry_at > time.monotonic():  # reports refused: retry until the deadline
                    self._kicked.clear()
                    await _wait(self._kicked, min(self._report_retry_at, self._deadline) - time.monotonic())
                continue
            if more:  # catching up: pause between batches, but not for reports that keep coming
                await _wait(self._stopping, self.cfg.manager.outbox.drain_interval)
            else:
                wake = min(next_heartbeat, next_tls_check)
                if self._report_retry_at and self.outbox.depth:
                    wake = min(wake, self._report_retry_at)
                await _wait(self._kicked, wake - time.monotonic())
            self._kicked.clear()

    async def _send_reports(self, stub: Any) -> bool:
        """A batch of reports unless they are backing off; True when more are waiting. A refused or
        unanswered ReportMetrics backs off (full jitter, capped) without leaving the connection."""
        if self._report_retry_at and time.monotonic() < self._report_retry_at:
            return False
        try:
            return await self._send_batch(stub)
        except failures.answered_errors() + (ManagerReportError,) as exc:
            if isinstance(exc, ManagerReportError):
                err: Any = exc
            else:
                err = failures.describe_failure(exc, "report", self.cfg.manager, self.host.node_id)
            self._report_attempt += 1
            mcfg = self.cfg.manager
            cap = min(mcfg.reconnect_max, mcfg.reconnect_interval * 2 ** min(self._report_attempt - 1, 30))
            self._report_retry_at = time.monotonic() + random.uniform(0, cap)
            self._report_error = str(err)
            self._report_log.error(str(err), err.code)
            return False

    def _reports_accepted(self) -> None:
        """A ReportMetrics the Manager answered: the only thing that ends a report backoff."""
        if self._report_attempt:
            log.info("manager %s takes reports again after %d failed attempt(s)", self.cfg.manager.address,
                     self._report_attempt)
        self._report_attempt = 0
        self._report_retry_at = 0.0
        self._report_error = ""
        self._report_log.reset()

    async def _send_statuses(self, stub: Any) -> None:
        self._phase = "status"
        while True:
            with self._progress_lock:
                if not self._progress:
                    break
                msg = self._progress[0]
            msg.node_id = self.host.node_id  # the Manager may have assigned another since
            await stub.ReportCommandStatus(msg, timeout=self._call_timeout())
            self._contact()
            with self._progress_lock:
                if self._progress and self._progress[0] is msg:
                    self._progress.popleft()
        if not self.outbox.status_count:
            return
        from daemon_app.proto import daemon_pb2 as pb

        for status_id, body in self.outbox.pending_statuses():
            status = pb.CommandStatus.FromString(body)
            status.node_id = self.host.node_id
            await stub.ReportCommandStatus(status, timeout=self._call_timeout())
            self._contact()
            self.outbox.remove_status(status_id)

    async def _send_batch(self, stub: Any) -> bool:
        """Send the oldest reports; True when more are waiting."""
        from daemon_app.proto import daemon_pb2 as pb

        box = self.outbox
        if not box.depth:  # in memory: an idle wake-up does not read the database
            return False
        rows = box.peek(self.cfg.manager.outbox.batch_size)
        self._phase = "report"
        node_id = self.host.node_id
        batch = pb.ReportBatch(node_id=node_id)
        dropped = box.dropped
        size = 0
        for seq, body in rows:
            if size and size + len(body) > MAX_BATCH_BYTES:
                break
            size += len(body)
            report = batch.reports.add()
            report.MergeFromString(body)
            report.seq, report.node_id, report.outbox_dropped = seq, node_id, dropped
        ack = await stub.ReportMetrics(batch, timeout=self._call_timeout())
        self._contact()
        self._reports_accepted()
        if ack.rejected_seqs:
            log.error("D2003 the manager refused report(s) %s for good: %s", list(ack.rejected_seqs),
                      ack.error, extra={"code": ManagerReportError.code})
        if ack.acked_seq < batch.reports[0].seq:
            raise ManagerReportError(f"the manager acknowledged none of reports {batch.reports[0].seq}.."
                                     f"{batch.reports[-1].seq} (acked_seq {ack.acked_seq})")
        box.ack(ack.acked_seq)
        return box.depth > 0

    async def _heartbeat(self, stub: Any) -> None:
        from daemon_app.proto import daemon_pb2 as pb

        self._phase = "heartbeat"
        box = self.outbox
        req = pb.HeartbeatRequest(node_id=self.host.node_id, timestamp=rfc3339(), outbox_depth=box.depth,
                                  outbox_dropped=box.dropped)
        agent_report = self._agent()
        if agent_report is not None:
            agent = messages.agent_status_to_pb(agent_report.agent_status())
            if agent is not None:
                req.agent_status.CopyFrom(agent)
        remote_config = self._config_hashes()
        if remote_config is not None:
            req.agent_config_hash = remote_config.effective_hash
            req.daemon_settings_hash = remote_config.settings_hash
        resp = await stub.Heartbeat(req, timeout=self._call_timeout())
        self._contact()
        self._heartbeat_override = resp.next_interval_ms / 1000.0  # 0: back to manager.heartbeat_interval

    def _heartbeat_interval(self) -> float:
        base = self._heartbeat_override or self.cfg.manager.heartbeat_interval
        return base * (1.0 + self.cfg.manager.jitter * random.random())

    def _call_timeout(self) -> float:
        timeout = self.cfg.manager.timeout
        if self._stop.is_set():
            timeout = min(timeout, max(0.05, self._deadline - time.monotonic()))
        return timeout

    def _contact(self) -> None:
        self._last_contact = time.time()
        self._connected = True
        if self._last_error:
            log.info("manager %s reachable again", self.cfg.manager.address)
            self._last_error = ""
            self._last_logged = ("", 0.0)

    def _rpc_failed(self, exc: BaseException) -> None:
        """A failed call or connection attempt, logged with its D-code and its cause in words."""
        channel = self._channel
        err = failures.describe_failure(exc, self._phase, self.cfg.manager, self.host.node_id,
                                        lost_with=getattr(channel, "lost_with", None),
                                        silent=bool(getattr(channel, "silent_after_handshake", False)))
        self._problem(str(err), err.code)

    def _problem(self, text: str, code: str) -> None:
        """Log a failure; the same one again only once a minute, so an outage does not flood the log."""
        self._connected = False
        self._registered = False
        self._last_error = text
        last_text, last_at = self._last_logged
        now = time.monotonic()
        if text != last_text or now - last_at > 60:
            log.error("%s", text, extra={"code": code})
            self._last_logged = (text, now)
        else:
            log.debug("%s", text, extra={"code": code})

    async def _close_channel(self) -> None:
        commands, self._commands = self._commands, None
        channel, self._channel = self._channel, None
        self._gen += 1
        self._connected = False
        if commands is not None:
            commands.cancel()
        if channel is not None:
            channel.close()

    # --- the command stream -------------------------------------------------------------------------

    def _start_stream_task(self, stub: DaemonServiceClient, gen: int) -> None:
        """Run the command stream as a task; the supervisor below starts it again if it ever ends
        while its connection is current, whatever the reason."""
        import asyncio

        task = asyncio.get_running_loop().create_task(self._stream_commands(stub, gen))
        self._commands = task

        def supervise(done: asyncio.Task[None]) -> None:
            if done.cancelled() or self._stop.is_set() or gen != self._gen or self._stream_error is not None:
                return
            exc = done.exception()
            log.error("D2001 the command stream task ended (%s); starting it again",
                      f"{type(exc).__name__}: {exc}" if exc else "returned", extra={"code": "D2001"})
            self._start_stream_task(stub, gen)

        task.add_done_callback(supervise)

    async def _stream_commands(self, stub: DaemonServiceClient, gen: int) -> None:
        """Receive commands until this connection ends. Every STREAM_SECONDS the stream is opened
        anew; any other failure of the stream alone (a status from the Manager, a message that does
        not parse) is logged with its code and the stream re-opened after a full-jitter backoff, on
        the same connection. A lost connection is the sender's to handle: it reconnects."""
        import asyncio

        from daemon_app.proto import daemon_pb2 as pb

        lost = failures.connection_errors()
        attempt = 0
        while not self._stop.is_set() and gen == self._gen:
            try:
                async with stub.Commands.open(timeout=STREAM_SECONDS) as stream:
                    await stream.send_message(pb.CommandStreamRequest(node_id=self.host.node_id), end=True)
                    self._stream_state, self._stream_opened_at = "open", time.time()
                    async for cmd in stream:
                        attempt = 0
                        self._contact()
                        self._on_command(cmd)
            except asyncio.CancelledError:  # _close_channel: this connection is over
                self._stream_state = "closed"
                raise
            except asyncio.TimeoutError:  # noqa: UP041 - STREAM_SECONDS passed: open a fresh stream
                self._stream_reopens += 1
                continue
            except lost as exc:
                if self._stop.is_set() or gen != self._gen:
                    return
                self._stream_state = "closed"
                self._stream_error = exc  # the sender reconnects, with backoff: the Manager may be gone
                self._wake()
                return
            except Exception as exc:
                if self._stop.is_set() or gen != self._gen:
                    return
                err = failures.describe_stream_failure(exc, self.cfg.manager)
                self._stream_last_error = str(err)
                self._stream_log.error(f"{err}; re-opening the stream", err.code)
            # A failure above, or the Manager ended the stream: open it again after a full-jitter
            # pause that grows while no command arrives, so a Manager that keeps ending it is not
            # hammered.
            mcfg = self.cfg.manager
            cap = min(mcfg.reconnect_max, mcfg.reconnect_interval * 2 ** min(attempt, 30))
            attempt += 1
            self._stream_state = "backoff"
            await _wait(self._stopping, random.uniform(0, cap))
            self._stream_reopens += 1
        self._stream_state = "closed"

    def _answer_outcome(self, cid: str, d: dict[str, Any], done: concurrent.futures.Future[Any]) -> None:
        """Any thread: the end of work a handler started (an Agent start, stop, restart, reset)."""
        what = f"{d['type']} {d.get('action', '')}".strip()
        exc = done.exception()
        if exc is None:
            self.send_command_status(cid, "completed", message=f"{what}: done",
                                     result={"success": True, "component": d.get("component") or d["type"]})
            return
        code = getattr(exc, "code", None) or _HANDLER_CODES.get(d["type"], ManagerReportError.code)
        text = str(exc) if str(exc).startswith(code) else f"{code} {exc}"
        self.send_command_status(cid, "failed", message=f"{what}: {text}",
                                 result={"success": False, "error": text,
                                         "component": d.get("component") or d["type"]})

    def _on_command(self, cmd: Any) -> None:
        """Every command with an id ends in exactly one terminal status (docs/contract.md): rejected
        when it cannot be run, failed when no handler takes it or the handler raises, completed for
        an Agent command its supervisor took; updates and rollbacks report their own. A command id
        seen before is not run again: its recorded status is sent again, or follows when it ends."""
        d = messages.command_to_dict(cmd)
        cid = d["id"]
        if not cid:
            log.warning("D2003 the manager sent a command without an id (kind %r): it cannot be answered; "
                        "ignored", d["type"], extra={"code": ManagerReportError.code})
            return
        if len(cid) > MAX_COMMAND_ID:
            log.warning("D2003 the manager sent a command id of %d characters (%r…; at most %d): it cannot "
                        "be answered; ignored", len(cid), cid[:40], MAX_COMMAND_ID,
                        extra={"code": ManagerReportError.code})
            return
        box = self.outbox
        if not box.mark_seen(cid):
            body = box.result_of(cid)
            if body is None:
                log.info("command %s was already received and has not ended; its status will follow", cid)
                return
            log.info("command %s was already received and has ended; sending its status again", cid)
            box.put_status(cid, body)
            self._wake()
            return
        problem = messages.command_problem(d)
        if problem:
            log.warning("%s; rejected", problem, extra={"code": problem.split()[0]})
            self.send_command_status(cid, "rejected", message=problem,
                                     result={"success": False, "error": problem,
                                             "component": d.get("component", "")})
            return
        log.info("command %s (%s) received from the manager", cid, d["type"])

        def dispatch() -> None:
            outcome: Any = None
            try:
                outcome = self.host.dispatch_command(d)
                handled = outcome is not False
                error = "" if handled else f"no handler for command type {d['type']!r} in this daemon"
            except Exception as exc:  # a failing handler still owes the Manager an answer
                log.exception("command %s failed in its handler", cid)
                handled, error = False, f"{type(exc).__name__}: {exc}"
            if not handled:
                code = _HANDLER_CODES.get(d["type"], ManagerReportError.code)
                self.send_command_status(cid, "failed", message=f"{code} {error}",
                                         result={"success": False, "error": f"{code} {error}",
                                                 "component": d.get("component", "")})
            elif isinstance(outcome, concurrent.futures.Future):
                outcome.add_done_callback(lambda done: self._answer_outcome(cid, d, done))
            elif d["type"] not in _SELF_REPORTING:
                what = f"{d['type']} {d.get('action', '')}".strip()
                self.send_command_status(cid, "completed", message=f"{what}: taken",
                                         result={"success": True, "component": d.get("component", "")})

        self.host.run_soon(dispatch)
