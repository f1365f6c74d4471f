"""Daemon settings set by the Manager (`daemon_settings` command): the allow-list, and the overlay file
that config loading lays over the config file while remote config is on.

<work_dir>/remote_config/settings.json   {"values": {"daemon.report_interval": "30s", ...}}
<work_dir>/remote_config/settings.last_known_good.json   the values before the push in flight, so
                                         that a daemon killed while verifying it can restore them

Keys are dotted config paths. A key is settable when it matches `remote_config.allowed_keys`
(fnmatch patterns) and none of NEVER: nothing that runs code, moves files or changes trust can be
set remotely, whatever the allow-list says.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import os
import re
from typing import Any

from daemon_app import fsutil

log = logging.getLogger(__name__)

SETTINGS_FILE = os.path.join("remote_config", "settings.json")
LAST_KNOWN_GOOD_FILE = os.path.join("remote_config", "settings.last_known_good.json")
MAX_KEYS = 64
MAX_KEY = 128
MAX_VALUE = 1024
MAX_FILE = 256 * 1024

# Code, files, trust and the remote config itself: never, even if allowed_keys names them.
NEVER = ["manager.*", "update.*", "plugins.*", "remote_config.*", "prometheus.*", "daemon.work_dir",
         "daemon.id", "daemon.control_socket", "agent.binary_path", "agent.args", "agent.config_check",
         "agent.work_dir", "agent.socket_*", "agent.enabled", "*_file", "*_path", "*_dir", "*.tls.*",
         "*.path", "*.file", "*.dir"]


# A config key: dotted names of letters, digits, `_` and `-`. Checked before the allow-list, whose
# fnmatch patterns would otherwise match a key that is itself a pattern (`collectors.*.enabled`) and
# keep it as a collector literally named `*`, or an empty name (`collectors..enabled`).
_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", re.ASCII)


def is_config_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def settable(key: str, allowed: list[str]) -> bool:
    if any(fnmatch.fnmatchcase(key, pattern) for pattern in NEVER):
        return False
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed)


def applicable(values: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """The overlay's values a load may lay over the file: those the allow-list opens now. The
    overlay was checked when it was set, but the allow-list may have been narrowed since (the
    operator takes a key back) and the file may not be the daemon's doing (a restored backup, a
    hand edit): a key left out is logged (D6001) and the file's value applies."""
    kept = {k: v for k, v in values.items() if is_config_key(k) and settable(k, allowed)}
    if len(kept) < len(values):
        left = sorted(repr(k)[:130] for k in values if k not in kept)
        log.error("D6001 remote settings not applied, not settable remotely (remote_config.allowed_keys; "
                  "code, files and trust never are): %s", ", ".join(left), extra={"code": "D6001"})
    return kept


def parse_value(text: str) -> Any:
    """JSON when it is JSON ("true", "5", "[\"a\"]", "{\"k\": \"v\"}"), else the text itself ("30s")."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def merged(raw: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The config file's document with each dotted key set (the file's own dict is not changed)."""
    out = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


def path(work_dir: str) -> str:
    return os.path.join(work_dir, SETTINGS_FILE)


def read(work_dir: str) -> dict[str, Any]:
    """The overlay's values; {} when there is none. A file that is not ours or not valid is logged
    (D6001) and ignored: the config file alone then applies."""
    return _read_values(path(work_dir)) or {}


def _read_values(file: str) -> dict[str, Any] | None:
    """{"values": {...}} from `file`; None when it is missing, not ours or not valid (logged)."""
    try:
        data = fsutil.read_json(file, limit=MAX_FILE)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        log.error("D6001 remote settings %s ignored: %s", file, exc, extra={"code": "D6001"})
        return None
    values = data.get("values") if isinstance(data, dict) else None
    return dict(values) if isinstance(values, dict) else None


def keep_last_known_good(work_dir: str, values: dict[str, Any]) -> None:
    """Before settings are swapped: the values in effect ({} too), durable, 0600."""
    fsutil.private_dir(os.path.dirname(path(work_dir)))
    fsutil.write_json(os.path.join(work_dir, LAST_KNOWN_GOOD_FILE), {"values": values})


def last_known_good(work_dir: str) -> dict[str, Any] | None:
    """What keep_last_known_good kept; None when nothing (valid) was kept."""
    return _read_values(os.path.join(work_dir, LAST_KNOWN_GOOD_FILE))


def write(work_dir: str, values: dict[str, Any]) -> None:
    """Atomically, 0600, in the private remote_config directory; {} removes the overlay."""
    fsutil.private_dir(os.path.dirname(path(work_dir)))
    if values:
        fsutil.write_json(path(work_dir), {"values": values})
    else:
        fsutil.unlink_quietly(path(work_dir))


def digest(values: dict[str, Any]) -> str:
    """"sha256:<hex>" of the overlay in canonical JSON; "" when there is none."""
    import hashlib

    if not values:
        return ""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
