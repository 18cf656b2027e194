"""A delta restore (cairn.fsio.delta.mend) whose chunk source cannot deliver some chunks: the
files that need them are reported and left for a later delta; every other file is mended."""

from __future__ import annotations

import os
from collections.abc import Iterator

from cairn.errors import CorruptionError
from cairn.fsio.delta import mend
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
            assert f.read(2) == b"XX"
    assert mend(root, entries, lambda ids: ((c, store[c]) for c in ids))[1].files_written == 3
    assert intact(root, store) == FILES
