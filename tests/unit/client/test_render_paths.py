"""How the client shows paths to people: one line per name, no two names alike."""

from __future__ import annotations

import pytest
from cairn.client.render import show_path


@pytest.mark.parametrize(("raw", "shown"), [
    (b"docs/a b.txt", "docs/a b.txt"),
    ("caf\u00e9/\u65e5\u672c".encode(), "caf\u00e9/\u65e5\u672c"),
    (b"a\nb", "a\\nb"),
    (b"tab\there\r", "tab\\there\\r"),
    (b"bell\x07del\x7f", "bell\\x07del\\x7f"),
    (b"\xff\xfe", "\\xff\\xfe"),
    (b"\\xff\\xfe", "\\\\xff\\\\xfe"),  # a name that is literally backslash, x, f, f: not the bytes above
    (b"back\\slash", "back\\\\slash"),
])
def test_names_are_shown_escaped_and_unambiguous(raw: bytes, shown: str) -> None:
    assert show_path(raw) == shown
    assert "\n" not in show_path(raw)


def test_distinct_names_never_look_alike() -> None:
    names = [b"a\nb", b"a\\nb", b"\xff", b"\\xff", b"a\\b", b"a\\\\b", b"x\x00", b"x\\x00"]
    assert len({show_path(n) for n in names}) == len(names)
