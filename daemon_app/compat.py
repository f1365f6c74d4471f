"""Small shims for what CPython 3.11 has and 3.9 (the oldest python3 the pyz runs on) lacks.

One place for them, so the rest of daemon_app reads as ordinary Python and a reader knows why a
helper exists. tests/compat imports every daemon_app module under each interpreter it can find.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

UTC = timezone.utc  # datetime.UTC is 3.11+

# The fraction and the zone of an ISO 8601 time: 3.9/3.10's fromisoformat takes exactly 3 or 6
# fraction digits and no "Z"; 3.11's takes any number of digits and "Z".
_TAIL = re.compile(r"(?:\.(\d+))?(Z|[+-]\d\d:?\d\d(?::?\d\d(?:\.\d+)?)?)?$")


def fromisoformat(value: str) -> datetime:
    """datetime.fromisoformat as 3.11 accepts it (trailing Z, any number of fraction digits).

    Raises ValueError for anything that is not such a time, like the original."""
    match = _TAIL.search(value)
    if match is None or not value.isascii() or value[:match.start()].endswith("."):
        raise ValueError(f"Invalid isoformat string: {value!r}")
    fraction, zone = match.group(1), match.group(2) or ""
    head = value[:match.start()]
    if fraction is not None:
        head += "." + (fraction + "000000")[:6]
    if zone == "Z":
        zone = "+00:00"
    return datetime.fromisoformat(head + zone)
