"""Typed configuration: load YAML, apply defaults, validate everything at once (D1001/D1002).

The schema below is the single source of truth: defaults, types, ranges and the documented
reference file `configs/daemon.yaml` all follow it. Durations are strings such as `30s`, `5m`,
`500ms`; sizes are integers (bytes) or strings such as `64MiB`. Values come out typed: durations
as float seconds, sizes as int bytes.

The file is bounded before it is trusted (docs: configs/daemon.yaml's header): its size, every
string, list and map in it, its nesting, and the number of nodes YAML aliases may expand to, so a
hostile or broken file is refused with D1001 in milliseconds instead of being expanded; error
messages quote at most a short excerpt of a bad value.
"""

from __future__ import annotations

import logging
import math
import os
import re
import reprlib
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from daemon_app.errors import ConfigLoadError, ConfigValidateError

log = logging.getLogger(__name__)

ENV_CONFIG = "DAEMON_CONFIG"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", re.ASCII)  # no other scripts' digits
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.ASCII)
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
    "GB": 1000**3, "GiB": 1024**3,
}
LOG_LEVELS = ("debug", "info", "warning", "error")

# Limits of a config file (D1001 past any of them). The shipped reference file is ~8 KiB, ~400 nodes.
MAX_FILE_BYTES = 128 * 1024
MAX_STRING = 16 * 1024  # characters in one scalar or key
MAX_ITEMS = 1000  # entries in one list or map
MAX_NODES = 5_000  # nodes in the document with every alias expanded (~0.2 s of parsing)
MAX_ALIASES = 100  # alias references (*name)
MAX_DEPTH = 32  # nesting of maps and lists
MAX_PROBLEMS = 100  # problems listed in one D1002 error; the rest are counted

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 4, 4, 2
_REPR.maxlong = 40


def excerpt(value: Any, limit: int = 80) -> str:
    """A short repr of a value for error messages: never the whole of a huge or deeply nested one
    (reprlib bounds the work, the cut bounds the text)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _finite(value: float, original: Any, what: str = "number") -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite {what}, got {excerpt(original)}")
    return value


def parse_duration(value: Any) -> float:
    """'30s' -> 30.0. Bare numbers are refused: '60' could mean seconds or milliseconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"must be a duration like 30s, got {excerpt(value)}")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"must be a duration like 30s, got {excerpt(value)}")
    return _finite(float(m.group(1)) * _DURATION_UNITS[m.group(2)], value, "duration")


def format_duration(seconds: float) -> str:
    """30.0 -> '30s'; the inverse of parse_duration for `config show`."""
    if seconds == 0:
        return "0s"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and float(seconds / factor).is_integer():
            return f"{int(seconds // factor)}{unit}"
    return f"{round(seconds * 1000)}ms"


def parse_size(value: Any) -> int:
    """65536 or '64MiB' -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size in bytes like 65536 or 64MiB, got {excerpt(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"must be a size in bytes like 65536 or 64MiB, got {excerpt(value)}")


def format_size(size: int) -> int | str:
    """52428800 -> '50MiB'; sizes that are not a whole number of KiB stay plain bytes."""
    for unit in ("GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:9100' or '[::1]:9100' -> (host, port). IP literals only: a listen address that
    needs DNS would make the daemon's start depend on the resolver."""
    import socket

    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f"must be IP:port or [IPv6]:port like 127.0.0.1:9100, got {value!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        socket.inet_pton(socket.AF_INET6 if m.group(1) else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{host!r} is not an IP address (in {value!r})") from None
    if int(port) > 65535:
        raise ValueError(f"port must be 0-65535, got {value!r}")
    return host, int(port)


class _LimitExceeded(yaml.MarkedYAMLError):
    """A config file past one of the limits above; reported like a YAML syntax error (D1001)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses oversized documents while composing them, before anything is built.

    PyYAML composes an alias as a reference to its anchor's node, so a 1 KiB "billion laughs" file
    is a small graph; it explodes only when something walks it (construction of merge keys, a
    repr in an error message, validation). Each node's size with its aliases expanded is counted
    here, as the graph is built, so such a file is refused after a few hundred nodes. It also
    remembers duplicate keys: YAML keeps the last silently, hiding a typo.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        self._sizes: dict[int, int] = {}  # id(node) -> size with aliases expanded
        self._total = 0
        self._aliases = 0
        self._depth = 0

    def _refuse(self, mark: Any, problem: str) -> None:
        raise _LimitExceeded(problem=problem, problem_mark=mark)

    def _count(self, size: int, mark: Any) -> None:
        self._total += size
        if self._total > MAX_NODES:
            self._refuse(mark, f"more than {MAX_NODES} nodes, counting each alias as what it expands to")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._refuse(mark, f"more than {MAX_ALIASES} aliases")
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1), mark)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(mark, f"nested deeper than {MAX_DEPTH} levels")
        self._count(1, mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_STRING:
                self._refuse(mark, f"a string longer than {MAX_STRING} characters")
        else:
            if len(node.value) > MAX_ITEMS:
                self._refuse(mark, f"a list or map with more than {MAX_ITEMS} entries")
            children = node.value if isinstance(node, yaml.SequenceNode) else [
                n for pair in node.value for n in pair]
            size += sum(self._sizes.get(id(child), 1) for child in children)
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` is expanded by SafeLoader itself (and counted in compose_node)
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                self.duplicates.append(
                    f"{_short(key)}: duplicate key at line {key_node.start_mark.line + 1} (it would "
                    "replace the earlier one)")
            if isinstance(key, str):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _short(key: Any, limit: int = 60) -> str:
    """A key as it appears in a message: itself when short, else a truncated excerpt."""
    text = key if isinstance(key, str) else excerpt(key)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: its default, how to parse it, and an optional range check."""

    default: Any
    kind: str  # str, int, float, bool, duration, size, list[str], mode, choice
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""
    # A path that, when relative, lives under daemon.work_dir (so one key moves every state file).
    under_work_dir: bool = False

    def parse(self, value: Any) -> Any:
        kind = self.kind
        if kind == "duration":
            out: Any = parse_duration(value)
        elif kind == "size":
            out = parse_size(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {excerpt(value)}")
            out = value
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be an integer, got {excerpt(value)}")
            out = value
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be a number, got {excerpt(value)}")
            try:
                out = _finite(float(value), value)
            except OverflowError:
                raise ValueError(f"must be a finite number, got {excerpt(value)}") from None
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {excerpt(value)}")
            out = value
        elif kind == "choice":
            if isinstance(value, float) and str(value) in self.choices:  # YAML reads 1.2 as a number
                value = str(value)
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, got {excerpt(value)}")
            out = value
        elif kind == "mode":
            if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
                raise ValueError(f"must be an octal file mode like '0600', got {excerpt(value)}")
            out = int(value, 8)
        elif kind == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"must be a list of strings, got {excerpt(value)}")
            out = list(value)
        elif kind == "map[str]":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"must be a mapping of strings to strings, got {excerpt(value)}")
            out = dict(value)
        else:  # pragma: no cover - schema bug
            raise AssertionError(kind)
        if self.minimum is not None and out < self.minimum:
            raise ValueError(f"must be at least {self._show(self.minimum)}, got {excerpt(value)}")
        if self.maximum is not None and out > self.maximum:
            raise ValueError(f"must be at most {self._show(self.maximum)}, got {excerpt(value)}")
        return out

    def _show(self, bound: float) -> str:
        return format_duration(bound) if self.kind == "duration" else str(bound)

    def render(self, value: Any) -> Any:
        """The typed value back in the form the YAML file uses (for `config show`)."""
        if self.kind == "duration":
            return format_duration(value)
        if self.kind == "size":
            return format_size(value)
        if self.kind == "mode":
            return f"{value:04o}"
        return value


def _collector(interval: str = "60s", **extra: Field) -> dict[str, Any]:
    return {
        "enabled": Field(True, "bool", help="run this collector"),
        "interval": Field(interval, "duration", minimum=0.1, help="how often it runs"),
        "timeout": Field("5s", "duration", minimum=0.01, help="a round goes on without it after this"),
        **extra,
    }


# Relative paths (every default one) are resolved under daemon.work_dir at load time (_derive_paths).
SCHEMA: dict[str, Any] = {
    "daemon": {
        "id": Field("", "str", help="node id; empty: generated once and kept in work_dir"),
        "log_level": Field("info", "choice", choices=LOG_LEVELS),
        "log_file": Field("daemon.log", "str", under_work_dir=True,
                          help="JSON lines; relative: under work_dir; empty: stderr only"),
        "log_max_bytes": Field("10MiB", "size", minimum=4096),
        "log_backups": Field(5, "int", minimum=0, maximum=100),
        "pid_file": Field("daemon.pid", "str", under_work_dir=True, help="empty: none"),
        "work_dir": Field("/var/lib/daemon", "str"),
        "report_interval": Field("60s", "duration", minimum=0.1, help="how often a report is built"),
        "report_timeout": Field("10s", "duration", minimum=0.01,
                                help="a reporter still busy after this is left behind; the round goes on"),
        "shutdown_timeout": Field("30s", "duration", minimum=0.0,
                                  help="on stop, how long to wait for work in flight and the outbox flush"),
        "control_socket": Field("control.sock", "str", under_work_dir=True),
        "labels": Field({}, "map[str]", help="sent to the Manager with the node info"),
    },
    "manager": {
        "address": Field("", "str", help="host:port; empty: run stand-alone"),
        "server_name": Field("", "str", help="TLS name to verify; empty: the host of address"),
        "tls": {
            "cert_file": Field("certs/client.crt", "str", under_work_dir=True),
            "key_file": Field("certs/client.key", "str", under_work_dir=True),
            "ca_file": Field("certs/ca.crt", "str", under_work_dir=True),
            "min_version": Field("1.3", "choice", choices=("1.3", "1.2"),
                                 help="oldest TLS version the link accepts; 1.2 only for an old Manager"),
        },
        "heartbeat_interval": Field("60s", "duration", minimum=0.1),
        "reconnect_interval": Field("10s", "duration", minimum=0.01),
        "reconnect_max": Field("5m", "duration", minimum=0.01),
        "timeout": Field("30s", "duration", minimum=0.01),
        "jitter": Field(0.1, "float", minimum=0.0, maximum=0.5, help="fraction added to intervals"),
        "keepalive_time": Field("60s", "duration", minimum=1.0,
                                help="HTTP/2 PING interval: a Manager that vanished is noticed within "
                                "keepalive_time + keepalive_timeout"),
        "keepalive_timeout": Field("3s", "duration", minimum=0.1, help="a ping unanswered this long drops "
                                   "the connection"),
        "outbox": {
            "max_bytes": Field("64MiB", "size", minimum=1024),
            "batch_size": Field(100, "int", minimum=1, maximum=10000),
            "drain_interval": Field("100ms", "duration", minimum=0.0,
                                    help="pause between batches while catching up, so a Manager that "
                                    "comes back is not flooded"),
        },
    },
    "agent": {
        "enabled": Field(True, "bool", help="supervise an Agent process"),
        "binary_path": Field("/usr/local/bin/agent", "str"),
        "args": Field([], "list[str]"),
        "work_dir": Field("agent", "str", under_work_dir=True),
        "config_file": Field("agent/agent.yaml", "str", under_work_dir=True),
        "config_check": Field([], "list[str]", help="command run with a pushed config file appended; "
                              "non-zero exit or timeout rejects it; empty: no check"),
        "config_reload": Field("restart", "choice", choices=("restart", "sighup"),
                               help="how a pushed config is applied"),
        "socket_path": Field("agent.sock", "str", under_work_dir=True),
        "socket_mode": Field("0600", "mode"),
        "socket_group": Field("", "str", help="group that may connect; empty: owner only"),
        "stop_timeout": Field("30s", "duration", minimum=0.0, help="SIGTERM, then SIGKILL after this"),
        "start_seconds": Field("1s", "duration", minimum=0.0,
                               help="STARTING -> RUNNING after this long up, or at the first heartbeat"),
        "log_max_bytes": Field("10MiB", "size", minimum=4096),
        "log_backups": Field(3, "int", minimum=0, maximum=100),
        "health_check": {
            "interval": Field("30s", "duration", minimum=0.05),
            "heartbeat_timeout": Field("90s", "duration", minimum=0.1),
            "cpu_threshold": Field(50.0, "float", minimum=0.0,
                                   help="percent of one core, whole process tree; 0 disables"),
            "memory_threshold": Field(524288000, "size", minimum=0, help="RSS of the tree; 0 disables"),
            "threshold_duration": Field("60s", "duration", minimum=0.0),
        },
        "restart": {
            "max_retries": Field(10, "int", minimum=0),
            "backoff_base": Field("10s", "duration", minimum=0.0),
            "backoff_max": Field("60s", "duration", minimum=0.0),
            "stable_after": Field("5m", "duration", minimum=0.0, help="running this long resets the count"),
        },
    },
    "collectors": {
        "cpu": _collector(),
        "memory": _collector(),
        "disk": _collector(
            mount_points=Field([], "list[str]", help="empty: every real filesystem"),
            include_pseudo=Field(False, "bool", help="also tmpfs, overlay, proc, ..."),
            mount_timeout=Field("1s", "duration", minimum=0.01, help="a hung mount is skipped after this"),
        ),
        "network": _collector(interfaces=Field([], "list[str]", help="empty: every interface")),
    },
    "reporters": {
        "file": {
            "enabled": Field(True, "bool", help="append each report as a JSON line"),
            "path": Field("reports.jsonl", "str", under_work_dir=True),
            "max_bytes": Field("16MiB", "size", minimum=1024, help="rotated to .1 when exceeded"),
        },
    },
    "update": {
        "download_dir": Field("downloads", "str", under_work_dir=True),
        "backup_dir": Field("backups", "str", under_work_dir=True),
        "max_backups": Field(5, "int", minimum=1, maximum=100),
        "verify_timeout": Field("300s", "duration", minimum=0.1),
        "public_key_file": Field("keys/update.pub", "str", under_work_dir=True),
        "connect_timeout": Field("10s", "duration", minimum=0.01),
        "read_timeout": Field("30s", "duration", minimum=0.01),
        "download_deadline": Field("30m", "duration", minimum=0.1),
        "min_free_bytes": Field("50MiB", "size", minimum=0, help="kept free beyond the package"),
        "self_update_deadline": Field("120s", "duration", minimum=1.0),
        "daemon_path": Field("", "str", help="the pyz to replace; empty: the running one"),
    },
    "remote_config": {
        "enabled": Field(False, "bool", help="accept Agent config pushed by the Manager"),
        "max_agent_config_bytes": Field("1MiB", "size", minimum=1, maximum=3 * 1024 * 1024),
        "check_timeout": Field("30s", "duration", minimum=0.1,
                               help="agent.config_check is killed after this"),
        "verify_timeout": Field("60s", "duration", minimum=0.1,
                                help="the Agent (for settings: the daemon) must stay healthy this long after "
                                     "a push, else rolled back"),
        "allowed_keys": Field(["collectors.*.enabled", "collectors.*.interval", "collectors.*.timeout",
                               "daemon.report_interval", "daemon.log_level", "daemon.labels",
                               "agent.health_check.*"], "list[str]",
                              help="daemon settings the Manager may set (fnmatch patterns over dotted keys)"),
    },
    "plugins": {
        "dir": Field("plugins", "str", under_work_dir=True),
        "disabled": Field([], "list[str]", help="plugin names not to load"),
    },
    "prometheus": {
        "enabled": Field(False, "bool", help="serve GET /metrics (node_exporter names + daemon_*)"),
        "listen": Field("127.0.0.1:9100", "str", help="IP:port; [IPv6]:port; port 0: any free port"),
        "max_series": Field(5000, "int", minimum=10, maximum=100000,
                            help="series past this are left out of a scrape and counted"),
    },
}

# Sections under `collectors` for plugin collectors (names the schema cannot know in advance).
PLUGIN_COLLECTOR_SCHEMA = _collector()


class Section(Mapping[str, Any]):
    """Read-only attribute access to a validated config section: cfg.agent.health_check.interval."""

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("configuration is read-only")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Section({self._data!r})"


class Config(Section):
    """The whole validated configuration, plus where it came from."""

    source: str
    derived: tuple[str, ...]

    def __init__(self, data: dict[str, Any], source: str, derived: Iterable[str] = ()) -> None:
        super().__init__(data)
        object.__setattr__(self, "source", source)
        # Keys whose relative value was put under daemon.work_dir (`config show` marks them).
        object.__setattr__(self, "derived", tuple(derived))

    def collector(self, name: str) -> Section:
        """A collector's section; plugin collectors not in the file get the generic defaults."""
        if name in self.collectors:
            return self.collectors[name]
        return _wrap(_validate_tree(PLUGIN_COLLECTOR_SCHEMA, {}, f"collectors.{name}", []))

    def to_yaml_dict(self) -> dict[str, Any]:
        return _render(SCHEMA, self._data)


def _wrap(data: dict[str, Any]) -> Section:
    return Section({k: _wrap(v) if isinstance(v, dict) and not _is_leaf_map(k) else v
                    for k, v in data.items()})


def _is_leaf_map(key: str) -> bool:
    return key == "labels"


def _validate_tree(schema: dict[str, Any], raw: Any, path: str, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping, got {type(raw).__name__}")
        raw = {}
    out: dict[str, Any] = {}
    for key in raw:
        if key not in schema and not (path == "collectors" and isinstance(key, str)):
            hint = _did_you_mean(_short(key), schema)
            problems.append(f"{_join(path, key)}: unknown key{hint}")
    for key, node in schema.items():
        sub = _join(path, key)
        if isinstance(node, Field):
            value = raw.get(key, node.default)
            try:
                out[key] = node.parse(value)
            except ValueError as exc:
                problems.append(f"{sub}: {exc}")
                out[key] = node.parse(node.default)
        else:
            out[key] = _validate_tree(node, raw.get(key), sub, problems)
    if path == "collectors":
        for key, value in raw.items():
            if key not in schema and isinstance(key, str):
                out[key] = _validate_tree(PLUGIN_COLLECTOR_SCHEMA, value, _join(path, key), problems)
    return out


def _did_you_mean(key: str, schema: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(schema), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{_short(key)}" if path else _short(key)


def _render(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        node = schema.get(key)
        if node is None and isinstance(value, Mapping):
            node = PLUGIN_COLLECTOR_SCHEMA
        if isinstance(node, Field):
            out[key] = node.render(value)
        else:
            out[key] = _render(node, value)
    return out


def _check_consistency(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Settings that are valid alone but contradict each other: (keys involved, problem)."""
    out: list[tuple[tuple[str, ...], str]] = []
    hc = data["agent"]["health_check"]
    if hc["heartbeat_timeout"] <= hc["interval"] and data["agent"]["enabled"]:
        out.append((
            ("agent.health_check.heartbeat_timeout", "agent.health_check.interval", "agent.enabled"),
            "agent.health_check.heartbeat_timeout: must be longer than agent.health_check.interval "
            f"({format_duration(hc['heartbeat_timeout'])} <= {format_duration(hc['interval'])})",
        ))
    rs = data["agent"]["restart"]
    if rs["backoff_max"] < rs["backoff_base"]:
        out.append((("agent.restart.backoff_max", "agent.restart.backoff_base"),
                    "agent.restart.backoff_max: must not be shorter than agent.restart.backoff_base"))
    mgr = data["manager"]
    if mgr["reconnect_max"] < mgr["reconnect_interval"]:
        out.append((("manager.reconnect_max", "manager.reconnect_interval"),
                    "manager.reconnect_max: must not be shorter than manager.reconnect_interval"))
    addr = mgr["address"]
    if addr and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}", addr):
        out.append((("manager.address",), f"manager.address: must be host:port, got {excerpt(addr)}"))
    elif addr and not 0 < int(addr.rsplit(":", 1)[1]) < 65536:
        out.append((("manager.address",), f"manager.address: port must be 1-65535, got {excerpt(addr)}"))
    if not data["daemon"]["work_dir"]:
        out.append((("daemon.work_dir",), "daemon.work_dir: must not be empty"))
    try:
        parse_listen(data["prometheus"]["listen"])
    except ValueError as exc:
        out.append((("prometheus.listen",), f"prometheus.listen: {exc}"))
    if data["agent"]["enabled"] and not data["agent"]["binary_path"]:
        out.append((("agent.binary_path", "agent.enabled"),
                    "agent.binary_path: must be set when agent.enabled is true"))
    return out


# Paths where "" keeps its older meaning "the default under work_dir" (for log_file and pid_file
# "" means none: stderr only, no pid file).
_EMPTY_MEANS_DEFAULT = ("daemon.control_socket", "reporters.file.path", "plugins.dir")


def _path_fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, Field]]:
    for key, node in schema.items():
        sub = _join(path, key)
        if isinstance(node, Field):
            if node.under_work_dir:
                yield sub, node
        else:
            yield from _path_fields(node, sub)


def _derive_paths(data: dict[str, Any]) -> list[str]:
    """Make work_dir absolute and put every relative state path under it; return the keys moved."""
    work_dir = data["daemon"]["work_dir"] = os.path.abspath(data["daemon"]["work_dir"])
    derived = []
    for dotted, node in _path_fields(SCHEMA):
        *parents, key = dotted.split(".")
        section = data
        for name in parents:
            section = section[name]
        value = section[key]
        if not value and dotted in _EMPTY_MEANS_DEFAULT:
            value = node.default
        if value and not os.path.isabs(value):
            section[key] = os.path.join(work_dir, value)
            derived.append(dotted)
    return derived


def validate(raw: Any, source: str = "<defaults>", *, problems: list[str] | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigValidateError listing every problem.

    `problems` may carry problems already found while parsing (duplicate keys); they are reported
    together with the rest.
    """
    problems = list(problems or [])
    if raw is not None and not isinstance(raw, dict):
        raise ConfigValidateError([f"<root>: must be a mapping of sections, got {type(raw).__name__}"])
    data = _validate_tree(SCHEMA, raw or {}, "", problems)
    # A key that is already wrong was replaced by its default: judging it against others would
    # report a contradiction the operator did not write.
    bad = {p.split(":", 1)[0] for p in problems}
    problems += [msg for keys, msg in _check_consistency(data) if not bad.intersection(keys)]
    if len(problems) > MAX_PROBLEMS:  # a file of garbage must not become a megabyte of output
        problems = problems[:MAX_PROBLEMS] + [f"<file>: {len(problems) - MAX_PROBLEMS} more problem(s) "
                                              "not listed"]
    if problems:
        raise ConfigValidateError(problems)
    derived = _derive_paths(data)
    return Config(_wrap(data)._data, source, derived=derived)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate a config file; None means built-in defaults only.

    D1001: the file cannot be read, is not a regular file, is too large, not YAML, or past
    a limit (MAX_* above). D1002: it is YAML but not a valid config.
    """
    if path is None:
        return validate({})
    path = os.fspath(path)
    raw, duplicates = _load_yaml(path)
    # An empty file (or only comments) is the defaults, as configs/daemon.yaml promises.
    cfg = validate(raw, source=path, problems=list(duplicates))
    if not cfg.remote_config.enabled:
        return cfg
    from daemon_app import remote_settings

    values = remote_settings.applicable(remote_settings.read(cfg.daemon.work_dir),
                                        list(cfg.remote_config.allowed_keys))
    if not values:
        return cfg
    try:  # the Manager's daemon settings over the file (checked when they were set)
        return validate(remote_settings.merged(raw, values), source=path, problems=list(duplicates))
    except ConfigValidateError as exc:
        log.error("D1002 remote settings ignored, the config file alone applies: %s", "; ".join(exc.problems),
                  extra={"code": "D1002"})
        return cfg


def read_raw(path: str) -> Any:
    """The parsed YAML document of a config file, unvalidated but within the same limits (D1001)."""
    return _load_yaml(path)[0]


def _read_bounded(path: str) -> str:
    """The file's text; D1001 unless it is a regular UTF-8 file of at most MAX_FILE_BYTES."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang `config check` or a reload.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigLoadError(f"config: cannot read {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigLoadError(f"config: {path} is not a regular file")
        try:
            data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigLoadError(f"config: cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigLoadError(f"config: {path} is larger than {MAX_FILE_BYTES // 1024} KiB; refusing "
                              "to parse it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigLoadError(f"config: {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


def _load_yaml(path: str) -> tuple[Any, list[str]]:
    text = _read_bounded(path)
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters (a YAMLError)
        return loader.get_single_data(), loader.duplicates
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or exc
        what = "is past a config file limit" if isinstance(exc, _LimitExceeded) else "is not valid YAML"
        raise ConfigLoadError(f"config: {path} {what}{at}: {str(problem)[:200]}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors let some of these through (a timestamp like 2026-13-45, an integer
        # past Python's digit limit); they are the file's fault all the same.
        raise ConfigLoadError(f"config: {path} has a value YAML cannot represent: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    finally:
        if loader is not None:
            loader.dispose()


def resolve_path(cli_value: str | None) -> str | None:
    """-c/--config wins, then $DAEMON_CONFIG; None means defaults only."""
    return cli_value or os.environ.get(ENV_CONFIG) or None


def summary(cfg: Config, warnings: int = 0) -> str:
    """The one-line verdict of `config check`."""
    enabled = [name for name, c in cfg.collectors.items() if c.enabled]
    mode = f"manager {cfg.manager.address}" if cfg.manager.address else "stand-alone"
    agent = f"agent {cfg.agent.binary_path}" if cfg.agent.enabled else "no Agent (agent.enabled: false)"
    verdict = (f"config valid with {warnings} warning{'s' if warnings != 1 else ''} (above)"
               if warnings else "config OK")
    return (f"{verdict}: {cfg.source}: {mode}; {agent}; collectors {', '.join(enabled) or 'none'}; "
            f"work_dir {cfg.daemon.work_dir}")
