"""A pack of file data deleted from the repository together with the index file naming it, while
the daemon runs (a bucket lifecycle rule, a half-synced copy, an operator's rm), then an
incremental the change journal drives: real daemon, real inotify, a local repository.

To the running daemon that looks like a collection's work: no pack the index named is still
stored. The daemon had found the untouched directory wholly indexed at the incremental before,
and would carry it over by its tree id again, naming chunks nothing holds any more. The set
taken after the loss must restore as the source is: the untouched directory is walked and the
lost file read from the source again (the set says so), which also makes the older sets whole
again (the chunks read again have the ids of those lost).
"""

from __future__ import annotations

import json
import os
import time

from cairn.store.content.index import decode_index
from cairn.store.content.packs import TYPE_DATA
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from cairnd_harness import snapshot

DEADLINE = 15.0
# small packs and chunks: the big file alone fills more than the 32 packs one index file names
CONFIG = RepoConfig.new(pack_size=64 * 1024,
                        chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024, max_size=64 * 1024))


def _source(root) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "b").mkdir()
    (root / "b" / "small.bin").write_bytes(os.urandom(20_000))
    (root / "c.txt").write_text("c\n")
    past = time.time() - 3600  # an hour old: not read again by the racy-timestamp rule
    for d, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))


def _wait(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _change(d, path, text: str) -> None:
    """Change one file and wait until the journal has it (the next incremental is hinted)."""
    path.write_text(text)

    def named() -> bool:
        j = json.loads(d.ok("--json", "status"))["sources"][0]
        return j["journal_state"] == "complete" and j["pending_paths"] >= 1
    _wait(named, f"the journal to name {path.name}")


def _incremental(d) -> dict:
    return json.loads(d.ok("--json", "backup", "--level", "incremental"))


def _data_only_index_file(repo) -> tuple[str, list[str]]:
    """An index file whose packs hold file data alone (no listing): (its name, its packs)."""
    for name in sorted(os.listdir(repo / "index")):
        packs = decode_index(name, (repo / "index" / name).read_bytes())
        if all(e.type == TYPE_DATA for entries in packs.values() for e in entries):
            return name, sorted(packs)
    raise AssertionError("no index file names packs of file data alone")


def test_a_data_pack_lost_with_its_index_file_is_read_again_from_the_source(start_daemon, tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    _source(src)
    os.makedirs(repo, mode=0o700)
    Repository.init(LocalBackend(str(repo)), CONFIG).close()
    d = start_daemon("--repo", str(repo), "--source", str(src))
    json.loads(d.ok("--json", "backup", "--level", "full"))
    _change(d, src / "c.txt", "changed\n")
    first = _incremental(d)  # a/ carried over unread: found wholly indexed, and remembered so
    assert first["extra"]["changes"] == "journal" and first["stats"]["files_walked"] < 3, first["stats"]

    name, packs = _data_only_index_file(repo)
    os.unlink(repo / "index" / name)
    for pack in packs:
        os.unlink(repo / "packs" / pack[:2] / pack)
    _change(d, src / "c.txt", "changed again\n")
    s = _incremental(d)
    now = snapshot(str(src))

    assert s["level"] == "incremental" and s["base"] == first["id"] and s["extra"]["changes"] == "journal", s
    notes = s["extra"].get("notes", [])
    assert any(n.startswith("the base set's 'a' names blob ") and "no index file names" in n for n in notes), notes
    assert s["stats"]["bytes_read"] >= 3 * 1024 * 1024, s["stats"]  # the lost file, read again
    d.ok("restore", s["id"], "--target", str(tmp_path / "out"))
    assert snapshot(str(tmp_path / "out")) == now
    # the chunks read again have the ids of those lost: the older sets are whole again too
    verified = d.ok("verify", "--read-data")
    assert verified.splitlines()[-1].startswith("repository ok: 3 sets") and "warning" not in verified, verified
