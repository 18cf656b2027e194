"""A large tree is read one entry at a time (store/snapshots/trees.py): its entries come out as
its bytes are scanned, read exactly as `json.loads` reads the whole document, and a listing, a
restore or a verify of a directory of many entries holds its tree's bytes, not its entries."""

from __future__ import annotations

import json
import os
import random
import time
import tracemalloc
from dataclasses import asdict

import pytest
from cairn.store.content.packs import TYPE_TREE
from cairn.store.errors import CorruptionError
from cairn.store.model import SetStats
from cairn.store.snapshots import trees
from cairn.store.snapshots.sets import encode_set
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
    assert decode_tree(TID, good) == list(trees.tree_entries(TID, good)) == _whole(good)
    with pytest.raises(CorruptionError, match="not a valid tree"):
        decode_tree(TID, broken)


# -- through a repository ---------------------------------------------------------------


def _set_with(repo, big: bytes, *, small: list[Entry] | None = None):
    """A set whose root holds 'big' (tree bytes `big`, stored as given) and 'small' (a directory of
    `small` entries, or none)."""
    writer = repo.writer()
    big_id = writer.put_data(TYPE_TREE, big)
    root = [Entry(name=b"big", kind="dir", mode=0o40755, subtree=big_id)]
    if small is not None:
        root.append(Entry(name=b"small", kind="dir", mode=0o40755,
                          subtree=writer.put_data(TYPE_TREE, encode_tree(small))))
    root_id = writer.put_data(TYPE_TREE, encode_tree(root))
    writer.finish()
    now = time.time()
    set_id, data = encode_set({
        "source": "crafted", "level": "full", "requested_level": "full", "base": None, "time_start": now,
        "time_end": now, "hostname": "h", "paths": ["/x"], "tree": root_id.hex(), "stats": asdict(SetStats()),
        "tags": [], "note": "", "extra": {}})
    repo.backend.put("sets", set_id, data)
    return repo.get_set(set_id), big_id


def test_listing_a_large_directory_holds_its_tree_bytes_not_its_entries(repo):
    n = 30_000
    s, big_id = _set_with(repo, _big_tree(n))
    size = repo.index.get(big_id).raw_len
    tracemalloc.start()
    try:
        listed = 0
        for e in repo.iter_tree(s, "big"):
            listed += 1
            assert e.path == f"big/file-{listed - 1:06d}"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert listed == n
    # read whole, its JSON document and its entries were held at once: about 8 times its bytes
    assert peak < 3 * size, f"listing {n} entries peaked at {peak / 1e6:.1f} MB for a tree of {size / 1e6:.1f} MB"
    assert big_id not in repo._trees  # never kept decoded either


def test_a_large_tree_that_breaks_part_way_fails_its_listing_and_its_restore_before_its_entries(repo, tmp_path):
    good = _big_tree(3000)
    small = [Entry(name=b"kept", kind="file", mode=0o100644)]
    s, _ = _set_with(repo, good[:-2] + b',{"n":"last"}]}', small=small)
    listing = repo.iter_tree(s, "big")
    assert next(listing).path == "big/file-000000"
    with pytest.raises(CorruptionError, match="not a valid tree"):
        list(listing)
    problems: list[str] = []
    everything = [e.path for e in repo.iter_tree(s, "", recursive=True, problems=problems)]
    assert everything[-2:] == ["small", "small/kept"]
    assert len(problems) == 1 and problems[0].startswith("unable to list 'big/': unable to read tree")

    stats = repo.restore(s, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out" / "big") == []  # none of it, although its first 3000 entries read well
    assert (tmp_path / "out" / "small" / "kept").exists()
    assert len(stats.errors) == 1 and "unable to restore the contents of 'big/'" in stats.errors[0]

    report = repo.check()
    assert any("tree is damaged" in p.message and "not a valid tree" in p.message for p in report.errors)


def test_unsafe_names_in_a_large_tree_are_refused_before_any_file_of_it_is_open(repo, tmp_path):
    entries = [Entry(name=f"f{i:05d}".encode(), kind="file", mode=0o100644) for i in range(4000)]
    entries += [Entry(name=b"..", kind="file", mode=0o100644), Entry(name=b"zz/evil", kind="file", mode=0o100644)]
    data = encode_tree(entries)
    assert len(data) > trees.STREAM_FROM
    s, _ = _set_with(repo, data)
    stats = repo.restore(s, str(tmp_path / "out"))
    assert len(os.listdir(tmp_path / "out" / "big")) == 4000  # the last file was not taken for a refused name
    assert len(stats.errors) == 2 and all("refusing unsafe entry name" in e for e in stats.errors)
