"""Typed configuration: load YAML, apply defaults, validate everything at once (D1001/D1002).

The schema below is the single source of truth: defaults, types, ranges and the documented
reference file `configs/daemon.yaml` all follow it. Durations are strings such as `30s`, `5m`,
`500ms`; sizes are integers (bytes) or strings such as `64MiB`. Values come out typed: durations
as float seconds, sizes as int bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from daemon_app.errors import ConfigLoadError, ConfigValidateError

ENV_CONFIG = "DAEMON_CONFIG"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
    "GB": 1000**3, "GiB": 1024**3,
}
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_duration(value: Any) -> float:
    """'30s' -> 30.0. Bare numbers are refused: '60' could mean seconds or milliseconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"must be a duration like 30s, got {value!r}")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"must be a duration like 30s, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


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
        raise ValueError(f"must be a size in bytes like 65536 or 64MiB, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"must be a size in bytes like 65536 or 64MiB, got {value!r}")


def format_size(size: int) -> int | str:
    """52428800 -> '50MiB'; sizes that are not a whole number of KiB stay plain bytes."""
    for unit in ("GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that remembers duplicate keys: YAML keeps the last silently, hiding a typo."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                self.duplicates.append(
                    f"{key}: duplicate key at line {key_node.start_mark.line + 1} (it would replace "
                    "the earlier one)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: its default, how to parse it, and an optional range check."""

    default: Any
    kind: str  # str, int, float, bool, duration, size, list[str], mode, choice
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def parse(self, value: Any) -> Any:
        kind = self.kind
        if kind == "duration":
            out: Any = parse_duration(value)
        elif kind == "size":
            out = parse_size(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            out = value
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be an integer, got {value!r}")
            out = value
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be a number, got {value!r}")
            out = float(value)
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {value!r}")
            out = value
        elif kind == "choice":
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
            out = value
        elif kind == "mode":
            if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
                raise ValueError(f"must be an octal file mode like '0600', got {value!r}")
            out = int(value, 8)
        elif kind == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"must be a list of strings, got {value!r}")
            out = list(value)
        elif kind == "map[str]":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"must be a mapping of strings to strings, got {value!r}")
            out = dict(value)
        else:  # pragma: no cover - schema bug
            raise AssertionError(kind)
        if self.minimum is not None and out < self.minimum:
            raise ValueError(f"must be at least {self._show(self.minimum)}, got {value!r}")
        if self.maximum is not None and out > self.maximum:
            raise ValueError(f"must be at most {self._show(self.maximum)}, got {value!r}")
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


# Paths left empty are derived from daemon.work_dir at load time (see _derive_paths).
SCHEMA: dict[str, Any] = {
    "daemon": {
        "id": Field("", "str", help="node id; empty: generated once and kept in work_dir"),
        "log_level": Field("info", "choice", choices=LOG_LEVELS),
        "log_file": Field("/var/log/daemon/daemon.log", "str", help="JSON lines; empty: stderr only"),
        "log_max_bytes": Field("10MiB", "size", minimum=4096),
        "log_backups": Field(5, "int", minimum=0, maximum=100),
        "pid_file": Field("/var/run/daemon.pid", "str"),
        "work_dir": Field("/var/lib/daemon", "str"),
        "report_interval": Field("60s", "duration", minimum=0.1, help="how often a report is built"),
        "report_timeout": Field("10s", "duration", minimum=0.01,
                                help="a reporter still busy after this is left behind; the round goes on"),
        "shutdown_timeout": Field("30s", "duration", minimum=0.0,
                                  help="on stop, how long to wait for work in flight and the outbox flush"),
        "control_socket": Field("", "str", help="empty: <work_dir>/control.sock"),
        "labels": Field({}, "map[str]", help="sent to the Manager with the node info"),
    },
    "manager": {
        "address": Field("", "str", help="host:port; empty: run stand-alone"),
        "server_name": Field("", "str", help="TLS name to verify; empty: the host of address"),
        "tls": {
            "cert_file": Field("/etc/daemon/certs/client.crt", "str"),
            "key_file": Field("/etc/daemon/certs/client.key", "str"),
            "ca_file": Field("/etc/daemon/certs/ca.crt", "str"),
        },
        "heartbeat_interval": Field("60s", "duration", minimum=0.1),
        "reconnect_interval": Field("10s", "duration", minimum=0.01),
        "reconnect_max": Field("5m", "duration", minimum=0.01),
        "timeout": Field("30s", "duration", minimum=0.01),
        "jitter": Field(0.1, "float", minimum=0.0, maximum=0.5, help="fraction added to intervals"),
        "keepalive_time": Field("60s", "duration", minimum=1.0,
                                help="gRPC keepalive ping interval (the seed's 10s costs ~0.03 % idle CPU)"),
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
        "work_dir": Field("/var/lib/agent", "str"),
        "config_file": Field("/etc/agent/agent.yaml", "str"),
        "socket_path": Field("/var/run/agent.sock", "str"),
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
            "path": Field("", "str", help="empty: <work_dir>/reports.jsonl"),
            "max_bytes": Field("16MiB", "size", minimum=1024, help="rotated to .1 when exceeded"),
        },
    },
    "update": {
        "download_dir": Field("/var/lib/daemon/downloads", "str"),
        "backup_dir": Field("/var/lib/daemon/backups", "str"),
        "max_backups": Field(5, "int", minimum=1, maximum=100),
        "verify_timeout": Field("300s", "duration", minimum=0.1),
        "public_key_file": Field("/etc/daemon/keys/update.pub", "str"),
        "connect_timeout": Field("10s", "duration", minimum=0.01),
        "read_timeout": Field("30s", "duration", minimum=0.01),
        "download_deadline": Field("30m", "duration", minimum=0.1),
        "min_free_bytes": Field("50MiB", "size", minimum=0, help="kept free beyond the package"),
        "self_update_deadline": Field("120s", "duration", minimum=1.0),
        "daemon_path": Field("", "str", help="the pyz to replace; empty: the running one"),
    },
    "plugins": {
        "dir": Field("", "str", help="empty: <work_dir>/plugins"),
        "disabled": Field([], "list[str]", help="plugin names not to load"),
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

    def __init__(self, data: dict[str, Any], source: str) -> None:
        super().__init__(data)
        object.__setattr__(self, "source", source)

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
            hint = _did_you_mean(str(key), schema)
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
    return f"{path}.{key}" if path else str(key)


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
        out.append((("manager.address",), f"manager.address: must be host:port, got {addr!r}"))
    elif addr and not 0 < int(addr.rsplit(":", 1)[1]) < 65536:
        out.append((("manager.address",), f"manager.address: port must be 1-65535, got {addr!r}"))
    if not data["daemon"]["work_dir"]:
        out.append((("daemon.work_dir",), "daemon.work_dir: must not be empty"))
    if data["agent"]["enabled"] and not data["agent"]["binary_path"]:
        out.append((("agent.binary_path", "agent.enabled"),
                    "agent.binary_path: must be set when agent.enabled is true"))
    return out


def _derive_paths(data: dict[str, Any]) -> None:
    work_dir = data["daemon"]["work_dir"]
    derived = (
        (data["daemon"], "control_socket", "control.sock"),
        (data["reporters"]["file"], "path", "reports.jsonl"),
        (data["plugins"], "dir", "plugins"),
    )
    for section, key, name in derived:
        if not section[key]:
            section[key] = os.path.join(work_dir, name)


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
    if problems:
        raise ConfigValidateError(problems)
    _derive_paths(data)
    return Config(_wrap(data)._data, source)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate a config file; None means built-in defaults only.

    D1001: the file cannot be read, is empty or is not YAML. D1002: it is YAML but not a valid config.
    """
    if path is None:
        return validate({})
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigLoadError(f"config: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigLoadError(f"config: {path} is not UTF-8 text: {exc}") from exc
    loader = _UniqueKeyLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigLoadError(f"config: {path} is not valid YAML{at}: {problem}") from exc
    finally:
        loader.dispose()
    if raw is None:
        raise ConfigLoadError(f"config: {path} is empty")
    return validate(raw, source=path, problems=loader.duplicates)


def resolve_path(cli_value: str | None) -> str | None:
    """-c/--config wins, then $DAEMON_CONFIG; None means defaults only."""
    return cli_value or os.environ.get(ENV_CONFIG) or None


def summary(cfg: Config) -> str:
    enabled = [name for name, c in cfg.collectors.items() if c.enabled]
    mode = f"manager {cfg.manager.address}" if cfg.manager.address else "stand-alone"
    agent = cfg.agent.binary_path if cfg.agent.enabled else "no agent"
    return f"config OK: {cfg.source}: {mode}; agent {agent}; collectors {', '.join(enabled) or 'none'}"

