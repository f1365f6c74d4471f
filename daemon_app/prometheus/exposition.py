"""A small writer for the Prometheus text exposition format (version 0.0.4), bounded in series.

Hand-written instead of `prometheus_client`: importing that library (0.26.0) adds 8.4 MB of RSS to
the daemon, four times the whole budget of this feature, and we only need its text output, not its
registry, its metric objects or its HTTP server (which starts a thread per connection).
`promtool check metrics` checks what this writes (tests).

Every input is bounded before it is kept: metric and label names must match Prometheus's grammar
(anything else is left out and counted), label values are cut at MAX_LABEL_VALUE characters, and a
body never holds more than `max_series` samples; what does not fit is counted in `dropped`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL_VALUE = 512
MAX_LABELS = 16
GAUGE, COUNTER, UNTYPED = "gauge", "counter", "untyped"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MAX_NAME = 200

LabelKey = tuple[tuple[str, str], ...]


class _Family:
    __slots__ = ("kind", "help", "samples")

    def __init__(self, kind: str, help_text: str) -> None:
        self.kind = kind
        self.help = help_text
        self.samples: dict[LabelKey, int | float] = {}


class Exposition:
    """The series of one scrape body, in the order added; `render()` turns them into bytes."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.series = 0
        self.dropped = 0
        self._families: dict[str, _Family] = {}

    def add(self, name: str, kind: str, help_text: str, value: int | float | bool,
            labels: Mapping[str, str] | None = None) -> bool:
        """Add one sample; False (and counted in `dropped`) when it cannot be kept: a bad name or
        label, a non-number, the series limit, a duplicate label set, or a kind that contradicts an
        earlier sample of the same name."""
        key = _label_key(labels)
        number = _number(value)
        if (key is None or number is None or len(name) > _MAX_NAME or not _METRIC_NAME.fullmatch(name)
                or self.series >= self.max_series):
            self.dropped += 1
            return False
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(kind, help_text)
        if family.kind != kind or key in family.samples:
            self.dropped += 1
            return False
        family.samples[key] = number
        self.series += 1
        return True

    def names(self) -> list[str]:
        return list(self._families)

    def render(self) -> bytes:
        lines: list[str] = []
        for name, family in self._families.items():
            if not family.samples:
                continue
            lines.append(f"# HELP {name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for key, value in family.samples.items():
                lines.append(f"{name}{_format_labels(key)} {_format_value(value)}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


def sanitize_name(text: str) -> str:
    """Any text -> a metric-name fragment: lower case, runs of other characters as one '_'."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def _number(value: object) -> int | float | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None


def _label_key(labels: Mapping[str, str] | None) -> LabelKey | None:
    if not labels:
        return ()
    if len(labels) > MAX_LABELS:
        return None
    out = []
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_NAME.fullmatch(k) or k.startswith("__"):
            return None
        if not isinstance(v, str):
            return None
        out.append((k, v[:MAX_LABEL_VALUE]))
    return tuple(out)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in key) + "}"


def _format_value(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
