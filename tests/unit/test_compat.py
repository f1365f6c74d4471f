"""daemon_app.compat: the 3.9 shims behave like the 3.11 originals they stand in for."""

from __future__ import annotations

import datetime as dt

import pytest

from daemon_app.compat import UTC, fromisoformat


@pytest.mark.parametrize("text", [
    "2026-05-01T12:00:00Z", "2026-05-01T12:00:00.1Z", "2026-05-01T12:00:00.123Z",
    "2026-05-01T12:00:00.1234567+02:00", "2026-05-01 12:00:00-05:30", "2026-05-01T12:00:00",
    "2026-05-01T12:00:00.123456+00:00", "2026-05-01",
])
def test_fromisoformat_accepts_what_311_accepts(text):
    assert fromisoformat(text) == dt.datetime.fromisoformat(text)


@pytest.mark.parametrize("text", ["", "soon", "2026-13-01T00:00:00Z", "2026-05-01T12:00:00ZZ",
                                  "2026-05-01T12:00:00.Z", "2026-05-01T12:00:00z", "２０２６-05-01",
                                  "2026-05-01T25:00:00Z"])
def test_fromisoformat_refuses_what_is_not_a_time_with_valueerror(text):
    with pytest.raises(ValueError):
        fromisoformat(text)


def test_utc_is_the_utc_timezone():
    assert dt.datetime(2026, 1, 1, tzinfo=UTC).utcoffset() == dt.timedelta(0)
