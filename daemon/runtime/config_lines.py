"""Where a key of the configuration file is written: its line number, for error messages.

A key path as config errors name it (`source[1].quiesce.timeout`, `daemon.sockt`) is looked up
in the file's text: the table header that opens it (`[daemon]`, the second `[[source]]`, a
`[source.quiesce]` below it), then each further key as `name =` inside that table, on its own
line or in an inline table (`quiesce = { mode = "cold", timeout = "x" }`: the line that holds
`timeout =`, or else `quiesce =`'s). What always holds: `line_of` only reads the text and
returns the line of the deepest part it found (1-based), or None when the file does not write
the key's table in a form it follows (a dotted key, an inline table at the top); a message then
simply has no line. It never raises.
"""

from __future__ import annotations

import re

# A table header of bare keys ([daemon], [[source]], [source.quiesce]); an array's element on a
# line of its own (["sync"]) is not one.
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\s-]+?)\s*\]\]?\s*(#.*)?$")
_PART = re.compile(r"([A-Za-z0-9_-]+)(?:\[(\d+)\])?")


def line_of(text: str, key: str) -> int | None:
    """The 1-based line where `key` (a config error's key path) is written in `text`, else None."""
    try:
        return _locate(text.splitlines(), _parts(key))
    except Exception:  # a message without a line is better than no message
        return None


def _parts(key: str) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for piece in key.split("."):
        match = _PART.fullmatch(piece)
        if match is None:
            return []
        out.append((match.group(1), int(match.group(2)) if match.group(2) is not None else None))
    return out


def _headers(lines: list[str]) -> list[tuple[int, tuple[str, ...], bool]]:
    """(line index, table path, array of tables) of every table header."""
    found = []
    for index, line in enumerate(lines):
        match = _HEADER.match(line)
        if match:
            path = tuple(p.strip() for p in match.group(2).split("."))
            found.append((index, path, match.group(1) == "[["))
    return found


def _locate(lines: list[str], parts: list[tuple[str, int | None]]) -> int | None:
    if not parts:
        return None
    headers = _headers(lines)
    top, position = parts[0]
    # the header that opens the top-level table: [name], or the position-th [[name]]
    opening = [h for h in headers if h[1] == (top,)]
    if position is not None:
        opening = [h for h in opening if h[2]]
    if not opening or len(opening) <= (position or 0):
        return None
    start = opening[position or 0][0]
    later = [h[0] for h in headers if h[0] > start and (h[1][:1] != (top,) or h[1] == (top,))]
    end = later[0] if later else len(lines)
    found = start
    path: tuple[str, ...] = (top,)
    for name, index in parts[1:]:
        # a sub-table header of this one ([source.quiesce], [[source.quiesce.hooks]]) inside the
        # region, else `name =` in it
        sub = [h for h in headers if start < h[0] < end and h[1] == (*path, name)]
        if sub:
            if len(sub) <= (index or 0):
                break
            start = found = sub[index or 0][0]
            nested = [h[0] for h in headers if h[0] > start and (h[1][:len(path) + 1] != (*path, name)
                                                               or h[1] == (*path, name))]
            end = min([end, *nested])
            path = (*path, name)
            continue
        line = _key_line(lines, name, found, start, end)
        if line is None:
            break
        found = start = line
        if index is not None:  # an element of an array written inline: its key's line is as far as it goes
            break
        path = (*path, name)
    return found + 1


def _key_line(lines: list[str], name: str, after: int, start: int, end: int) -> int | None:
    """The first line from `after` (and past `start`) up to `end` that writes `name =`, at its
    start or inside an inline table (after `{` or `,`)."""
    pattern = re.compile(rf"(^\s*|[{{,]\s*){re.escape(name)}\s*=")
    for index in range(max(after, start), end):
        if pattern.search(lines[index]) and not _HEADER.match(lines[index]):
            return index
    return None
