"""A pack of file data deleted from a local repository while the index file naming it stays (an
operator's rm, a disk that lost it), then the change journal's next incremental: real daemon,
real inotify, the real client.

Before, that backup deduplicated against the lost chunks and refused to commit, and so did
every backup after it until an operator ran `cairn repair index`. It finds the pack missing when
it starts: it carries nothing over from it, reads the files whose chunks it held from the source
and commits a set that restores whole. The chunks it stored again have the ids of those lost,
so the older sets are whole again where the source still holds their files; verify names the
older sets that still lose a file the source no longer holds, with its path, and after `cairn
repair index` and forgetting those sets (docs/operations.md), verify passes.
"""

from __future__ import annotations

import json
import os
import re
import time

from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from cairnd_harness import snapshot

DEADLINE = 15.0
CONFIG = RepoConfig.new(pack_size=64 * 1024,
                        chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024, max_size=64 * 1024))
BIG = 1536 * 1024


def _source(root) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "big.bin").write_bytes(os.urandom(BIG))
    (root / "b").mkdir()
    (root / "b" / "old.bin").write_bytes(os.urandom(600_000))
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


def _journal_names(d, n: int) -> None:
    def named() -> bool:
        j = json.loads(d.ok("--json", "status"))["sources"][0]
        return j["journal_state"] == "complete" and j["pending_paths"] >= n
    _wait(named, f"the journal to name {n} paths")


def _incremental(d) -> dict:
    return json.loads(d.ok("--json", "backup", "--level", "incremental"))


def _packs_of_alone(repo, set_id: str, *path: bytes) -> str:
    """A pack holding chunks of the file at `path` in set `set_id` and nothing else."""
    r = Repository.open(LocalBackend(str(repo)), read_only=True)
    try:
        entries = r.load_tree(bytes.fromhex(r.get_set(set_id).tree))
        for name in path[:-1]:
            entries = r.load_tree(next(e for e in entries if e.name == name).subtree)
        chunks = set(next(e for e in entries if e.name == path[-1]).chunks)
        held: dict[str, set[bytes]] = {}
        for bid, loc in r.index.items():
            held.setdefault(loc.pack, set()).add(bid)
        return next(p for p, ids in sorted(held.items()) if ids <= chunks)
    finally:
        r.close()


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error: ")]


def _sets_named(line: str) -> set[str]:
    """The (short) set ids a finding names: "... (sets ab12, cd34; path)"."""
    found = re.search(r"\(sets? ([0-9a-f]+(?:, [0-9a-f]+)*)[;)]", line)
    return set(found[1].split(", ")) if found else set()


def test_a_deleted_data_pack_is_stored_again_by_the_next_incremental(start_daemon, tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    _source(src)
    os.makedirs(repo, mode=0o700)
    Repository.init(LocalBackend(str(repo)), CONFIG).close()
    d = start_daemon("--repo", str(repo), "--source", str(src))
    full = json.loads(d.ok("--json", "backup", "--level", "full"))
    (src / "c.txt").write_text("changed\n")
    _journal_names(d, 1)
    first = _incremental(d)  # a/ and b/ carried over unread: found wholly indexed, and remembered so
    assert first["extra"]["changes"] == "journal" and first["stats"]["files_walked"] < 3, first["stats"]
    big = _packs_of_alone(repo, first["id"], b"a", b"big.bin")
    old = _packs_of_alone(repo, first["id"], b"b", b"old.bin")
    for pack in (big, old):
        os.unlink(repo / "packs" / pack[:2] / pack)

    r = d.cli("verify")
    errors = _errors(r.stdout)
    assert r.returncode == 1, r.stdout
    both = {full["id"][:12], first["id"][:12]}
    for pack, path in ((big, "a/big.bin"), (old, "b/old.bin")):
        assert any(e.startswith(f"error: pack '{pack[:8]}..' is indexed but missing: 2 sets need blobs it held")
                   and _sets_named(e) == both for e in errors), r.stdout
        assert any(f"pack '{pack[:8]}..' is missing" in e and _sets_named(e) == both and path in e
                   for e in errors), r.stdout

    os.unlink(src / "b" / "old.bin")
    (src / "c.txt").write_text("changed again\n")
    _journal_names(d, 2)
    s = _incremental(d)  # before: refused, "holds blobs this backup relies on and is missing", every time
    assert s["level"] == "incremental" and s["base"] == first["id"] and s["extra"]["changes"] == "journal", s
    notes = s["extra"].get("notes", [])
    assert any(n.startswith(f"pack '{big[:8]}..' the index names is missing from the repository") for n in notes), notes
    assert any(n.startswith("the base set's 'a' names blob ") and f"pack '{big[:8]}..', missing" in n
               for n in notes), notes
    assert s["stats"]["bytes_read"] >= BIG, s["stats"]  # the file whose chunks were lost, read again
    d.ok("restore", s["id"], "--target", str(tmp_path / "out"))
    assert snapshot(str(tmp_path / "out")) == snapshot(str(src))

    # the older sets: big.bin is whole again (the same chunks, stored anew); old.bin is lost in both
    r = d.cli("verify")
    errors = _errors(r.stdout)
    assert r.returncode == 1 and errors, r.stdout
    assert all(_sets_named(e) == both for e in errors), r.stdout  # never the new set
    assert not any(big[:8] in e or "big.bin" in e for e in errors), r.stdout
    assert any("b/old.bin" in e for e in errors), r.stdout
    assert "'cairn repair index'" in r.stderr and "'cairn prune --forget SET'" in r.stderr, r.stderr

    # the runbook: drop the lost entries, forget the sets whose lost file the source no longer has
    d.ok("repair", "index")
    d.ok("prune", "--forget", full["id"], "--forget", first["id"])
    verified = d.ok("verify", "--read-data")
    assert verified.splitlines()[-1].startswith("repository ok: 1 set") and "warning" not in verified, verified
