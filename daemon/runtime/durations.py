"""Durations as people write them in configuration files: "500ms", "30s", "5m", "2h", "1d".

A duration is parsed into float seconds. Units may be combined ("1h30m"); a bare number
(int, float or a numeric string) means seconds. Durations are never negative.
"""

from __future__ import annotations

import math
import re

from cairn.store.errors import InvalidArgumentError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_FORMAT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(value: str | int | float) -> float:
    """Return `value` in seconds; raise InvalidArgumentError for anything else.

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(value, bool):
        raise InvalidArgumentError(f"expected a duration like '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise InvalidArgumentError(f"expected a duration like '5m', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgumentError(f"expected a duration like '5m', got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    compact = text.strip().lower().replace(" ", "")
    try:
        return float(compact)
    except ValueError:
        pass
    total = 0.0
    position = 0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise InvalidArgumentError(f"expected a duration like '5m', got '{text}'")
    return total


def format_duration(seconds: float) -> str:
    """Return a short human form of `seconds`: 0.5 -> "500ms", 5400 -> "1h30m", 0 -> "0s"."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        millis = round(seconds * 1000)
        return f"{millis}ms" if millis else "0s"
    whole = int(seconds)
    fraction = seconds - whole
    parts = []
    for unit, size in _FORMAT_UNITS:
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if fraction >= 0.001 and seconds < 60:
        # Keep sub-second precision only where it still matters.
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    return "".join(parts) or "0s"
