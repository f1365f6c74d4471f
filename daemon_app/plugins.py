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
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from daemon_app import fsutil, hookspecs
from daemon_app.errors import DaemonError

log = logging.getLogger(__name__)

BUILTIN, ENTRYPOINT, DIRECTORY = "builtin", "entrypoint", "directory"

# The seed §7.1 code logged when a plugin raises in a hook: a failed reporter is a failed report,
# a failed update hook a failed update; anything else is a plugin (collect) failure.
HOOK_ERROR_CODES = {"report": "D2003", "pre_update": "D4003", "post_update": "D4003"}


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

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failed: list[PluginInfo] = []

    def register(self, plugin: object, name: str, *, version: str, source: str) -> None:
        self.pm.register(plugin, name=name)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.info[name] = PluginInfo(name, version, source, hooks)

    def _failed(self, name: str, version: str, source: str, exc: BaseException) -> None:
        err = PluginLoadError(f"plugin {name!r} ({source}) failed to load: {type(exc).__name__}: {exc}")
        log.error(str(err), extra={"code": err.code, "plugin": name})
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

    def implementations(self, hook: str) -> list[tuple[str, Any]]:
        """(plugin name, function) for each implementation of a hook, in registration order."""
        caller = getattr(self.pm.hook, hook)
        return [(impl.plugin_name, impl.function) for impl in caller.get_hookimpls()]

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a side-effect hook, isolating failures; returns results."""
        results = []
        code = HOOK_ERROR_CODES.get(hook, "D5001")
        for name, fn in self.implementations(hook):
            try:
                results.append((name, fn(**kwargs)))
            except Exception as exc:
                log.error(
                    "%s plugin %s raised in %s: %s: %s", code, name, hook, type(exc).__name__, exc,
                    extra={"plugin": name, "hook": hook, "code": code},
                )
        return results


def load_all(cfg: Any) -> Plugins:
    """Built-ins first, then the plugin directory, then installed entry points."""
    plugins = Plugins()
    plugins.load_builtins(cfg)
    plugins.load_directory(cfg)
    plugins.load_entrypoints(cfg)
    return plugins
