"""A delta restore (cairn.fsio.delta.mend) whose chunk source cannot deliver some chunks: the
files that need them are reported and left for a later delta; every other file is mended."""

from __future__ import annotations

import os
from collections.abc import Iterator

from cairn.errors import CorruptionError
from cairn.fsio.delta import mend
from cairn.fsio.records import EntryMeta
from test_delta_cancel import FILES, damaged, intact, manifest


def test_files_needing_an_unreadable_chunk_are_reported_and_the_others_mended(tmp_path) -> None:
    root = str(tmp_path / "t")
    entries, store = manifest(root)
    damaged(root)
    bad = {e.chunks[0] for e in entries[1:4]}  # the chunks of f00..f02 cannot be read

    def source(ids: list[bytes]) -> Iterator[tuple[bytes, bytes | CorruptionError]]:
        for cid in ids:
            yield cid, (CorruptionError("unable to read pack 'ab12..': checksum mismatch") if cid in bad
                        else store[cid])

    p, st = mend(root, entries, source)
    assert sorted(st.errors) == [f"unable to restore 'd/f{i:02d}': unable to read pack 'ab12..': checksum mismatch"
                                 for i in range(3)]
    assert st.files_written == FILES - 3 and intact(root, store) == FILES - 3
    for i in range(3):  # left as they were: a later delta reads them again
        with open(os.path.join(root, "d", f"f{i:02d}"), "rb") as f:
            assert f.read(2) in (b"XX", b"YY")
    assert mend(root, entries, lambda ids: ((c, store[c]) for c in ids))[1].files_written == 3
    assert intact(root, store) == FILES


def _failing(bad: set[bytes], store: dict[bytes, bytes]):
    def source(ids: list[bytes]) -> Iterator[tuple[bytes, bytes | CorruptionError]]:
        for cid in ids:
            yield cid, CorruptionError("unable to read pack 'ab12..': pack is missing") if cid in bad else store[cid]
    return source


def test_a_file_made_anew_whose_chunk_cannot_be_read_leaves_its_place_as_it_was(tmp_path) -> None:
    """Files the delta makes anew (missing; of another kind; sharing their inode with a path the
    set does not link there) are written beside their place and moved there when complete: when
    their content cannot be read, the place keeps what it held (here a correct file hard-linked
    to a path outside the manifest, as when a subtree's listing is lost), never an empty file."""
    root = str(tmp_path / "t")
    entries, store = manifest(root)
    d = os.path.join(root, "d")
    os.link(os.path.join(d, "f00"), os.path.join(root, "outside"))  # f00's inode is shared: made anew
    os.unlink(os.path.join(d, "f01"))  # missing: made anew
    os.unlink(os.path.join(d, "f02"))
    os.symlink("elsewhere", os.path.join(d, "f02"))  # another kind: made anew
    before = open(os.path.join(d, "f00"), "rb").read()
    bad = {e.chunks[0] for e in entries[1:4]}
    p, st = mend(root, entries, _failing(bad, store))
    assert {f.meta.path for f in p.files if f.fresh} == {b"d/f00", b"d/f01", b"d/f02"}
    assert len(st.errors) == 3 and all("pack is missing" in e for e in st.errors), st.errors
    assert open(os.path.join(d, "f00"), "rb").read() == before and os.stat(os.path.join(d, "f00")).st_nlink == 2
    assert not os.path.exists(os.path.join(d, "f01"))
    assert os.readlink(os.path.join(d, "f02")) == "elsewhere"
    assert sorted(os.listdir(d)) == sorted(f"f{i:02d}" for i in range(FILES) if i != 1), "no temporary file is left"
    p, st = mend(root, entries, lambda ids: ((c, store[c]) for c in ids))  # the data is back: all three made
    assert not st.errors and intact(root, store) == FILES
    assert sorted(os.listdir(d)) == [f"f{i:02d}" for i in range(FILES)]
    assert os.stat(os.path.join(d, "f00")).st_nlink == 1 and open(os.path.join(root, "outside"), "rb").read() == before


def test_a_hard_link_to_a_file_that_could_not_be_made_is_named_and_left(tmp_path) -> None:
    root = str(tmp_path / "t")
    entries, store = manifest(root)
    d = os.path.join(root, "d")
    os.unlink(os.path.join(d, "f00"))
    entries.append(EntryMeta(path=b"d/link", kind="hardlink", link_to=b"d/f00"))
    p, st = mend(root, entries, _failing({entries[1].chunks[0]}, store))
    assert "unable to restore 'd/link': it links to 'd/f00', which was not restored" in st.errors, st.errors
    assert not os.path.lexists(os.path.join(d, "link")) and not os.path.exists(os.path.join(d, "f00"))


def test_entries_named_like_temporary_files_are_never_taken_over(tmp_path) -> None:
    """A delta's temporary names are new every time (O_EXCL): what is already there under such
    a name is never overwritten or reused. A regular file of exactly that form (the prefix and 24
    hex digits) is what a delta killed with -9 left: the next delta removes it, with or without
    --delete. Anything else named with the prefix (a user's directory, a directory or a file not
    of that form) is an extra like any other, kept and counted without --delete and removed with it."""
    from cairn.fsio.delta import TEMP_PREFIX, temp_name

    root = str(tmp_path / "t")
    entries, store = manifest(root)
    d = os.path.join(root, "d")
    os.unlink(os.path.join(d, "f05"))
    left = os.path.join(root, os.fsdecode(temp_name(b"d/f05")))
    with open(left, "wb") as f:
        f.write(b"half, left by a delta killed with -9")
    users = os.path.join(root, os.fsdecode(TEMP_PREFIX) + "mine")
    os.makedirs(os.path.join(users, "keep"))
    with open(os.path.join(users, "keep", "data"), "wb") as f:
        f.write(b"someone's work")
    shaped_dir = os.path.join(root, os.fsdecode(temp_name(b"x")))  # the form, but a directory
    os.makedirs(shaped_dir)
    near = os.path.join(d, os.fsdecode(TEMP_PREFIX) + "0" * 23 + "g")  # not hex
    with open(near, "wb") as f:
        f.write(b"a file of the user")
    p, st = mend(root, entries, lambda ids: ((c, store[c]) for c in ids), extras_under=[b""])
    assert not st.errors and intact(root, store) == FILES
    assert not os.path.exists(left) and st.deleted == 1
    assert open(os.path.join(users, "keep", "data"), "rb").read() == b"someone's work"
    assert os.path.isdir(shaped_dir) and open(near, "rb").read() == b"a file of the user"
    assert len(p.extras) == 3 and len(p.leftovers) == 1
    p, st = mend(root, entries, lambda ids: ((c, store[c]) for c in ids), extras_under=[b""], delete=True)
    assert st.deleted == 3 and not os.path.exists(users) and not os.path.exists(shaped_dir) \
        and not os.path.exists(near)
