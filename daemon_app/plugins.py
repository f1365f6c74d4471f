"""Plugin manager: built-ins, the `daemon_app.plugins` entry points, and the plugin directory.

Everything the engine calls (collectors, reporters, event sinks, update vetoes) is a pluggy
plugin, registered here in one place. `describe()` is what `daemon plugins list` shows.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from daemon_app import fsutil, hookspecs
from daemon_app.errors import DaemonError
from daemon_app.plugin_events import QUEUE_SIZE, Busy, EventDispatcher

log = logging.getLogger(__name__)

BUILTIN, ENTRYPOINT, DIRECTORY = "builtin", "entrypoint", "directory"

# The seed §7.1 code logged when a plugin raises in a hook: a failed reporter is a failed report,
# a failed update hook a failed update; anything else is a plugin (collect) failure.
HOOK_ERROR_CODES = {"report": "D2003", "pre_update": "D4003", "post_update": "D4003", "post_config": "D6001"}


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str
    hooks: list[str] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "source": self.source, "hooks": self.hooks}
        if self.error:
            out["error"] = self.error
        return out


class PluginLoadError(DaemonError):
    """A plugin that cannot be imported; logged, never fatal."""

    code = "D5001"


class Plugins:
    """Owns the pluggy PluginManager and remembers where each plugin came from."""

    def __init__(self, event_queue_size: int = QUEUE_SIZE) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failed: list[PluginInfo] = []
        self.events = EventDispatcher(self._deliver_event, event_queue_size)

    def register(self, plugin: object, name: str, *, version: str, source: str) -> None:
        self.pm.register(plugin, name=name)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.info[name] = PluginInfo(name, version, source, hooks)

    def unregister(self, name: str) -> None:
        """Forget a plugin registered under `name` (the Manager reporter when a reload drops
        manager.address); its calls already in flight finish, later ones no longer reach it."""
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.info.pop(name, None)

    def _failed(self, name: str, version: str, source: str, exc: BaseException) -> None:
        err = PluginLoadError(f"plugin {name!r} ({source}) failed to load: {type(exc).__name__}: {exc}")
        log.error(str(err), extra={"code": err.code, "plugin": name})
        log.debug("plugin %r failed to load here:", name, exc_info=exc, extra={"plugin": name})
        self.failed.append(PluginInfo(name, version, source, [], str(err)))

    def load_builtins(self, cfg: Any) -> None:
        from daemon_app import __version__
        from daemon_app.collectors import BUILTIN_COLLECTORS
        from daemon_app.reporters.file import FileReporter

        disabled = set(cfg.plugins.disabled)
        for name, cls in BUILTIN_COLLECTORS.items():
            if name not in disabled:
                self.register(cls(), name, version=__version__, source=BUILTIN)
        if cfg.reporters.file.enabled and "file-reporter" not in disabled:
            reporter = FileReporter(cfg.reporters.file.path, cfg.reporters.file.max_bytes)
            self.register(reporter, "file-reporter", version=__version__, source=BUILTIN)
        if cfg.prometheus.enabled and "prometheus" not in disabled:
            # Imported only here: a daemon without the exporter carries none of its code.
            from daemon_app.prometheus.plugin import PLUGIN_NAME, from_config

            self.register(from_config(cfg), PLUGIN_NAME, version=__version__, source=BUILTIN)

    def load_entrypoints(self, cfg: Any) -> None:
        plugin_dir = os.path.realpath(cfg.plugins.dir)
        for dist in importlib.metadata.distributions():
            eps = [ep for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
            if not eps:
                continue
            location = os.path.realpath(str(dist.locate_file("")))
            source = DIRECTORY if location == plugin_dir else ENTRYPOINT
            for ep in eps:
                self._load_entrypoint(ep, dist, source, cfg)

    def _load_entrypoint(self, ep: Any, dist: Any, source: str, cfg: Any) -> None:
        name = ep.name
        version = dist.version or "?"
        if name in cfg.plugins.disabled or name in self.info:
            return
        try:
            plugin = ep.load()
            if isinstance(plugin, type):
                plugin = plugin()
            self.register(plugin, name, version=version, source=source)
        except Exception as exc:  # a broken plugin must not stop the daemon
            self._failed(name, version, source, exc)

    def load_directory(self, cfg: Any) -> None:
        """Put the plugin dir on sys.path (pip --target packages) and load loose *.py plugins."""
        plugin_dir = cfg.plugins.dir
        if not os.path.lexists(plugin_dir):
            return
        try:
            # Code from here runs as the daemon's user: nobody else may have put it there.
            fsutil.check_dir(plugin_dir)
        except OSError as exc:
            log.error("D5001 plugins.dir: %s; no plugin is loaded from it", exc,
                      extra={"code": "D5001", "plugin_dir": plugin_dir})
            return
        if plugin_dir not in sys.path:
            sys.path.append(plugin_dir)
            importlib.invalidate_caches()
        for entry in sorted(os.listdir(plugin_dir)):
            if not entry.endswith(".py") or entry.startswith("_"):
                continue
            name = entry[:-3]
            if name in cfg.plugins.disabled or name in self.info:
                continue
            path = os.path.join(plugin_dir, entry)
            module_name = f"daemon_plugin_{name}"
            try:
                fsutil.check_file(path)
                spec = importlib.util.spec_from_file_location(module_name, path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                # In sys.modules like any import, so dataclasses, pickle and logging find it.
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
                version = str(getattr(module, "__version__", "0"))
                self.register(module, name, version=version, source=DIRECTORY)
            except Exception as exc:
                sys.modules.pop(module_name, None)
                self._failed(name, "?", DIRECTORY, exc)

    def describe(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in (*self.info.values(), *self.failed)]

    def implementations(self, hook: str) -> list[tuple[str, HookCall]]:
        """(plugin name, HookCall) for each implementation of `hook`, in registration order
        (tryfirst/trylast aside): for hooks whose calls run side by side (collect, report)."""
        return [(call.plugin_name, call) for call in self._hook_calls(hook, pluggy_order=False)]

    def calls(self, hook: str) -> list[HookCall]:
        """Each plugin's implementation of `hook` in the order pluggy calls them: tryfirst ones
        first, trylast ones last, otherwise the plugin registered last first."""
        return self._hook_calls(hook, pluggy_order=True)

    def _hook_calls(self, hook: str, *, pluggy_order: bool) -> list[HookCall]:
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        out: dict[str, HookCall] = {}
        for impl in reversed(impls) if pluggy_order else impls:
            # Wrappers wrap the plugin's own call (HookCall goes through pluggy); not a call of their own.
            if impl.hookwrapper or impl.wrapper or impl.plugin_name in out:
                continue
            out[impl.plugin_name] = HookCall(self.pm, hook, impl.plugin_name, impl.plugin)
        return list(out.values())

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook in pluggy's order, isolating failures; returns
        (plugin name, result) for each implementation that did not raise."""
        results = []
        code = HOOK_ERROR_CODES.get(hook, "D5001")
        for call in self.calls(hook):
            name = call.plugin_name
            try:
                results.append((name, call(**kwargs)))
            except Exception as exc:
                log.error(
                    "%s plugin %s raised in %s: %s: %s", code, name, hook, type(exc).__name__, exc,
                    extra={"plugin": name, "hook": hook, "code": code},
                )
                log.debug("plugin %s raised in %s here:", name, hook, exc_info=exc,
                          extra={"plugin": name, "hook": hook})
        return results

    def vetoes(self, hook: str, **kwargs: Any) -> list[str]:
        """Ask every implementation of a veto hook (pre_update, pre_config), in pluggy's order, even
        after a veto; returns "by plugin 'name': reason" for each veto. One that raises is logged
        (D5001) and does not veto: a broken plugin must not block the work, nor crash the daemon."""
        out = []
        for call in self.calls(hook):
            try:
                reason = call(**{k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()})
            except Exception as exc:
                log.error("plugin %s raised in %s: %s: %s", call.plugin_name, hook, type(exc).__name__, exc,
                          extra={"plugin": call.plugin_name, "hook": hook, "code": "D5001"})
                continue
            if isinstance(reason, str) and reason:
                out.append(f"by plugin {call.plugin_name!r}: {reason}")
        return out

    def post_event(self, event: dict[str, Any]) -> None:
        """Hand an Agent event to the `on_agent_event` plugins on the plugin-events thread; returns
        at once, whatever the plugins do (see daemon_app.plugin_events)."""
        if self.calls("on_agent_event"):
            self.events.post(event)

    def _deliver_event(self, event: dict[str, Any], busy: Busy) -> None:
        for call in self.calls("on_agent_event"):
            busy(call.plugin_name)
            try:
                call(event=event)
            except BaseException as exc:  # sys.exit() in a plugin must not end delivery for all
                log.error("D5001 plugin %s raised in on_agent_event: %s: %s", call.plugin_name,
                          type(exc).__name__, exc,
                          extra={"plugin": call.plugin_name, "hook": "on_agent_event", "code": "D5001"})
                log.debug("plugin %s raised in on_agent_event here:", call.plugin_name, exc_info=exc,
                          extra={"plugin": call.plugin_name, "hook": "on_agent_event"})


class HookCall:
    """One plugin's implementation of one hook, called through pluggy's own hook caller.

    pluggy picks the arguments the implementation declares (a plugin may take a subset) and runs its
    wrappers and any hook-call monitoring; only this plugin is called, so one that raises cannot
    stop the others. Returns the implementation's value (None when it returned None).
    Equal for the same plugin object and hook: callers may cache per HookCall.
    """

    __slots__ = ("_pm", "hook", "plugin_name", "plugin")

    def __init__(self, pm: pluggy.PluginManager, hook: str, plugin_name: str, plugin: object) -> None:
        self._pm = pm
        self.hook = hook
        self.plugin_name = plugin_name
        self.plugin = plugin

    def __call__(self, **kwargs: Any) -> Any:
        others = [p for p in self._pm.get_plugins() if p is not self.plugin]
        results = self._pm.subset_hook_caller(self.hook, others)(**kwargs)
        return results[0] if results else None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, HookCall) and other.hook == self.hook and other.plugin is self.plugin
                and other._pm is self._pm)

    def __hash__(self) -> int:
        return hash((self.hook, id(self.plugin)))

    def __repr__(self) -> str:
        return f"HookCall({self.hook}, plugin {self.plugin_name!r})"


def load_all(cfg: Any) -> Plugins:
    """Built-ins first, then the plugin directory, then installed entry points."""
    plugins = Plugins()
    plugins.load_builtins(cfg)
    plugins.load_directory(cfg)
    plugins.load_entrypoints(cfg)
    return plugins


# --- the plugin directory as pip --target leaves it: uninstall, and old versions after an upgrade ---

def _normalize(name: str) -> str:
    """PEP 503: `Daemon_Plugin.Loadavg` and `daemon-plugin-loadavg` are the same project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _dists(plugin_dir: str) -> list[importlib.metadata.Distribution]:
    return list(importlib.metadata.distributions(path=[plugin_dir]))


def _dist_info_dir(dist: importlib.metadata.Distribution) -> str:
    return str(dist._path)  # type: ignore[attr-defined]  # PathDistribution: its *.dist-info


def _dist_files(plugin_dir: str, dist: importlib.metadata.Distribution) -> set[str]:
    """The files its RECORD lists, as real paths inside plugin_dir (anything outside is ignored)."""
    root = os.path.realpath(plugin_dir)
    out = set()
    for f in dist.files or []:
        path = os.path.realpath(os.path.join(root, str(f)))
        if path.startswith(root + os.sep):
            out.add(path)
    return out


def _remove_files(plugin_dir: str, files: Iterable[str]) -> list[str]:
    removed = []
    root = os.path.realpath(plugin_dir)
    dirs = set()
    for path in sorted(files):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            continue
        dirs.add(os.path.dirname(path))
    # Then the directories those files leave empty (deepest first), never plugin_dir itself.
    for d in sorted(dirs, key=len, reverse=True):
        while d.startswith(root + os.sep):
            pycache = os.path.join(d, "__pycache__")
            if os.path.isdir(pycache) and not _has_source(d):
                shutil.rmtree(pycache, ignore_errors=True)
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)
    return removed


def _has_source(directory: str) -> bool:
    return any(e.endswith(".py") for e in os.listdir(directory))


def uninstall(plugin_dir: str, name: str) -> list[str]:
    """Remove what `plugins install` put into plugin_dir for `name` (project name or plugin name),
    or the loose module `name`.py. Returns what was removed; PluginNotInstalled when nothing matched.
    """
    removed: list[str] = []
    wanted = _normalize(name)
    for dist in _dists(plugin_dir):
        project = _normalize(dist.metadata["Name"] or "")
        plugin_names = {ep.name for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP}
        if project != wanted and name not in plugin_names:
            continue
        info_dir = _dist_info_dir(dist)
        removed += _remove_files(plugin_dir, _dist_files(plugin_dir, dist))
        if os.path.isdir(info_dir):
            shutil.rmtree(info_dir)
            removed.append(info_dir)
    loose = os.path.join(plugin_dir, f"{name}.py")
    if os.path.isfile(loose) and not name.startswith(("_", ".")) and os.sep not in name:
        os.unlink(loose)
        removed.append(loose)
        cache = os.path.join(os.path.realpath(plugin_dir), "__pycache__")
        stale = [os.path.join(cache, e) for e in _listdir(cache)
                 if e.startswith(f"{name}.") and e.endswith(".pyc")]
        removed += _remove_files(plugin_dir, stale)
    if not removed:
        raise PluginNotInstalled(f"plugins uninstall: nothing named {name!r} is installed in {plugin_dir}")
    return removed


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def dist_info_dirs(plugin_dir: str) -> set[str]:
    """The *.dist-info directories in plugin_dir now (taken before pip runs, for prune_upgraded)."""
    return {os.path.join(plugin_dir, e) for e in _listdir(plugin_dir) if e.endswith(".dist-info")}


def prune_upgraded(plugin_dir: str, before: set[str]) -> list[str]:
    """After `pip install --target --upgrade`: pip replaces the package directories but leaves the
    old version's `*.dist-info` (its name carries the version), so the old version would still be
    listed and its entry points loaded. Remove every older dist-info of a project pip just
    installed again, with any file only the old version had."""
    dists = _dists(plugin_dir)
    fresh = {_normalize(d.metadata["Name"] or ""): d for d in dists if _dist_info_dir(d) not in before}
    removed: list[str] = []
    for dist in dists:
        info_dir = _dist_info_dir(dist)
        new = fresh.get(_normalize(dist.metadata["Name"] or ""))
        if info_dir not in before or new is None:
            continue
        only_old = _dist_files(plugin_dir, dist) - _dist_files(plugin_dir, new)
        removed += _remove_files(plugin_dir, {f for f in only_old if not f.startswith(info_dir + os.sep)})
        shutil.rmtree(info_dir, ignore_errors=True)
        removed.append(info_dir)
    return removed


class PluginNotInstalled(DaemonError):
    code = "D5001"
