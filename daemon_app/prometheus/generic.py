"""Plugin collectors' numeric values under one generic naming rule (docs/prometheus.md).

A group `G` with a number (or true/false) at `values[K]` becomes the gauge `daemon_plugin_<G>_<K>`;
a number one level down, `values[K][K2]`, becomes `daemon_plugin_<G>_<K>_<K2>`. Names are lower-cased
and every run of characters outside [a-z0-9_] becomes one '_'. Strings, lists and anything deeper
are not exported. Two values that end up with the same name keep the first; the series limit of the
exposition bounds what a plugin can add.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon_app.prometheus.exposition import GAUGE, Exposition, sanitize_name

PREFIX = "daemon_plugin_"


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def add_plugin_series(out: Exposition, metrics: Mapping[str, Any], skip: frozenset[str]) -> None:
    """Add daemon_plugin_* series for every group in `metrics` whose name is not in `skip`."""
    for group in sorted(k for k in metrics if isinstance(k, str) and k not in skip):
        entry = metrics[group]
        values = entry.get("values") if isinstance(entry, Mapping) else None
        if not isinstance(values, Mapping):
            continue
        stem = PREFIX + sanitize_name(group)
        for key, value in values.items():
            if not isinstance(key, str):
                continue
            name = f"{stem}_{sanitize_name(key)}"
            if _is_number(value):
                out.add(name, GAUGE, f"Plugin metrics group {group!r}, value {key!r}.", value)
            elif isinstance(value, Mapping):
                for sub, inner in value.items():
                    if isinstance(sub, str) and _is_number(inner):
                        out.add(f"{name}_{sanitize_name(sub)}", GAUGE,
                                f"Plugin metrics group {group!r}, value {key!r}.{sub!r}.", inner)
