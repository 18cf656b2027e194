"""A JSON object of several arrays written in pieces (`cairn --json diff`) is the text the whole
object dumps to, however its elements are batched."""

from __future__ import annotations

import json

import pytest
from cairn.client.render import JsonObjectWithArrays, dumps

KEYS = ("added", "modified", "deleted")


@pytest.mark.parametrize("arrays", [
    {"added": [], "modified": [], "deleted": []},
    {"added": ["a"], "modified": [], "deleted": []},
    {"added": [], "modified": [], "deleted": ["x", "y\nz"]},
    {"added": ["a", "b", "c"], "modified": ["m"], "deleted": ["d/", "d/e"]},
    {"added": [], "modified": ["\u00e9t\u00e9", "\\xff"], "deleted": []},
])
@pytest.mark.parametrize("batch", [1, 2, 100])
def test_the_pieces_make_the_whole_document(arrays: dict[str, list[str]], batch: int) -> None:
    lines: list[str] = []
    doc = JsonObjectWithArrays(lines.append, {"a": "ab12", "b": None}, KEYS)
    for key in KEYS:
        items = arrays[key]
        doc.extend(key, [])  # an empty batch writes nothing
        for start in range(0, len(items), batch):
            doc.extend(key, items[start:start + batch])
    doc.close()
    text = "\n".join(lines)
    assert text == dumps({"a": "ab12", "b": None, **arrays})
    assert json.loads(text) == {"a": "ab12", "b": None, **arrays}
    assert all(line for line in lines)  # whole lines, never an empty write


def test_an_array_cannot_be_reopened() -> None:
    doc = JsonObjectWithArrays(lambda _: None, {"a": 1}, KEYS)
    doc.extend("modified", ["m"])
    with pytest.raises(ValueError, match="written already"):
        doc.extend("added", ["a"])
