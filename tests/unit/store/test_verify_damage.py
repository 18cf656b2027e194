"""Check never says ok over damage: set objects, WAL catalog entries and the config verify."""

from __future__ import annotations

import json

import blake3
import pytest
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import CairnError, CorruptionError, FormatVersionError, NotFoundError, short
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.snapshots.sets import decode_set
from cairn.store.storage.backend import MemoryBackend
from storekit import backup, make_tree

WAL = "000000010000000000000003"


@pytest.fixture
def mem(src, rng):
    """A memory repository with one set and one WAL file."""
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    make_tree(str(src), rng, files=4, max_size=20_000)
    s = backup(repo, src)
    repo.put_wal(WAL, rng.randbytes(50_000))
    return inner, s


def _flip(inner, kind, name, pos, bit=0x01):
    data = bytearray(inner.objects[(kind, name)])
    data[pos] ^= bit
    inner.objects[(kind, name)] = bytes(data)


def test_set_object_with_a_changed_value_is_an_error_naming_the_set(mem):
    inner, s = mem
    data = inner.objects[("sets", s.id)]
    at = data.index(b'"hostname":"') + len(b'"hostname":"')
    changed = data[:at] + bytes([data[at] ^ 0x01 if data[at] != 0x21 else 0x41]) + data[at + 1:]
    json.loads(changed)  # still a valid set document: only its checksum tells
    inner.objects[("sets", s.id)] = changed
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        decode_set(s.id, changed)
    for read_data in (False, True):
        report = Repository.open(inner).check(read_data=read_data)
        assert not report.ok
        hurt = [p for p in report.errors if p.object_id == s.id]
        assert hurt and s.id in hurt[0].sets and short(s.id) in hurt[0].message, report.errors


def test_any_flipped_byte_of_a_set_object_is_an_error(mem):
    inner, s = mem
    size = len(inner.objects[("sets", s.id)])
    for pos in range(0, size, max(1, size // 40)):
        original = inner.objects[("sets", s.id)]
        _flip(inner, "sets", s.id, pos)
        report = Repository.open(inner).check()
        assert any(p.object_id == s.id for p in report.errors), f"byte {pos}"
        inner.objects[("sets", s.id)] = original
    assert Repository.open(inner).check().ok


def test_any_flipped_byte_of_a_wal_catalog_entry_is_reported(mem):
    inner, _ = mem
    size = len(inner.objects[("wal", WAL)])
    for pos in range(size):
        original = inner.objects[("wal", WAL)]
        _flip(inner, "wal", WAL, pos)
        repo = Repository.open(inner)
        report = repo.check()
        assert any(WAL in p.message for p in report.errors), f"byte {pos}: {report.errors}"
        with pytest.raises(CorruptionError, match=WAL):
            repo.get_wal(WAL)
        inner.objects[("wal", WAL)] = original
    assert Repository.open(inner).check(read_data=True).ok


def _legacy_catalog(inner) -> dict:
    """Rewrite the entry as entries were before they carried a checksum."""
    doc = json.loads(inner.objects[("wal", WAL)])
    doc.pop("sum")
    inner.objects[("wal", WAL)] = json.dumps(doc).encode()
    return doc


def test_legacy_wal_catalog_entries_are_read_and_checked(mem):
    inner, _ = mem
    doc = _legacy_catalog(inner)
    repo = Repository.open(inner)
    assert len(repo.get_wal(WAL)) == 50_000 and repo.check(read_data=True).ok
    bad_chunk = dict(doc, chunks=["0" * 64])  # a chunk id no index knows
    inner.objects[("wal", WAL)] = json.dumps(bad_chunk).encode()
    report = Repository.open(inner).check()
    assert any(WAL in p.message and "missing from the index" in p.message for p in report.errors)
    bad_hash = dict(doc, hash="f" * 64)  # only reading the content shows it
    inner.objects[("wal", WAL)] = json.dumps(bad_hash).encode()
    assert not Repository.open(inner).check(read_data=True).ok
    inner.objects[("wal", WAL)] = json.dumps(dict(doc, chunks=["zz" * 32])).encode()
    with pytest.raises(CorruptionError, match=WAL):
        Repository.open(inner).get_wal(WAL)


def test_prune_stops_at_a_damaged_wal_catalog_entry(mem):
    inner, s = mem
    _flip(inner, "wal", WAL, 10)
    before = dict(inner.objects)
    with pytest.raises(CorruptionError, match=WAL):
        Repository.open(inner).prune(PrunePolicy(keep_full=0))
    assert {k: v for k, v in inner.objects.items() if k[0] != "locks"} == before


def test_any_flipped_byte_of_the_config_is_a_clear_error(mem):
    inner, _ = mem
    data = inner.objects[("config", "config")]
    assert b'"checksum"' in data
    for pos in range(len(data)):
        for bit in (0x01, 0x20):
            inner.objects[("config", "config")] = data[:pos] + bytes([data[pos] ^ bit]) + data[pos + 1:]
            try:
                Repository.open(inner)
            except CairnError as e:
                assert "\n" not in str(e)
                # every one says how to put it back (none says to upgrade Cairn: nothing newer wrote it)
                assert "config/config" in (e.hint or "") and "from a copy" in e.hint, (pos, bit, e.message, e.hint)
                continue
            pytest.fail(f"config with byte {pos} flipped (^{bit:#x}) was accepted")
    inner.objects[("config", "config")] = data
    assert Repository.open(inner).check().ok


def test_a_damaged_version_digit_is_damage_and_a_newer_format_is_not():
    """An encrypted repository's config says version 2; one flipped bit makes it 3. That is a
    damaged config (its checksum says so), not a repository of a newer Cairn."""
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new())
    data = inner.objects[("config", "config")]
    doc = json.loads(data)
    doc["version"] = 2
    rest = {k: v for k, v in doc.items() if k != "checksum"}

    def canonical(d: dict) -> bytes:
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    good = canonical({**rest, "checksum": blake3.blake3(canonical(rest)).hexdigest()})
    at = good.index(b'"version": 2') + len(b'"version": ')
    flipped = good[:at] + b"3" + good[at + 1:]
    with pytest.raises(CorruptionError) as e:
        RepoConfig.decode(flipped, "repo")
    assert e.value.message == ("unable to read the config of repository 'repo': checksum mismatch (format version 2 "
                               "when written, 3 now)")
    assert e.value.hint.startswith("the config object (config/config) is damaged: put it back from a copy")
    newer = {**rest, "version": 3}  # a config a newer Cairn wrote, whole (or edited by hand: no damage)
    with pytest.raises(FormatVersionError, match="has format version 3, newer than this Cairn supports"):
        RepoConfig.decode(canonical({**newer, "checksum": blake3.blake3(canonical(newer)).hexdigest()}), "repo")


@pytest.mark.parametrize("content", [b"", b"\x00" * 300, b'{"not": "ours"}'])
def test_an_empty_or_unparsable_config_says_how_to_put_it_back(mem, content):
    inner, _ = mem
    inner.objects[("config", "config")] = content
    with pytest.raises(CairnError) as e:
        Repository.open(inner)
    assert "is not a Cairn repository" in str(e.value) and "put it back from a copy" in (e.value.hint or "")


def test_config_without_checksum_still_opens(mem):
    inner, s = mem
    doc = json.loads(inner.objects[("config", "config")])
    doc.pop("checksum")
    inner.objects[("config", "config")] = json.dumps(doc, indent=1, sort_keys=True).encode()
    repo = Repository.open(inner)
    assert repo.config.id == doc["id"] and [x.id for x in repo.list_sets()] == [s.id]
    with pytest.raises(NotFoundError):
        repo.get_set("ffff")


def test_a_damaged_tree_found_without_read_data_comes_with_the_repair_that_applies(mem):
    inner, s = mem
    repo = Repository.open(inner)
    loc = repo.index.get(bytes.fromhex(s.tree))
    _flip(inner, "packs", loc.pack, loc.offset + loc.stored_len // 2)
    report = Repository.open(inner).check()
    assert not report.ok and any("tree is damaged" in p.message for p in report.errors), report.errors
    assert "'cairn repair index --read-data'" in report.advice and "full backup" in report.advice, report.advice


@pytest.mark.parametrize("content", [b"", b"{not json"])
def test_an_unreadable_gc_marker_is_a_warning_and_the_next_prune_removes_it(mem, content):
    inner, s = mem
    inner.put("gc", "ee" * 16, content)
    report = Repository.open(inner).check()
    assert report.ok and any("gc marker 'eeeeeeee..' cannot be read" in w.message for w in report.warnings)
    Repository.open(inner).prune(PrunePolicy())
    assert not list(inner.list("gc"))
    assert not Repository.open(inner).check().warnings
