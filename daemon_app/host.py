"""The seams between the engine and the services it hosts, as small typed protocols.

A service (Agent supervisor, Manager link, updates, remote config) gets a `Host` — what it may ask
of the engine — and, for each peer service it works with, a `Peer` getter typed with the narrow
protocol it needs (`AgentControl`, `LinkHealth`, ...). Getters, not references: a reload or a
service restart may replace a peer, or turn it off (the getter then returns None).

Who may call whom: services call their Host and their peers' protocols, never the engine's
attributes; the engine calls services only through `Service` (engine.py). See docs/architecture.md.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Optional, Protocol, TypeVar

if TYPE_CHECKING:
    from daemon_app.agent.snapshot import AgentSnapshot
    from daemon_app.comm.snapshot import LinkSnapshot
    from daemon_app.config import Config

T = TypeVar("T")
P = TypeVar("P", covariant=True)

# A Manager command {"id", "type", ...} -> None (answered later through the link) or a future whose
# result is the outcome of the work the handler started. Handlers return at once.
CommandHandler = Callable[[dict[str, Any]], Optional["concurrent.futures.Future[Any]"]]
# A control-socket request's arguments -> its JSON-able answer.
ControlHandler = Callable[[dict[str, Any]], Any]
StatusProvider = Callable[[], Optional[dict[str, Any]]]


class Peer(Protocol[P]):
    """The current instance of a peer service, or None when it is off."""

    def __call__(self) -> P | None: ...


class PluginHooks(Protocol):
    """The plugin hooks a service may call (pluggy's rules; each implementation isolated)."""

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]: ...

    def vetoes(self, hook: str, **kwargs: Any) -> list[str]: ...

    def post_event(self, event: dict[str, Any]) -> None:
        """Hand an Agent event to the plugins' own thread; never blocks."""


class Host(Protocol):
    """What a service may ask of the engine. Any thread unless a method says otherwise."""

    @property
    def cfg(self) -> Config:
        """The configuration in force (a reload replaces it)."""

    @property
    def node_id(self) -> str: ...

    def adopt_node_id(self, node_id: str) -> None:
        """The Manager assigned this node `node_id` (already checked and kept on disk)."""

    @property
    def plugins(self) -> PluginHooks: ...

    @property
    def reports_built(self) -> int:
        """Reports this daemon made since it started."""

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine's thread; do not wait."""

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run `fn` on the engine's thread and return its result (or raise its exception)."""

    def every(self, name: str, interval: float, fn: Callable[[], None], *, first: float = 0.0,
              jitter: float = 0.0) -> None:
        """Engine thread only: run `fn` every `interval` s (replaces a task of the same name)."""

    def cancel(self, name: str) -> None:
        """Engine thread only: forget the task `name`."""

    def on_command(self, kind: str, handler: CommandHandler | None) -> None:
        """Route Manager commands of type `kind` to `handler` (None: stop routing them)."""

    def dispatch_command(self, command: dict[str, Any]) -> bool | concurrent.futures.Future[Any]:
        """Engine thread: hand a Manager command to its handler; False when none takes it."""

    def on_control(self, name: str, handler: ControlHandler, *, on_engine_thread: bool = True,
                   timeout: float = 30.0) -> None:
        """Answer the control-socket request `name`."""

    def add_status(self, name: str, provider: StatusProvider | None) -> None:
        """Show `provider()` under `name` in `daemon status` (None: remove it)."""

    def busy(self, what: str) -> AbstractContextManager[None]:
        """Work in flight: shutdown waits for it. Raises EngineStopping when stopping."""

    def begin_work(self, what: str) -> int:
        """`busy` for work that ends on another thread: pass the token to `end_work`."""

    def end_work(self, token: int) -> None: ...

    def reload(self, why: str = "") -> dict[str, Any]:
        """Engine thread only (use `call`): re-read the config file; what changed, or why refused."""

    def restart_into(self, argv: list[str], release: int | None = None) -> None:
        """Close everything but the Agent and exec `argv` (a daemon self-update)."""


class AgentControl(Protocol):
    """What updates and remote config may do to the supervised Agent."""

    def snapshot(self) -> AgentSnapshot: ...

    def start_agent(self) -> None: ...

    def stop_agent(self, timeout: float | None = None) -> None: ...

    def signal_agent(self, signum: int) -> bool:
        """Send `signum` to a running Agent; False when none runs."""

    def wait_for_heartbeat(self, version: str | None, timeout: float) -> bool: ...

    def current_version(self) -> str: ...

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]: ...


class AgentReport(Protocol):
    """What the Manager link reads of the Agent for heartbeats and registration."""

    def agent_status(self) -> dict[str, Any]: ...


class CommandStatusSink(Protocol):
    """Where a service sends the progress and the answer of a Manager command."""

    def send_command_status(self, command_id: str, state: str, percent: float = 0.0, message: str = "",
                            result: dict[str, Any] | None = None) -> None: ...


class LinkHealth(CommandStatusSink, Protocol):
    """What the update service reads of the Manager link (the self-update commit check)."""

    def snapshot(self) -> LinkSnapshot: ...


class ConfigHashes(Protocol):
    """The hashes of the configuration in effect, which heartbeats carry (remote config)."""

    effective_hash: str
    settings_hash: str


class UpdateJobs(Protocol):
    """Whether an update (which stops and starts the Agent) is in flight."""

    def in_progress(self) -> str:
        """A description of the update in flight, or "" when there is none."""


class ConfigPushes(Protocol):
    """Whether a remote config push (which restarts the Agent) is in flight."""

    def in_progress(self) -> str:
        """A description of the push in flight, or "" when there is none."""
