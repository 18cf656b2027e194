"""A file entry recording more bytes than its chunks hold (older code kept the size a file had
after a read it grew during): the store restores the bytes stored and says so, a manifest
lists that size, and the notice crosses the wire like the records it comes with."""

from __future__ import annotations

from cairn.fsio.records import EntryMeta, Notice
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.wire import add_record, record_of
from cairn.store.content.packs import TYPE_TREE
from cairn.store.snapshots.sets import encode_set, set_fields
from cairn.store.snapshots.trees import encode_tree
from storekit import backup, write_random


def _grown(repo, s, name: bytes, by: int):
    """Set `s` again with file `name` recording `by` bytes more than it holds."""
    entries = repo.load_tree(bytes.fromhex(s.tree))
    next(e for e in entries if e.name == name).size += by
    writer = repo.writer()
    tree = writer.put_data(TYPE_TREE, encode_tree(entries))
    writer.finish()
    fields = set_fields(s)
    fields.update(tree=tree.hex(), time_start=s.time_start + 1)
    set_id, data = encode_set(fields)
    repo.backend.put("sets", set_id, data)
    return next(x for x in repo.list_sets() if x.id == set_id)


def test_restore_writes_what_is_stored_and_says_so(repo, src, tmp_path, rng):
    data = write_random(src / "grown.bin", 70_000, rng)
    s = _grown(repo, backup(repo, src), b"grown.bin", 1000)

    stats = repo.restore(s, str(tmp_path / "out"))
    assert stats.errors == () and (tmp_path / "out" / "grown.bin").read_bytes() == data
    (notice,) = stats.notices
    assert notice.startswith("'grown.bin' is restored with the 70000 bytes its set holds, not the 71000"), notice
    (meta,) = [r for r in repo.restore_stream(s, manifest=True) if isinstance(r, EntryMeta) and r.kind == "file"]
    assert meta.size == sum(meta.chunk_sizes) == 70_000

    report = repo.check()
    (err,) = report.errors
    assert err.message.startswith("file records 71000 bytes but its chunks hold 70000") and err.paths == ("grown.bin",)
    assert err.sets == (s.id,) and "a full backup of its source stores it whole" in report.advice


def test_a_notice_crosses_the_wire():
    batch = pb.RestoreBatch()
    add_record(batch, Notice("'a' is restored with the 1 bytes its set holds"))
    assert record_of(batch.records[0]) == Notice("'a' is restored with the 1 bytes its set holds")
