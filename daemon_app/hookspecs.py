"""The pluggy hook specifications: the only way the engine talks to collectors, reporters and plugins.

A plugin is any object or module with functions marked `@hookimpl` (import it from
`daemon_app.hookspecs`). Built-ins are registered exactly like third-party plugins.

Hooks are called the way pluggy documents: an implementation may take any subset of a hook's
arguments, and where calls happen one after another (on_agent_event, pre_update, post_update,
pre_config, post_config) `@hookimpl(tryfirst=True)` runs before the others and `trylast=True` after
them (otherwise the plugin registered last runs first); collect and report implementations run side
by side, each on its own thread. Each plugin's implementation is called on its own, so one that
raises is logged with its name and the others still run; a wrapper
(`wrapper=True`/`hookwrapper=True`) therefore wraps only its own plugin's implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from daemon_app.metrics import CollectContext, Metrics

PROJECT = "daemon_app"
ENTRY_POINT_GROUP = "daemon_app.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def collect(ctx: CollectContext) -> Metrics | list[Metrics] | None:
    """Collect metrics. Called per plugin, on that plugin's own interval (`collectors.<name>.interval`).

    `ctx.name` is the plugin's name, `ctx.config` its `collectors.<name>` section, `ctx.deadline`
    the monotonic time by which it should return (`collectors.<name>.timeout`). Return a `Metrics`,
    a list of them, or None when there is nothing to report. A plugin that raises or overruns its
    timeout is logged with D5001 and left out of that round; the other plugins still run.
    """


@hookspec
def report(report: dict[str, Any]) -> None:
    """Receive each report (seed §4.3 `ReportData`) after it is built, every `daemon.report_interval`.

    `report` is a plain dict: node_id, timestamp (RFC 3339), metrics (name -> {name, timestamp,
    values}), agent_status, logs, and any other fields the daemon adds. Side effects only (ship it to
    a file, Prometheus, ...). Do not modify it: every reporter sees the same object. A reporter that
    raises is logged and the others still run.
    """


@hookspec
def on_agent_event(event: dict[str, Any]) -> None:
    """Called on every Agent state change, in order.

    `event["type"]` is one of started, running, adopted, exited, backoff, restarting, unhealthy, fatal,
    stopped, updated, rolled_back; the event also carries `state`, `pid`, `timestamp` and, where
    they apply, `exit_code`/`signal`/`stderr_tail` (exited), `delay` (backoff) and `reason`
    (unhealthy, restarting, rolled_back). Side effects only.

    Called on the daemon's plugin-events thread, never the supervisor's: a slow plugin cannot delay
    a restart. Events wait in a bounded queue (256); while a plugin holds the thread and the queue
    is full, the oldest event is dropped and counted (`daemon status`, "plugin_events"), and the
    drop is logged with D5001 and that plugin's name. Every plugin sees the same events, in order.
    """


@hookspec
def pre_update(request: dict[str, Any]) -> str | None:
    """Called before an update is downloaded, with component, version, url/file, sha256, size.

    Return a reason string to veto the update, or None to let it proceed. Every implementation is
    called (in pluggy's order), even after a veto; the update then fails with D4003 and every
    veto's plugin and reason (`update vetoed by plugin 'a': reason; by plugin 'b': reason`). An
    implementation that raises is logged with D5001 and its name and does not veto.
    """


@hookspec
def pre_config(request: dict[str, Any]) -> str | None:
    """Called before a pushed Agent config is checked or installed, with command_id, kind
    ("agent_config"), old and new ("sha256:<hex>"; old is "" when there is no file) and size; and
    before pushed daemon settings are applied (after the schema accepted them), with command_id,
    kind ("daemon_settings"), old and new (hashes of the whole remote settings) and values (the
    pushed keys, dotted, with their parsed values).

    Return a reason string to veto the push (it is answered `rejected`, D6001, naming every veto;
    nothing changes), or None. Every implementation is called, even after a veto; one that raises
    is logged with D5001 and does not veto.
    """


@hookspec
def post_config(result: dict[str, Any]) -> None:
    """Called once a pushed Agent config or daemon settings push has its terminal answer, with
    command_id, kind, state (completed, rolled_back, failed, rejected), message, old_version,
    new_version, rolled_back.
    Side effects only.
    """


@hookspec
def post_update(result: dict[str, Any]) -> None:
    """Called once an update has finished, with the final UpdateResult (seed §3.4.1) as a dict:
    component, success, old_version, new_version, error, rolled_back. Side effects only.
    """
