"""A large tree is read one entry at a time (store/snapshots/trees.py): its entries come out as
its bytes are scanned, read exactly as `json.loads` reads the whole document."""

from __future__ import annotations

import json
import os
import random

import pytest
from cairn.store.errors import CorruptionError
from cairn.store.snapshots import trees
from cairn.store.snapshots.trees import Entry, StreamedTree, decode_tree, encode_tree, iter_tree_entries

TID = bytes(range(32))


def _whole(data: bytes) -> list[Entry]:
    """The entries as a reader of the whole document reads them."""
    doc = json.loads(data)
    assert doc["v"] == trees.TREE_VERSION
    return [trees._entry(d) for d in doc["e"]]


def _odd_entries(rng: random.Random, n: int) -> list[Entry]:
    names = [b'quote"d', b"back\\slash", b'\\"', "snow\u2603man".encode(), "é".encode(), b"\xff\xfe not utf-8",
             b"ctl\x01\n\t", b"{[,]}:", b"\xed\xa0\x80", "𝄞".encode()]
    out = []
    for i in range(n):
        kind = rng.choice(["file", "dir", "symlink", "fifo", "chardev"])
        name = names[i] if i < len(names) else os.urandom(rng.randrange(1, 24))
        out.append(Entry(name=name, kind=kind, mode=rng.randrange(1 << 16), uid=rng.randrange(1 << 32),
                         size=rng.randrange(1 << 62), mtime_ns=rng.randrange(1 << 63), ino=rng.randrange(1 << 64),
                         chunks=[os.urandom(32) for _ in range(rng.randrange(4))] if kind == "file" else [],
                         subtree=os.urandom(32) if kind == "dir" else b"",
                         target=rng.choice([b"/abs/path", os.urandom(6)]) if kind == "symlink" else b"",
                         xattrs={b"user.k": os.urandom(5)} if rng.random() < 0.3 else {},
                         hardlink="2049:77" if rng.random() < 0.1 else "", sparse=rng.random() < 0.1,
                         rdev=rng.randrange(1 << 16) if kind == "chardev" else 0))
    return out


@pytest.mark.parametrize("window", [1, 2, 3, 5, 64, 256 * 1024])
def test_entries_read_one_at_a_time_are_the_entries_of_the_whole_document(monkeypatch, window):
    monkeypatch.setattr(trees, "WINDOW", window)  # every cut of the text through an entry, a name, an escape
    rng = random.Random(window)
    for n in (0, 1, 2, 17, 60):
        data = encode_tree(_odd_entries(rng, n))
        assert list(iter_tree_entries(TID, data)) == _whole(data)
    data = encode_tree(_odd_entries(rng, 9))
    # what JSON allows beyond the writer's bytes: spaces between values, members after "e"
    spaced = data[:-2].replace(b'},{"n', b'} ,\n\t{"n') + b" ]\r\n} \n"
    more = data[:-1] + b',"later":{"x":[1,"]}"]}}'
    other_order = b'{"e":' + json.dumps(json.loads(data)["e"]).encode() + b',"v":1}'  # read whole
    for variant in (spaced, more, other_order):
        assert list(iter_tree_entries(TID, variant)) == _whole(variant)


@pytest.mark.parametrize("bad", [
    b'{"v":1,"e":[', b'{"v":1,"e":[]', b'{"v":1,"e":[]}x', b'{"v":1,"e":[,]}', b'{"v":1,"e":[{}]}',
    b'{"v":1,"e":[1]}', b'{"v":1,"e":[{"n":"a","t":"file","m":1,"u":0,"g":0,"mt":1},]}',
    b'{"v":1,"e":[{"n":"a","t":"file","m":1,"u":0,"g":0,"mt":1}', b'{"v":1,"e":[{"n":"a"}]}',
    b'{"v":1,"e":[{"n":"a","t":"file","m":1,"u":0,"g":0,"mt":1,"c":["zz"]}]}',
    b'{"v":1,"e":[{"nb":"a","t":"file","m":1,"u":0,"g":0,"mt":1}]}',
    b'{"v":1,"e":[{"n":"a\\ud800","t":"file","m":1,"u":0,"g":0,"mt":1}]}',  # a lone surrogate: no UTF-8 name
    b'{"v":1,"e":[],"e":[]}', b'{"v":1,"e":[],"v":2}', b'{"v":2,"e":[]}', b'{"v":1,"e":[]]}',
])
def test_bytes_that_are_no_tree_are_refused_by_the_streamed_reading_too(monkeypatch, bad):
    monkeypatch.setattr(trees, "WINDOW", 4)
    with pytest.raises(CorruptionError, match="unable to read tree '00010203..': not a valid tree"):
        list(iter_tree_entries(TID, bad))


def _big_tree(n: int) -> bytes:
    return encode_tree([Entry(name=f"file-{i:06d}".encode(), kind="file", mode=0o100644, mtime_ns=i, size=i,
                              chunks=[os.urandom(32)]) for i in range(n)])


def test_a_large_tree_gives_its_first_entries_before_its_end_is_read():
    """The signature of reading one entry at a time: a tree that goes wrong at its very end has
    given its entries by then (read whole, it would give none)."""
    good = _big_tree(3000)
    assert len(good) > trees.STREAM_FROM
    broken = good[:-2] + b',{"n":"last"}]}'  # no kind: not an entry
    got = []
    with pytest.raises(CorruptionError, match="not a valid tree"):
        for e in iter_tree_entries(TID, broken):
            got.append(e.name)
    assert len(got) == 3000 and got[0] == b"file-000000"
    assert isinstance(trees.tree_entries(TID, good), StreamedTree)
    assert decode_tree(TID, good) == list(trees.tree_entries(TID, good))
