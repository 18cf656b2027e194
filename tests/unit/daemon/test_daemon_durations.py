"""Duration parsing and formatting."""

from __future__ import annotations

import pytest
from cairn.daemon.runtime.durations import format_duration, parse_duration
from cairn.store.errors import InvalidArgumentError


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), ("1w", 604800.0),
        ("1h30m", 5400.0), ("1m30s", 90.0), ("1.5h", 5400.0), (" 5 m ", 300.0), ("90", 90.0),
        (45, 45.0), (0.25, 0.25), (0, 0.0), ("0s", 0.0), ("2M", 120.0),
    ],
)
def test_parse(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "5x", "m5", "-5m", -1, True, None, [5], "5m junk", "inf",
                                   float("nan")])
def test_parse_rejects(value):
    with pytest.raises(InvalidArgumentError, match="expected a duration like '5m'"):
        parse_duration(value)


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (0.5, "500ms"), (1.25, "1.25s"), (30, "30s"), (300, "5m"), (5400, "1h30m"), (90061, "1d1h1m1s"),
     (-60, "-1m")],
)
def test_format(seconds, text):
    assert format_duration(seconds) == text


def test_format_round_trips():
    for seconds in (0.5, 30, 300, 5400, 86400, 93784):
        assert parse_duration(format_duration(seconds)) == seconds
