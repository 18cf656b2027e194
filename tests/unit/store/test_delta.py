"""Delta-compressed attachments: database files rewritten in place cost only their changes."""

from __future__ import annotations

import os

import pytest
from cairn.store.content.packs import CODEC_ZSTD_REF
from cairn.store.model import BackupRequest, PrunePolicy
from storekit import assert_same_tree

PAGE = 8192
MIB = 1024 * 1024


def page_file(path, rng, pages: int) -> None:
    """A relation-like file: pages of compressible rows with some random bytes in each."""
    with open(path, "wb") as f:
        for p in range(pages):
            row = b"%08d|" % p + rng.randbytes(40).hex().encode() + b" " * 300
            f.write((row * (PAGE // len(row) + 1))[:PAGE])


def touch_pages(path, rng, pages: list[int]) -> None:
    """Rewrite 100 bytes inside each given page, in place (as PostgreSQL does)."""
    with open(path, "r+b") as f:
        for p in pages:
            f.seek(p * PAGE + 1000)
            f.write(rng.randbytes(100))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))


def take(repo, files_dir, db_dir, level: str):
    req = BackupRequest(source="app", paths=(str(files_dir),), level=level)
    with repo.session(req) as sess:
        sess.attach("db:main", str(db_dir))
        return sess.commit()


def setup_db(tmp_path, rng):
    files, db = tmp_path / "files", tmp_path / "db"
    (db / "base").mkdir(parents=True)
    files.mkdir()
    (files / "a.txt").write_text("hello")
    page_file(db / "base" / "rel", rng, 512)  # 4 MiB
    old = os.stat(db / "base" / "rel").st_mtime_ns - 10_000_000_000
    os.utime(db / "base" / "rel", ns=(old, old))
    return files, db


def delta_blobs(repo) -> list[bytes]:
    return [bid for bid, loc in repo.index.items() if loc.codec == CODEC_ZSTD_REF]


def test_incremental_of_an_attachment_stores_only_changed_pages(repo, tmp_path, rng):
    files, db = setup_db(tmp_path, rng)
    full = take(repo, files, db, "full")
    assert full.attachments["db:main"]["files"] == 1
    touch_pages(db / "base" / "rel", rng, [3, 200, 201, 400])  # chunks 0, 1 and 3 of four 1 MiB chunks
    inc = take(repo, files, db, "incremental")
    assert inc.base == full.id and inc.attachments["db:main"]["modified"] == 1
    assert inc.stats.chunks_added == 5  # three data chunks, the trees of db/ and db/base/
    assert inc.stats.bytes_added < 16 * 1024, inc.stats.bytes_added
    assert len(delta_blobs(repo)) == 3
    out = tmp_path / "out"
    stats = repo.restore(inc, str(out), attachment="db:main")
    assert stats.errors == ()
    assert (out / "base" / "rel").read_bytes() == (db / "base" / "rel").read_bytes()
    assert repo.check(read_data=True).ok


def test_delta_references_stay_one_level_deep_and_survive_prune(repo, tmp_path, rng):
    files, db = setup_db(tmp_path, rng)
    take(repo, files, db, "full")
    touch_pages(db / "base" / "rel", rng, [5])
    take(repo, files, db, "incremental")
    touch_pages(db / "base" / "rel", rng, [6])
    inc2 = take(repo, files, db, "incremental")
    for bid in delta_blobs(repo):
        ref = repo.reader.reference_of(bid)
        assert repo.reader.reference_of(ref) is None  # a reference is never itself a delta
    expect = (db / "base" / "rel").read_bytes()
    report = repo.prune(PrunePolicy(keep_full=0, keep_incremental=1))
    assert report.forgotten and inc2.id in report.kept
    assert repo.check(read_data=True).ok
    out = tmp_path / "out"
    assert repo.restore(repo.get_set(inc2.id), str(out), attachment="db:main").errors == ()
    assert (out / "base" / "rel").read_bytes() == expect


def test_damaged_reference_is_reported_for_the_delta_set(repo, tmp_path, rng):
    files, db = setup_db(tmp_path, rng)
    full = take(repo, files, db, "full")
    touch_pages(db / "base" / "rel", rng, [10])
    inc = take(repo, files, db, "incremental")
    ref = repo.reader.reference_of(delta_blobs(repo)[0])
    pack = repo.index.get(ref).pack
    path = os.path.join(repo.backend.location(), "packs", pack[:2], pack)
    with open(path, "r+b") as f:
        f.seek(repo.index.get(ref).offset + 10)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    report = repo.check(read_data=True)
    assert not report.ok
    hurt = {s for p in report.errors for s in p.sets}
    assert {full.id, inc.id} <= hurt
    assert any("db:main:base/rel" in path for p in report.errors for path in p.paths)
    out = tmp_path / "out"
    stats = repo.restore(inc, str(out), attachment="db:main")
    assert stats.errors and "base/rel" in stats.errors[0]


def test_plain_restore_of_the_set_leaves_the_attachment_out(repo, tmp_path, rng):
    files, db = setup_db(tmp_path, rng)
    s = take(repo, files, db, "full")
    out = tmp_path / "out"
    assert repo.restore(s, str(out)).errors == ()
    assert_same_tree(files, out)


def test_prune_keeps_a_reference_that_only_a_delta_needs(repo, tmp_path, rng):
    """The full's version of a changed chunk is referenced by no tree after the full is
    forgotten, only by the incremental's delta blob: prune must keep it."""
    files, db = tmp_path / "files", tmp_path / "db"
    files.mkdir()
    db.mkdir()
    (files / "a.txt").write_text("hello")
    page_file(db / "rel", rng, MIB // PAGE)  # exactly one 1 MiB chunk
    old = os.stat(db / "rel").st_mtime_ns - 10_000_000_000
    os.utime(db / "rel", ns=(old, old))
    full = take(repo, files, db, "full")
    touch_pages(db / "rel", rng, [7])
    inc = take(repo, files, db, "incremental")
    (delta,) = delta_blobs(repo)
    ref = repo.reader.reference_of(delta)
    expect = (db / "rel").read_bytes()
    report = repo.prune(PrunePolicy(keep_full=0, keep_incremental=1))
    assert report.forgotten == (full.id,)
    assert ref in repo.index, "prune dropped the reference of a live delta blob"
    assert repo.check(read_data=True).ok
    out = tmp_path / "out"
    assert repo.restore(repo.get_set(inc.id), str(out), attachment="db:main").errors == ()
    assert (out / "rel").read_bytes() == expect


def test_restore_of_an_attachment_measures_progress_against_the_attachment(repo, tmp_path, rng):
    files, db = setup_db(tmp_path, rng)
    (files / "big.bin").write_bytes(rng.randbytes(3 << 20))
    full = take(repo, files, db, "full")
    seen = []
    repo.restore(full, str(tmp_path / "out"), attachment="db:main", progress=seen.append)
    assert seen and {(p.files_total, p.bytes_total) for p in seen} == {(1, 4 << 20)}


def delta_history(repo, root, rng):
    """A full and an incremental of a new attachment under `root` whose four 1 MiB chunks all
    changed: (full, incremental, the incremental's delta blobs, the attachment's file)."""
    root.mkdir()
    files, db = setup_db(root, rng)
    before = set(delta_blobs(repo))
    full = take(repo, files, db, "full")
    (files / "a.txt").write_text("changed")  # nothing of the full's stays live but the references
    touch_pages(db / "base" / "rel", rng, [3, 200, 300, 400])  # every 1 MiB chunk becomes a delta
    inc = take(repo, files, db, "incremental")
    deltas = sorted(set(delta_blobs(repo)) - before)
    assert len(deltas) == 4
    return full, inc, deltas, (db / "base" / "rel").read_bytes()


def plain_copies(repo, deltas, rng) -> str:
    """Plain copies of `deltas` in a new pack, with dead weight beside them (a random blob that
    also gives the pack, and its index file, a new name each time); returns the pack."""
    from cairn.store.content.blobs import blob_id
    from cairn.store.content.packs import TYPE_DATA

    packs = set(repo.backend.list("packs"))
    writer = repo.writer()
    for d in deltas:
        writer.put_forced(d, TYPE_DATA, repo.reader.read(d))
    junk = rng.randbytes(30_000)
    writer.put_forced(repo.key.blob_id(junk) if repo.key else blob_id(junk), TYPE_DATA, junk)
    writer.finish()
    (plain_pack,) = set(repo.backend.list("packs")) - packs
    return plain_pack


def test_collect_never_keeps_a_delta_copy_whose_reference_it_frees(repo, tmp_path, rng):
    """A live blob with two marked copies: a plain one, which the index names, in a pack that
    also holds dead data, and a delta-coded one in a pack that must stay for its other blobs.
    The delta copy's reference is live only through that copy. Keeping the delta copy's pack
    (the leaner one) and deleting the plain copy's while the reference's pack goes would leave
    the blob unreadable."""
    from cairn.store.maintenance.prune import Marker, encode_marker

    name = "cd" * 16
    for attempt in range(40):  # until the loaded index names the plain copies (index file names decide)
        full, inc, deltas, expect = delta_history(repo, tmp_path / f"a{attempt}", rng)
        (ref_pack,) = {repo.index.get(repo.reader.reference_of(d)).pack for d in deltas}
        (delta_pack,) = {repo.index.get(d).pack for d in deltas}
        repo.backend.delete("sets", full.id)  # forgotten: its packs hold only the references now
        plain_pack = plain_copies(repo, deltas, rng)
        marked = frozenset({ref_pack, delta_pack, plain_pack})
        repo.backend.put("gc", name, encode_marker(Marker(name, 0.0, marked, frozenset())))
        repo.load_index()
        if all(repo.index.get(d).pack == plain_pack for d in deltas):
            break
        repo.backend.delete("gc", name)  # the other order: this history stays, a new one is drawn
        repo.load_index()
    else:
        pytest.fail("the index never named the plain copies")
    repo.prune(PrunePolicy(), grace=0)
    report = repo.check(read_data=True)
    assert report.ok, [p.message for p in report.errors]
    out = tmp_path / "out"
    assert repo.restore(repo.get_set(inc.id), str(out), attachment="db:main").errors == ()
    assert (out / "base" / "rel").read_bytes() == expect


def test_the_index_prune_writes_names_a_plain_copy_over_a_delta_copy(repo, tmp_path, rng):
    """Where both copies of a blob stay, the index collection writes names the plain one, which
    needs no reference (so a reference only that delta copy used can go), whichever index file
    it read first."""
    from cairn.store.maintenance.prune import Pruner

    for attempt in range(40):  # until the delta copies' index file is read first (names decide)
        _full, _inc, deltas, _expect = delta_history(repo, tmp_path / f"a{attempt}", rng)
        (delta_pack,) = {repo.index.get(d).pack for d in deltas}
        indexes = set(repo.backend.list("index"))
        plain_pack = plain_copies(repo, deltas, rng)
        (plain_file,) = set(repo.backend.list("index")) - indexes
        delta_file = next(n for n, packs in repo.stored_index_files(sorted(indexes)) if delta_pack in packs)
        if delta_file < plain_file:
            break
    else:
        pytest.fail("the plain copies' index file never came second")
    Pruner(repo)._reindex(set())
    repo.load_index()
    assert {repo.index.get(d).pack for d in deltas} == {plain_pack}
    assert all(repo.index.get(d).codec != CODEC_ZSTD_REF for d in deltas)
    assert repo.check(read_data=True).ok


def test_one_prune_frees_a_reference_whose_only_delta_copy_it_deleted(repo, tmp_path, rng):
    """A blob stored twice, plainly and as a delta, where the index names the plain copy: the
    delta copy's pack goes (its blobs are copies), and with it the last use of the delta's
    reference. The same prune (no grace period) frees the reference too; a second prune finds
    nothing more."""
    for attempt in range(40):  # until the loaded index names the plain copies (index file names decide)
        full, inc, deltas, expect = delta_history(repo, tmp_path / f"a{attempt}", rng)
        refs = {repo.reader.reference_of(d) for d in deltas}
        plain_copies(repo, deltas, rng)
        repo.load_index()
        if all(repo.index.get(d).codec != CODEC_ZSTD_REF for d in deltas):
            break
    else:
        pytest.fail("the index never named the plain copies")
    for s in repo.list_sets():  # every full is forgotten: the references are needed by nothing else
        if s.level == "full":
            repo.backend.delete("sets", s.id)
    repo.prune(PrunePolicy(), grace=0)
    repo.load_index()
    assert not [r for r in refs if r in repo.index], "a reference nothing uses stayed indexed"
    packs = set(repo.backend.list("packs"))
    repo.prune(PrunePolicy(), grace=0)
    assert set(repo.backend.list("packs")) == packs
    report = repo.check(read_data=True)
    assert report.ok and report.warnings == (), [p.message for p in report.errors + report.warnings]
    out = tmp_path / "out"
    assert repo.restore(repo.get_set(inc.id), str(out), attachment="db:main").errors == ()
    assert (out / "base" / "rel").read_bytes() == expect


def test_a_delta_against_a_blob_also_stored_as_a_delta_stays_readable(repo, tmp_path, rng):
    """Two sessions at once (two sources of one database cluster) may each store a changed chunk:
    one as a delta, the other plainly. A later set compresses its chunk against the plain copy
    and names that blob as its reference. However the index then learns of the delta copy again
    (a session that commits it later, index files loaded in the other order), it keeps naming
    the plain copy: a reference is never a delta, and the later set stays readable."""
    from cairn.store.content.packs import PackEntry

    files, db = setup_db(tmp_path, rng)
    take(repo, files, db, "full")
    touch_pages(db / "base" / "rel", rng, [3, 200, 300, 400])
    inc = take(repo, files, db, "incremental")
    deltas = sorted(delta_blobs(repo))
    assert len(deltas) == 4
    delta_copies = {}
    for d in deltas:
        loc = repo.index.get(d)
        delta_copies.setdefault(loc.pack, []).append(
            PackEntry(d, loc.type, loc.codec, loc.raw_len, loc.stored_len, loc.offset))
    plain_copies(repo, deltas, rng)  # the other session's copies, learnt last: the index names them
    assert all(repo.index.get(d).codec != CODEC_ZSTD_REF for d in deltas)
    touch_pages(db / "base" / "rel", rng, [4, 201, 301, 401])
    later = take(repo, files, db, "incremental")
    assert later.base == inc.id
    assert {repo.reader.reference_of(b) for b in set(delta_blobs(repo)) - set(deltas)} == set(deltas)
    for pack, entries in delta_copies.items():  # the delta copies are learnt again
        repo.index.add_pack(pack, entries)
    expect = (db / "base" / "rel").read_bytes()
    out = tmp_path / "out"
    assert repo.restore(repo.get_set(later.id), str(out), attachment="db:main").errors == ()
    assert (out / "base" / "rel").read_bytes() == expect
    repo.load_index()  # and loaded from the index files, in whatever order their names give
    assert all(repo.index.get(d).codec != CODEC_ZSTD_REF for d in deltas)
    assert repo.check(read_data=True).ok


@pytest.mark.parametrize("order", ["plain first", "delta first"])
def test_the_index_names_a_plain_copy_over_a_delta_copy_in_either_order(order):
    from cairn.store.content.index import Index, IndexBuilder
    from cairn.store.content.packs import CODEC_ZSTD, TYPE_DATA, PackEntry

    bid = bytes(range(32))
    plain = ("p" * 64, [PackEntry(bid, TYPE_DATA, CODEC_ZSTD, 8192, 40, 8)])
    delta = ("d" * 64, [PackEntry(bid, TYPE_DATA, CODEC_ZSTD_REF, 8192, 70, 8)])
    adds = [plain, delta] if order == "plain first" else [delta, plain]
    index, builder = Index(), IndexBuilder()
    for pack, entries in adds:
        index.add_pack(pack, entries)
        builder.add_pack(pack, entries)
    for got in (index, builder.finish()):
        assert len(got) == 1
        assert got.get(bid).pack == "p" * 64 and got.get(bid).codec == CODEC_ZSTD


def test_a_missing_pack_only_a_delta_needs_is_an_error_naming_its_set(tmp_path, rng):
    """A pack holding only the reference of a later set's delta blob goes missing after the set
    that stored it plainly was forgotten: the later set needs it through the delta, so verify
    reports the pack as an error naming that set (it took such a pack for one no set needs, a
    warning, while the set's own finding failed the check)."""
    from cairn.store.content.repoconfig import RepoConfig
    from cairn.store.repository import Repository
    from cairn.store.storage.backend import LocalBackend

    path = str(tmp_path / "repo")
    Repository.init(LocalBackend(path), RepoConfig.new(pack_size=1024)).close()  # a pack per blob
    repo = Repository.open(LocalBackend(path))
    try:
        files, db = setup_db(tmp_path, rng)
        full = take(repo, files, db, "full")
        touch_pages(db / "base" / "rel", rng, [10])
        inc = take(repo, files, db, "incremental")
        repo.prune(PrunePolicy(forget=(full.id,)), grace=0)
        (delta,) = delta_blobs(repo)
        pack = repo.index.get(repo.reader.reference_of(delta)).pack
        assert all(loc.pack != pack for bid, loc in repo.index.items() if bid != repo.reader.reference_of(delta))
        os.unlink(os.path.join(path, "packs", pack[:2], pack))

        report = repo.check()
        assert not report.ok
        assert not any(pack[:8] in w.message for w in report.warnings), report.warnings
        (finding,) = [e for e in report.errors if e.object_id == pack]
        assert finding.message.startswith(f"pack '{pack[:8]}..' is indexed but missing: 1 set needs") \
            and finding.sets == (inc.id,), finding
    finally:
        repo.close()
