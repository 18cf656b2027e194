"""A directory of very many files: its reads are taken in while the walk still lists it (not
all held until its listing ends), and its tree is encoded one entry at a time, to the same bytes."""

from __future__ import annotations

import json
import os
import random

from cairn.store.snapshots import backup as backup_mod
from cairn.store.snapshots.trees import TREE_VERSION, Entry, _entry_doc, encode_tree
from storekit import backup, restore_and_compare


def test_a_directory_of_many_files_is_finished_while_it_is_listed(repo, src, tmp_path, monkeypatch):
    monkeypatch.setattr(backup_mod, "PENDING_FILES", 64, raising=False)
    big = src / "many"
    big.mkdir()
    for i in range(300):
        (big / f"f{i:04d}").write_bytes(os.urandom(i % 50))
    walked_at_finish: list[int] = []
    real = backup_mod.Walker._finish_file

    def finish(self, *args, **kw):
        walked_at_finish.append(self.tally.files_walked)
        return real(self, *args, **kw)

    monkeypatch.setattr(backup_mod.Walker, "_finish_file", finish)
    s = backup(repo, str(src))
    assert s.stats.files == 300
    assert min(walked_at_finish) < 300  # results taken in before the listing of 'many' ended
    restore_and_compare(repo, s, str(src), str(tmp_path / "out"))


def test_a_tree_encodes_to_the_bytes_of_one_json_document():
    rng = random.Random(7)
    names = [os.urandom(rng.randrange(1, 20)) for _ in range(200)] + ["é-ü".encode(), b"plain"]
    entries = [Entry(name=n, kind=rng.choice(["file", "dir", "symlink"]), mode=rng.randrange(1 << 16),
                     size=rng.randrange(1 << 40), chunks=[os.urandom(32)], subtree=os.urandom(32),
                     target=os.urandom(4), xattrs={b"user.k": os.urandom(3)}) for n in names]
    doc = {"v": TREE_VERSION, "e": [_entry_doc(e) for e in sorted(entries, key=lambda e: e.name)]}
    assert encode_tree(entries) == json.dumps(doc, separators=(",", ":")).encode()
    assert encode_tree([]) == b'{"v":%d,"e":[]}' % TREE_VERSION
