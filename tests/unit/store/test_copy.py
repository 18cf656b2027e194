"""Copying sets between repositories (store/copy.py): what the copy restores is what the source
restores, a rerun copies nothing, format 1 copies into format 2, WAL and delta blobs travel,
and a copy stopped at any write leaves the destination consistent and resumable."""

from __future__ import annotations

import os
import random

import pytest
from cairn.store.content import crypto
from cairn.store.content.packs import CODEC_ZSTD_REF
from cairn.store.copy import ORIGIN_KEY, copy_sets, open_destination
from cairn.store.errors import AlreadyExistsError, BackendError, FailedPreconditionError, WrongKeyError
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from cairn.store.storage.backend import KINDS, LocalBackend, MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import assert_same_tree, backup, make_tree, write_random

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
KEY = crypto.Secret("keyfile", bytes(range(32)))
WAL_A, WAL_B = "000000010000000000000003", "000000010000000000000004"


def _enc(backend=None, secret: crypto.Secret = KEY) -> Repository:
    return Repository.init(backend or MemoryBackend(), secret=secret, argon2=FAST)


def _same_restore(a: Repository, sa, b: Repository, sb, tmp_path, tag: str) -> None:
    ta, tb = tmp_path / f"{tag}-a", tmp_path / f"{tag}-b"
    assert a.restore(sa, str(ta)).errors == ()
    assert b.restore(sb, str(tb)).errors == ()
    assert_same_tree(str(ta), str(tb))
    for name in sa.attachments:
        ta2, tb2 = tmp_path / f"{tag}-a-{name[3:]}", tmp_path / f"{tag}-b-{name[3:]}"
        a.restore(sa, str(ta2), attachment=name)
        b.restore(sb, str(tb2), attachment=name)
        assert_same_tree(str(ta2), str(tb2))


def _objects(backend) -> dict[str, set[str]]:
    return {k: set(backend.list(k)) for k in KINDS}


def _history(repo: Repository, src, rng: random.Random) -> list:
    """Three sets of one source: full, incremental after edits, and one of another source."""
    make_tree(str(src), rng, files=12, max_size=300_000)
    write_random(str(src / "big.bin"), 2_500_000, rng)
    s1 = backup(repo, str(src))
    write_random(str(src / "a" / "new.bin"), 200_000, rng)
    os.unlink(src / "c" / sorted(os.listdir(src / "c"))[0]) if os.listdir(src / "c") else None
    s2 = backup(repo, str(src), level="incremental")
    s3 = backup(repo, str(src / "a"), source="other")
    return [s1, s2, s3]


def _wal_of(s) -> list[tuple[str, str]]:
    return [("", WAL_A), ("", WAL_B)] if s.source == "src" else []


def test_copy_restores_identical_and_rerun_copies_nothing(tmp_path, rng):
    src_repo, dst = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    sets = _history(src_repo, tmp_path / "src", rng)
    src_repo.put_wal(WAL_A, rng.randbytes(300_000))
    src_repo.put_wal(WAL_B, b"wal" * 1000)

    report = copy_sets(src_repo, dst, wal_for=_wal_of)
    assert [a for a, _ in report.copied] == [s.id for s in sorted(sets, key=lambda s: (s.time_end, s.id))]
    assert report.wal_copied == 2 and report.present == ()
    by_origin = {d.extra[ORIGIN_KEY]["set"]: d for d in dst.list_sets()}
    assert set(by_origin) == {s.id for s in sets}
    for i, s in enumerate(sets):
        d = by_origin[s.id]
        assert d.id != s.id and d.tree != s.tree  # keyed differently: every id is new
        assert (d.source, d.hostname, d.time_start, d.time_end, d.level) == (
            s.source, s.hostname, s.time_start, s.time_end, s.level)
        _same_restore(src_repo, s, dst, d, tmp_path, f"s{i}")
    assert by_origin[sets[1].id].base == by_origin[sets[0].id].id
    assert dst.get_wal(WAL_A) == src_repo.get_wal(WAL_A) and dst.get_wal(WAL_B) == src_repo.get_wal(WAL_B)
    # the incremental shared most of its tree with the full: carried, not read again
    inc = dict(report.copied)
    assert inc and report.bytes_read < 2 * sets[0].stats.bytes_total
    assert dst.check(read_data=True).ok

    before = _objects(dst.raw_backend)
    again = copy_sets(src_repo, dst, wal_for=_wal_of)
    assert again.copied == () and len(again.present) == 3 and again.wal_copied == 0
    assert _objects(dst.raw_backend) == before


def test_incremental_copy_reads_only_what_changed(tmp_path, rng):
    src_repo, dst = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    src = tmp_path / "src"
    make_tree(str(src), rng, files=20, max_size=200_000)
    write_random(str(src / "big.bin"), 3_000_000, rng)
    s1 = backup(src_repo, str(src))
    copy_sets(src_repo, dst)
    write_random(str(src / "c" / "fresh.bin"), 100_000, rng)
    s2 = backup(src_repo, str(src), level="incremental")
    report = copy_sets(src_repo, dst)  # a new handle's copier: it matches s1's copy first
    assert [a for a, _ in report.copied] == [s2.id] and [a for a, _ in report.present] == [s1.id]
    assert report.bytes_read < 1_000_000  # the new file (and nothing of big.bin)
    d2 = next(d for d in dst.list_sets() if d.extra[ORIGIN_KEY]["set"] == s2.id)
    _same_restore(src_repo, s2, dst, d2, tmp_path, "inc")


def test_version_1_copies_into_version_2(tmp_path, rng):
    v1 = Repository.init(LocalBackend(str(tmp_path / "v1")))
    assert v1.config.version == 1
    sets = _history(v1, tmp_path / "src", rng)
    v1.put_wal(WAL_A, b"segment" * 5000)
    listing_before = {k: sorted(v1.raw_backend.list(k)) for k in KINDS}
    dst = open_destination(str(tmp_path / "v2"), KEY)
    assert dst.config.version == 2 and dst.encrypted
    report = copy_sets(v1, dst, wal_for=lambda s: [("", WAL_A)])
    assert len(report.copied) == 3 and report.wal_copied == 1
    assert {k: sorted(v1.raw_backend.list(k)) for k in KINDS} == listing_before  # source untouched
    dst.close()
    reopened = Repository.open(LocalBackend(str(tmp_path / "v2")), secret=KEY)
    by_origin = {d.extra[ORIGIN_KEY]["set"]: d for d in reopened.list_sets()}
    for i, s in enumerate(sets):
        _same_restore(v1, s, reopened, by_origin[s.id], tmp_path, f"v{i}")
    assert reopened.get_wal(WAL_A) == b"segment" * 5000
    assert reopened.check(read_data=True).ok


def test_copy_of_a_copy_is_recognised(tmp_path, rng):
    a, b = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    c = _enc(secret=crypto.Secret("keyfile", os.urandom(32)))
    _history(a, tmp_path / "src", rng)
    copy_sets(a, b)
    assert len(copy_sets(b, c).copied) == 3
    assert copy_sets(a, c).copied == ()  # the originals are there already, as copies of copies
    assert copy_sets(b, a).copied == ()  # and back home they are the sets themselves


def test_delta_blobs_stay_deltas(tmp_path, rng):
    src_repo, dst = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    files, db = tmp_path / "files", tmp_path / "pgdata"
    files.mkdir()
    (files / "f").write_bytes(b"x")
    (db / "base").mkdir(parents=True)
    page = bytearray(rng.randbytes(3 * 1024 * 1024))
    (db / "base" / "rel").write_bytes(page)
    req = BackupRequest(source="db", paths=(str(files),))
    with src_repo.session(req) as sess:
        sess.attach("db:app", str(db))
        s1 = sess.commit()
    page[100:200] = b"y" * 100
    (db / "base" / "rel").write_bytes(page)
    os.utime(db / "base" / "rel", ns=(1, 1))
    with src_repo.session(BackupRequest(source="db", paths=(str(files),), level="incremental")) as sess:
        sess.attach("db:app", str(db))
        s2 = sess.commit()
    report = copy_sets(src_repo, dst)
    assert len(report.copied) == 2
    d2 = next(d for d in dst.list_sets() if d.extra[ORIGIN_KEY]["set"] == s2.id)
    codecs = [dst.index.get(c).codec for e in dst.load_tree(bytes.fromhex(d2.attachments["db:app"]["tree"]))
              if e.kind == "dir" for f in dst.load_tree(e.subtree) for c in f.chunks]
    assert CODEC_ZSTD_REF in codecs
    assert report.bytes_added < 4 * 1024 * 1024 + 200_000  # the second version cost only its delta
    _same_restore(src_repo, s2, dst, d2, tmp_path, "delta")
    _same_restore(src_repo, s1, dst, next(d for d in dst.list_sets() if d.extra[ORIGIN_KEY]["set"] == s1.id),
                  tmp_path, "delta1")
    assert dst.check(read_data=True).ok


def test_copy_stopped_at_every_write_leaves_the_destination_consistent(tmp_path, rng):
    src_repo = _enc(secret=crypto.Secret("keyfile", os.urandom(32)))
    src = tmp_path / "src"
    make_tree(str(src), rng, files=6, max_size=100_000)
    s1 = backup(src_repo, str(src))
    write_random(str(src / "a" / "more.bin"), 50_000, rng)
    s2 = backup(src_repo, str(src), level="incremental")
    src_repo.put_wal(WAL_A, rng.randbytes(50_000))
    wal = lambda s: [("", WAL_A)]  # noqa: E731
    probe_inner = MemoryBackend()
    _enc(probe_inner)
    writes_ops = ("put", "put_if_absent")  # locks are created with put_if_absent
    probe = FaultyBackend(probe_inner, ops=writes_ops)
    copy_sets(src_repo, Repository.open(probe, secret=KEY), wal_for=wal)
    writes = probe.puts
    assert writes >= 8 and {"packs", "index", "wal", "sets"} <= {kind for _, kind, _ in probe.calls}
    for k in range(1, writes + 1):
        inner = MemoryBackend()
        _enc(inner)
        dst = Repository.open(FaultyBackend(inner, fail_at=k, mode="stop", ops=writes_ops), secret=KEY)
        with pytest.raises(BackendError):
            copy_sets(src_repo, dst, wal_for=wal)
        dst = Repository.open(inner, secret=KEY)
        visible = dst.list_sets()
        for d in visible:  # every visible set is whole: it restores and its WAL is there
            origin = d.extra[ORIGIN_KEY]["set"]
            s = s1 if origin == s1.id else s2
            _same_restore(src_repo, s, dst, d, tmp_path / f"k{k}", d.id[:8])
            assert dst.get_wal(WAL_A) == src_repo.get_wal(WAL_A)
        assert dst.check().ok, k
        report = copy_sets(src_repo, dst, wal_for=wal)  # rerun: resumes with what is missing
        assert len(report.copied) == 2 - len(visible)
        assert sorted(d.extra[ORIGIN_KEY]["set"] for d in dst.list_sets()) == sorted([s1.id, s2.id])
        assert dst.check(read_data=True).ok, k


def test_destination_errors(tmp_path, rng):
    place = str(tmp_path / "dest")
    open_destination(place, KEY).close()
    with pytest.raises(WrongKeyError, match="unable to open destination repository .*wrong passphrase or key file"):
        open_destination(place, crypto.Secret("keyfile", os.urandom(32)))
    plain = str(tmp_path / "plain")
    Repository.init(LocalBackend(plain)).close()
    with pytest.raises(FailedPreconditionError, match="not encrypted"):
        open_destination(plain, KEY)
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(Exception, match="not a Cairn repository"):
        open_destination(str(tmp_path / "afile"), KEY)
    repo = open_destination(place, KEY)
    with pytest.raises(FailedPreconditionError, match="the destination is the source"):
        copy_sets(repo, Repository.open(LocalBackend(place), secret=KEY))


def test_progress_counts_sets_and_bytes_and_the_source_is_read_under_a_lock(tmp_path, rng):
    src_repo, dst = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    sets = _history(src_repo, tmp_path / "src", rng)
    events, source_locks = [], []

    def progress(p) -> None:
        events.append(p)
        source_locks.append(len(list(src_repo.raw_backend.list("locks"))))

    copy_sets(src_repo, dst, progress=progress)
    assert events[0].phase == "copy" and events[-1].phase == "done"
    assert {e.phase for e in events[1:-1]} <= {f"set {s.id[:8]}.." for s in sets}
    assert min(source_locks) == 1 and list(src_repo.raw_backend.list("locks")) == []  # read under a lock
    total = sum(s.stats.bytes_total for s in sets)
    assert (events[0].files_done, events[0].files_total, events[0].bytes_total) == (0, 3, total)
    assert (events[-1].files_done, events[-1].bytes_done) == (3, total)
    assert [e.files_done for e in events] == sorted(e.files_done for e in events)


def test_other_wal_content_under_the_same_name_is_refused_and_no_set_appears(tmp_path, rng):
    src_repo, dst = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    _history(src_repo, tmp_path / "src", rng)
    src_repo.put_wal(WAL_A, b"one cluster" * 100)
    dst.put_wal(WAL_A, b"another cluster" * 100)
    with pytest.raises(AlreadyExistsError, match=f"unable to copy WAL file '{WAL_A}'"):
        copy_sets(src_repo, dst, wal_for=lambda s: [("", WAL_A)])
    assert dst.list_sets() == [] and dst.get_wal(WAL_A) == b"another cluster" * 100


def test_a_cancelled_copy_stops_and_the_next_one_resumes(tmp_path, rng):
    import threading

    from cairn.store.errors import AbortedError

    src_repo, dst = _enc(secret=crypto.Secret("keyfile", os.urandom(32))), _enc()
    sets = _history(src_repo, tmp_path / "src", rng)
    cancel = threading.Event()

    def progress(p) -> None:
        if p.files_done == 1:  # the first set is committed: stop during the second
            cancel.set()

    with pytest.raises(AbortedError, match="copy cancelled"):
        copy_sets(src_repo, dst, progress=progress, cancel=cancel)
    assert [d.extra[ORIGIN_KEY]["set"] for d in dst.list_sets()] == [sets[0].id]
    assert list(dst.raw_backend.list("locks")) == [] and list(src_repo.raw_backend.list("locks")) == []
    report = copy_sets(src_repo, dst)
    assert [a for a, _ in report.copied] == [s.id for s in sets[1:]] and len(report.present) == 1
    assert dst.check().ok


def test_a_set_whose_data_is_lost_is_named_and_the_sets_after_it_are_still_copied(tmp_path, rng):
    src_repo, dst = _enc(), _enc(secret=crypto.Secret("keyfile", os.urandom(32)))
    sets, packs = [], []
    for name in ("one", "two", "three"):  # three sources with nothing in common
        make_tree(str(tmp_path / name), rng, files=6, max_size=200_000)
        before = set(src_repo.backend.list("packs"))
        sets.append(backup(src_repo, str(tmp_path / name), source=name))
        packs.append(set(src_repo.backend.list("packs")) - before)
    for p in packs[1]:
        src_repo.backend.delete("packs", p)  # the second set's data is lost

    report = copy_sets(src_repo, dst)
    assert [a for a, _ in report.copied] == [sets[0].id, sets[2].id]
    assert [a for a, _ in report.failed] == [sets[1].id]
    assert "unable to read pack" in report.failed[0][1] and "missing" in report.failed[0][1]
    assert {d.extra[ORIGIN_KEY]["set"] for d in dst.list_sets()} == {sets[0].id, sets[2].id}
    for s, (_, d) in zip((sets[0], sets[2]), report.copied, strict=True):
        _same_restore(src_repo, s, dst, dst.get_set(d), tmp_path, s.source)
    assert dst.check(read_data=True).ok


@pytest.mark.parametrize("damage", ["base set object", "base tree"])
def test_a_set_whose_base_cannot_be_read_is_still_copied_whole(tmp_path, rng, damage):
    """The base of an incremental is damaged (its set object, or the root listing only it has)
    while the incremental itself is whole: the copy copies it, reading it whole, instead of
    failing it over what it would only have learnt from its base."""
    src_repo, dst = _enc(), _enc(secret=crypto.Secret("keyfile", os.urandom(32)))
    src = tmp_path / "src"
    make_tree(str(src), rng, files=8, max_size=100_000)
    full = backup(src_repo, str(src))
    copy_sets(src_repo, dst, [full])  # so the incremental has a copied base to match against
    write_random(str(src / "a" / "new.bin"), 50_000, rng)
    inc = backup(src_repo, str(src), level="incremental")
    raw = src_repo.raw_backend  # the stored bytes, sealed
    if damage == "base set object":
        kind, name, at = "sets", full.id, len(raw.get("sets", full.id)) // 2
    else:
        loc = src_repo.index.get(bytes.fromhex(full.tree))
        kind, name, at = "packs", loc.pack, loc.offset + loc.stored_len // 2
    data = bytearray(raw.get(kind, name))
    data[at] ^= 1
    raw.put(kind, name, bytes(data))
    src_repo = Repository.open(raw, secret=KEY)  # nothing of the full in memory

    report = copy_sets(src_repo, dst, [inc])
    assert report.failed == () and [a for a, _ in report.copied] == [inc.id], report
    _same_restore(src_repo, inc, dst, dst.get_set(report.copied[0][1]), tmp_path, damage.replace(" ", "-"))
    assert dst.check(read_data=True).ok
