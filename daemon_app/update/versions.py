"""Version strings: dotted numbers with an optional pre-release, compared like SemVer.

`1.2` == `1.2.0`; `1.2.0-rc.1` < `1.2.0`; `1.10` > `1.9`; build metadata (`+abc`) is ignored.
A letter right after the numbers starts a pre-release too (`2.0rc1` == `2.0-rc1`). Small on
purpose: the pyz does not carry `packaging`.
"""

from __future__ import annotations

import functools
import re

_VERSION_RE = re.compile(
    r"^v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:(?:-|(?=[A-Za-z]))(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
MAX_LENGTH = 64


@functools.total_ordering
class Version:
    """A parsed, comparable version. Raises ValueError for anything else."""

    __slots__ = ("text", "release", "pre")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or len(text) > MAX_LENGTH:
            shown = repr(text[:MAX_LENGTH]) + "..." if isinstance(text, str) else f"a {type(text).__name__}"
            raise ValueError(f"not a version: {shown}")
        m = _VERSION_RE.match(text)
        if not m:
            raise ValueError(f"not a version: {text!r} (expected dotted numbers like 1.4.2 or 1.5.0-rc.1)")
        self.text = text
        release = [int(part) for part in m.group("release").split(".")]
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        self.release = tuple(release)
        pre = m.group("pre")
        self.pre: tuple[tuple[int, int | str], ...] | None = (
            tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")) if pre else None
        )

    def _key(self) -> tuple:
        # A release sorts after all of its pre-releases; numeric identifiers before alphanumeric ones.
        return (self.release, (1,) if self.pre is None else (0, self.pre))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def is_valid(text: str) -> bool:
    try:
        Version(text)
    except ValueError:
        return False
    return True
