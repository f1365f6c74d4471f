"""The version comparator: dotted numbers, pre-releases, build metadata."""

from __future__ import annotations

import pytest

from daemon_app.update.versions import Version, is_valid

ORDERED = ["0.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11",
           "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2", "1.9.0", "1.10.0", "2.0rc1", "2.0.0", "10.0"]


@pytest.mark.parametrize("i", range(len(ORDERED) - 1))
def test_versions_sort_in_release_order(i: int) -> None:
    assert Version(ORDERED[i]) < Version(ORDERED[i + 1])


@pytest.mark.parametrize(("a", "b"), [("1.2", "1.2.0"), ("v1.2.0", "1.2.0"), ("1.2.0+build.5", "1.2.0"),
                                      ("2.0rc1", "2.0.0-rc1")])
def test_equal_versions(a: str, b: str) -> None:
    assert Version(a) == Version(b) and hash(Version(a)) == hash(Version(b))


@pytest.mark.parametrize("bad", ["", "1..2", "abc", "1.2.", "-1", "1.2.3 ", "1.2/3", "1" * 70, "1.2.0-"])
def test_invalid_versions_are_refused(bad: str) -> None:
    assert not is_valid(bad)
    with pytest.raises(ValueError):
        Version(bad)
