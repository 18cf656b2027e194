"""Restore selection and manifests in the store: --include/--exclude patterns prune the stream
(directories on the way come first, excluded directories are not entered), a manifest lists
every file's chunks with their sizes and carries no content, and read_chunks serves only
chunks of the set."""

from __future__ import annotations

import os

import blake3
import pytest
from cairn.fsio.records import Data, EntryMeta
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.snapshots.restore import RestoreFilter
from storekit import backup


def make(src) -> None:
    for rel, size in (("a/keep.txt", 10), ("a/drop.tmp", 10), ("a/b/deep.txt", 3000), ("c/other.txt", 5),
                      ("cache/x.bin", 100), ("big.bin", 9 << 20)):
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))


def paths(records) -> list[bytes]:
    """The paths of a stream's entries, without its root (b"": the source directory's metadata)."""
    return [r.path for r in records if isinstance(r, EntryMeta) and r.path]


def test_include_and_exclude_prune_the_stream(repo, src) -> None:
    make(src)
    s = backup(repo, str(src))
    got = paths(repo.restore_stream(s, select=RestoreFilter(["*.txt"], ["cache/", "c/"])))
    assert got == [b"a", b"a/b", b"a/b/deep.txt", b"a/keep.txt"]
    got = paths(repo.restore_stream(s, select=RestoreFilter([], ["*.tmp", "cache/"])))
    assert b"a/drop.tmp" not in got and not any(p.startswith(b"cache") for p in got) and b"big.bin" in got
    got = paths(repo.restore_stream(s, select=RestoreFilter(["a/b/"])))
    assert got == [b"a", b"a/b", b"a/b/deep.txt"]
    with pytest.raises(InvalidArgumentError):
        RestoreFilter(["  "])


def test_include_patterns_leave_the_targets_own_metadata_alone_as_chosen_paths_do(repo, src) -> None:
    """A whole set gives the target the source directory's metadata (its root record, path b"");
    chosen paths do not, and neither do --include patterns (they choose entries too); --exclude
    alone still restores the whole set, root included."""
    make(src)
    s = backup(repo, str(src))

    def root(**kw) -> list[EntryMeta]:
        return [r for r in repo.restore_stream(s, **kw) if isinstance(r, EntryMeta) and r.path == b""]

    assert len(root()) == 1 and len(root(select=RestoreFilter([], ["cache/"]))) == 1
    assert root(paths=["a"]) == [] and root(select=RestoreFilter(["a/b/"])) == []
    assert root(select=RestoreFilter(["a/b/"]), manifest=True) == []  # --delta: the same choice


def test_manifest_lists_chunks_and_no_content(repo, src) -> None:
    make(src)
    s = backup(repo, str(src))
    recs = list(repo.restore_stream(s, manifest=True))
    assert not any(isinstance(r, Data) for r in recs)
    big = next(r for r in recs if isinstance(r, EntryMeta) and r.path == b"big.bin")
    assert len(big.chunks) >= 2 and sum(big.chunk_sizes) == big.size == 9 << 20  # > 2x the largest chunk: always cut
    content = (src / "big.bin").read_bytes()
    off = 0
    for cid, size in zip(big.chunks, big.chunk_sizes, strict=True):
        assert blake3.blake3(content[off:off + size]).digest() == cid
        off += size
    assert list(repo.read_chunks(s, list(big.chunks))) == [
        content[o:o + n] for o, n in zip([sum(big.chunk_sizes[:i]) for i in range(len(big.chunks))],
                                         big.chunk_sizes, strict=True)]


def test_read_chunks_refuses_a_chunk_of_another_set(repo, src, tmp_path) -> None:
    make(src)
    s = backup(repo, str(src))
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret").write_bytes(os.urandom(5000))
    s2 = backup(repo, str(other), source="other")
    secret = next(r for r in repo.restore_stream(s2, manifest=True) if isinstance(r, EntryMeta)
                  and r.path == b"secret")
    with pytest.raises(NotFoundError, match="not part of the set"):
        list(repo.read_chunks(s, list(secret.chunks)))


def test_include_that_matches_nothing_is_an_error_not_an_empty_restore(repo, src) -> None:
    make(src)
    s = backup(repo, str(src))
    for manifest in (False, True):
        with pytest.raises(NotFoundError, match=r"nothing to restore from set '.*': no path matches --include "
                                                r"'\*\.txtx', 'nope/'"):
            list(repo.restore_stream(s, select=RestoreFilter(["*.txtx", "nope/"]), manifest=manifest))
    # one pattern that matches is enough, also below a path restored on its own
    assert paths(repo.restore_stream(s, select=RestoreFilter(["*.txtx", "keep.txt"]))) == [b"a", b"a/keep.txt"]
    assert paths(repo.restore_stream(s, ["a"], select=RestoreFilter(["deep.txt"]))) == [b"a", b"a/b", b"a/b/deep.txt"]
    # excludes alone never make an empty restore an error
    assert paths(repo.restore_stream(s, select=RestoreFilter([], ["*"]))) == []


def test_a_path_not_in_the_set_is_named_escaped() -> None:
    """The caller's own input comes back in the error: escaped, so an escape sequence reaches no
    terminal and a newline or backslash cannot make it look like another path."""
    from cairn.store.snapshots.restore import find_entry

    with pytest.raises(NotFoundError) as e:
        find_entry(lambda tree: [], b"\x01" * 32, "a\x1b[31mred\nx\\y")
    assert str(e.value) == "path 'a\\x1b[31mred\\nx\\\\y' is not in the set"


def test_paths_given_twice_or_inside_another_are_restored_once(repo, src, tmp_path) -> None:
    from cairn.store.snapshots.restore import distinct_paths

    assert distinct_paths(["a/b", "a", "./a/", "c", "a/b/c", "c"]) == ["a", "c"]
    os.makedirs(src / "d" / "e")
    (src / "d" / "e" / "f").write_bytes(b"f")
    (src / "d" / "g").write_bytes(b"g")
    s = backup(repo, str(src))
    stats = repo.restore(s, str(tmp_path / "t"), ["d/e", "d", "d/e/f", "d"])
    assert stats.errors == () and stats.files == 2, stats
    assert (tmp_path / "t" / "d" / "e" / "f").read_bytes() == b"f"
