"""Restore never writes outside its target, whatever the stream or the repository says."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import pytest
from cairn.fsio.records import Data, EntryMeta, Failed
from cairn.fsio.writer import TreeWriter
from cairn.store.content.packs import TYPE_DATA, TYPE_TREE
from cairn.store.model import SetStats
from cairn.store.snapshots.sets import encode_set
from cairn.store.snapshots.trees import Entry, encode_tree
from storekit import listing


@pytest.fixture
def outside(tmp_path):
    """A directory next to the target holding a file an attacker would like to reach."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"do not touch")
    return d


def run(target, records, overwrite=False):
    w = TreeWriter(str(target), overwrite=overwrite)
    for r in records:
        w.apply(r)
    return w.finish()


def file_records(path: bytes, data: bytes = b"pwned") -> list:
    return [EntryMeta(path=path, kind="file", mode=0o644, size=len(data)), Data(data)]


@pytest.mark.parametrize("path", [b"../evil", b"a/../../evil", b"..", b"./../evil", b"a/./b", b"a//b", b"",
                                  b"/abs-evil", b"a/b/..", b"nul\0byte"])
def test_unsafe_paths_are_refused(tmp_path, outside, path):
    target = tmp_path / "target"
    if path.startswith(b"/"):
        path = os.fsencode(tmp_path / "abs-evil")
    before = listing(str(tmp_path))
    records = [EntryMeta(path=b"a", kind="dir", mode=0o755)] + file_records(path) + file_records(b"ok")
    stats = run(target, records)
    assert len(stats.errors) == 1 and "unsafe path" in stats.errors[0]
    after = listing(str(tmp_path))
    new = {p for p in after if p not in before}
    assert new == {"target", "target/a", "target/ok"}, new
    assert (target / "ok").read_bytes() == b"pwned"
    assert (outside / "secret").read_bytes() == b"do not touch"


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo", "hardlink"])
def test_no_entry_reaches_through_a_symlink_restored_earlier(tmp_path, outside, kind):
    target = tmp_path / "target"
    (target / "x").mkdir(parents=True)  # not empty: this also covers an overwrite restore
    (target / "x" / "f").write_bytes(b"mine")
    before_outside = listing(str(outside))
    rec = EntryMeta(path=b"link/thing", kind=kind, mode=0o644, target=b"whatever", link_to=b"x/f")
    records = [EntryMeta(path=b"link", kind="symlink", target=os.fsencode(outside)), rec]
    if kind == "file":
        records.append(Data(b"pwned"))
    stats = run(target, records, overwrite=True)
    assert len(stats.errors) == 1 and "link" in stats.errors[0], stats.errors
    assert listing(str(outside)) == before_outside
    assert os.readlink(target / "link") == str(outside)


def test_hardlink_source_through_a_symlink_is_refused(tmp_path, outside):
    target = tmp_path / "target"
    records = [EntryMeta(path=b"link", kind="symlink", target=os.fsencode(outside)),
               EntryMeta(path=b"grab", kind="hardlink", link_to=b"link/secret")]
    stats = run(target, records)
    assert len(stats.errors) == 1, stats.errors
    assert not os.path.lexists(target / "grab")
    assert os.stat(outside / "secret").st_nlink == 1


def test_hardlink_source_outside_the_target_is_refused(tmp_path, outside):
    target = tmp_path / "target"
    stats = run(target, [EntryMeta(path=b"grab", kind="hardlink", link_to=b"../outside/secret")])
    assert len(stats.errors) == 1
    assert os.stat(outside / "secret").st_nlink == 1


def test_file_over_an_existing_symlink_does_not_write_through_it(tmp_path, outside):
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside / "secret", target / "victim")
    stats = run(target, file_records(b"victim"), overwrite=True)
    assert stats.errors == []
    assert (outside / "secret").read_bytes() == b"do not touch"
    assert (target / "victim").read_bytes() == b"pwned" and not os.path.islink(target / "victim")


def test_file_over_a_symlink_restored_earlier_does_not_write_through_it(tmp_path, outside):
    target = tmp_path / "target"
    records = [EntryMeta(path=b"victim", kind="symlink", target=os.fsencode(outside / "secret"))]
    stats = run(target, records + file_records(b"victim"))
    assert len(stats.errors) == 1
    assert (outside / "secret").read_bytes() == b"do not touch"
    assert os.path.islink(target / "victim")


def test_pre_existing_symlinked_directory_in_target_is_not_followed(tmp_path, outside):
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "dir")
    records = [EntryMeta(path=b"dir", kind="dir", mode=0o755)] + file_records(b"dir/secret")
    stats = run(target, records, overwrite=True)
    assert (outside / "secret").read_bytes() == b"do not touch"
    assert os.path.isdir(target / "dir") and not os.path.islink(target / "dir")
    assert (target / "dir" / "secret").read_bytes() == b"pwned"
    assert stats.errors == []


def test_failed_record_removes_only_the_open_file(tmp_path):
    target = tmp_path / "target"
    records = file_records(b"good") + file_records(b"bad") + [Failed("chunk unreadable")] + file_records(b"next")
    stats = run(target, records)
    assert sorted(os.listdir(target)) == ["good", "next"]
    assert stats.errors == ["unable to restore 'bad': chunk unreadable"]


# -- crafted repositories ---------------------------------------------------------------


def crafted_set(repo, entries_by_dir):
    """Store trees given as {dir: [Entry]} ('' is the root; dirs link by name) and a set naming them."""
    writer = repo.writer()
    ids: dict[str, bytes] = {}
    for d in sorted(entries_by_dir, key=lambda k: -k.count("/") - (k != "")):
        entries = entries_by_dir[d]
        for e in entries:
            if e.kind == "dir":
                e.subtree = ids[(d + "/" if d else "") + os.fsdecode(e.name)]
            if e.kind == "file" and not e.chunks and e.size:
                e.chunks = [writer.put_data(TYPE_DATA, b"x" * e.size)]
        ids[d] = writer.put_data(TYPE_TREE, encode_tree(entries))
    writer.finish()
    now = time.time()
    set_id, data = encode_set({
        "source": "crafted", "level": "full", "requested_level": "full", "base": None, "time_start": now,
        "time_end": now, "hostname": "h", "paths": ["/x"], "tree": ids[""].hex(), "stats": asdict(SetStats()),
        "tags": [], "note": "", "extra": {}})
    repo.backend.put("sets", set_id, data)
    return repo.get_set(set_id)


def test_crafted_tree_with_unsafe_names_is_refused(repo, tmp_path, outside):
    f = lambda name: Entry(name=name, kind="file", mode=0o644, size=5)  # noqa: E731
    s = crafted_set(repo, {
        "": [f(b"ok-first"), f(b".."), f(b"."), f(b""), f(b"../outside/secret"), f(b"sub/evil"), f(b"a\0b"),
             Entry(name=b"sub", kind="dir", mode=0o755), f(b"zz-last")],
        "sub": [f(b"inner"), f(b"../../outside/secret")],
    })
    target = tmp_path / "target"
    before = listing(str(tmp_path))
    stats = repo.restore(s, str(target))
    assert (outside / "secret").read_bytes() == b"do not touch"
    new = {p for p in listing(str(tmp_path)) if p not in before and not p.startswith("repo/")}  # repo/: its lock
    assert new == {"target", "target/ok-first", "target/sub", "target/sub/inner", "target/zz-last"}, new
    assert len(stats.errors) == 7, stats.errors
    assert all("unsafe" in e for e in stats.errors)
    assert stats.files == 3


def test_crafted_tree_reaching_through_its_own_symlink(repo, tmp_path, outside):
    s = crafted_set(repo, {
        "": [Entry(name=b"link", kind="symlink", mode=0o777, target=os.fsencode(outside)),
             Entry(name=b"link", kind="dir", mode=0o755)],
        "link": [Entry(name=b"secret", kind="file", mode=0o644, size=5),
                 Entry(name=b"planted", kind="file", mode=0o644, size=5)],
    })
    stats = repo.restore(s, str(tmp_path / "target"))
    assert stats.errors, "entries through the symlink must be refused"
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_bytes() == b"do not touch"


def _swap_for_link(directory, outside) -> None:
    """What another user who may write in the target does while a root restore runs: a
    directory the restore made (or checked) is replaced by a symbolic link to elsewhere."""
    os.rename(directory, str(directory) + ".moved")
    os.symlink(outside, directory)


@pytest.mark.parametrize("resolve", ["openat2", "walk"])
@pytest.mark.parametrize("parallel", [False, True])
def test_a_directory_swapped_for_a_link_after_the_restore_made_it_is_not_written_through(tmp_path, outside,
                                                                                        parallel, resolve,
                                                                                        monkeypatch):
    """The restore made d/ itself; someone swaps it for a link to a directory outside before
    d/'s entries come: none of them may be written there (a check cached when d/ was made, or
    an lstat followed by a use of the path, would let them through). The same holds where
    openat2 is missing and each component is opened in turn."""
    from cairn.fsio import beneath
    from cairn.fsio.writer import ParallelTreeWriter

    monkeypatch.setattr(beneath, "_openat2_works", resolve == "openat2")

    target = tmp_path / "target"
    w = (ParallelTreeWriter if parallel else TreeWriter)(str(target))
    w.apply(EntryMeta(path=b"d", kind="dir", mode=0o755))
    w.apply(EntryMeta(path=b"d/sub", kind="dir", mode=0o755))
    _swap_for_link(target / "d", outside)
    for name in (b"d/secret", b"d/new", b"d/sub/deeper"):
        for r in file_records(name):
            w.apply(r)
    w.apply(EntryMeta(path=b"d/fifo", kind="fifo", mode=0o644))
    w.apply(EntryMeta(path=b"d/link", kind="symlink", target=b"x"))
    stats = w.finish()
    assert (outside / "secret").read_bytes() == b"do not touch"
    assert sorted(os.listdir(outside)) == ["secret"], os.listdir(outside)
    assert len(stats.errors) >= 5 and all("not a directory" in e.lower() for e in stats.errors), stats.errors


@pytest.mark.parametrize("delete", [False, True])
def test_a_delta_whose_parent_is_swapped_for_a_link_while_it_runs_touches_nothing_outside(tmp_path, outside,
                                                                                         delete):
    """The delta planned against a real d/; while its chunks come, d/ becomes a link to a
    directory outside holding files of the same names: nothing there is written, made,
    renamed or deleted."""
    import blake3
    from cairn.fsio.delta import mend

    target = tmp_path / "target"
    (target / "d").mkdir(parents=True)
    entries = [EntryMeta(path=b"d", kind="dir", mode=0o40755, mtime_ns=10**18)]
    chunks = {}
    for i in range(6):
        data = os.urandom(2000)
        cid = blake3.blake3(data).digest()
        chunks[cid] = data
        entries.append(EntryMeta(path=b"d/f%d" % i, kind="file", mode=0o100644, mtime_ns=10**18, size=len(data),
                                 chunks=(cid,), chunk_sizes=(len(data),)))
        if i % 2:
            (target / "d" / f"f{i}").write_bytes(b"damaged")
    (target / "d" / "extra").write_bytes(b"not in the set")
    entries.append(EntryMeta(path=b"d/sym", kind="symlink", target=b"there"))
    for i in range(6):
        (outside / f"f{i}").write_bytes(b"outside, keep")
    (outside / "extra").write_bytes(b"outside, keep")
    before = {n: (outside / n).read_bytes() for n in os.listdir(outside)}

    def source(ids):
        _swap_for_link(target / "d", outside)  # after the plan and the structure, before the content
        for cid in ids:
            yield cid, chunks[cid]

    p, st = mend(str(target), entries, source, delete=delete, extras_under=[b""])
    assert {n: (outside / n).read_bytes() for n in os.listdir(outside)} == before
    assert st.errors, "the writes that could not be made are named"
    assert not [n for n in os.listdir(outside) if n.startswith(".cairn-delta-")]
