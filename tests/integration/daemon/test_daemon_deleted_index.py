"""An index file deleted from the repository (not damaged: gone), then an incremental the change
journal drives, through the real daemon, real inotify and a local repository.

The journal names one changed file; every other directory would be carried over from the base
by the id of its stored tree, unread, and the daemon still serves those trees from its caches.
The sets that follow must restore whole: what no index file names is walked and read from the
source again (the set says so), or, when the base's own listing is gone, the base is not used
at all. `verify` names the pack whose index file is gone and sends to `cairn repair index`,
which brings the repository back to clean, after which every set restores.
"""

from __future__ import annotations

import json
import os
import re
import time

from cairnd_harness import snapshot

DEADLINE = 15.0


def _source(root) -> None:
    for top in ("a", "b"):
        (root / top / "deep").mkdir(parents=True)
        for i in range(3):
            (root / top / f"f{i}.bin").write_bytes(os.urandom(120_000 + i))
        (root / top / "deep" / "g.bin").write_bytes(os.urandom(70_000))
    (root / "c.txt").write_text("c\n")
    _age(root)


def _age(root) -> None:
    """Every file an hour old: not read again by the racy-timestamp rule."""
    past = time.time() - 3600
    for d, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))


def _journal(d) -> dict:
    return json.loads(d.ok("--json", "status"))["sources"][0]


def _wait(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _change(d, path, text: str) -> None:
    """Change one file and wait until the journal has it (the next incremental is hinted)."""
    path.write_text(text)
    _wait(lambda: (j := _journal(d))["journal_state"] == "complete" and j["pending_paths"] >= 1,
          f"the journal to name {path.name}")


def _incremental(d) -> dict:
    return json.loads(d.ok("--json", "backup", "--level", "incremental"))


def _index_files(repo) -> set[str]:
    return set(os.listdir(repo / "index"))


def _restores(d, s: dict, want: dict, target) -> None:
    d.ok("restore", s["id"], "--target", str(target))
    assert snapshot(str(target)) == want, s["id"]


def _verify_names_the_pack(d, repo) -> None:
    """verify fails, names the pack whose index file is gone as such, and advises the repair
    alone (nothing is lost: no backup is needed after it)."""
    r = d.cli("verify")
    assert r.returncode == 1, (r.stdout, r.stderr)
    named = [line for line in r.stdout.splitlines() if line.startswith("warning: pack ")]
    assert named and all(re.search(r"holds \d+ blobs? that sets need and no index file names: its index file was "
                                   r"deleted or lost; 'cairn repair index' indexes it again$", line)
                         for line in named), r.stdout
    assert {line.split("'")[1][:8] for line in named} <= {p.name[:8] for p in (repo / "packs").glob("*/*")}
    assert r.stderr.splitlines()[-1] == ("hint: 'cairn repair index' indexes again the packs whose index file is "
                                         "gone: what they hold is not lost, and no backup is needed for it"), r.stderr


def _repair_and_check(d, sets: list[tuple[dict, dict]], tmp_path) -> None:
    """`repair index`, then verify --read-data is clean and every set restores as it was taken."""
    d.ok("repair", "index")
    verified = d.ok("verify", "--read-data")
    assert verified.splitlines()[-1].startswith(f"repository ok: {len(sets)} sets") and "warning" not in verified, \
        verified
    for s, want in sets:
        _restores(d, s, want, tmp_path / f"again-{s['id'][:8]}")


def _set_with_lost_subtrees(d, repo, src) -> tuple[list[tuple[dict, dict]], dict]:
    """A full, then an incremental that changes b/f0.bin (its listings of b/ and / in a second
    index file); the full's index file is deleted (the only one naming a/'s listing and the
    content of every other file), c.txt changes, and the journal-driven incremental runs:
    ((set, snapshot) of the sets before, the new set)."""
    full = json.loads(d.ok("--json", "backup", "--level", "full"))
    taken = [(full, snapshot(str(src)))]
    (first,) = _index_files(repo)
    _change(d, src / "b" / "f0.bin", "changed\n")
    inc = _incremental(d)
    assert inc["extra"]["changes"] == "journal" and inc["stats"]["files_walked"] < 6, inc["stats"]
    taken.append((inc, snapshot(str(src))))
    os.unlink(repo / "index" / first)
    _change(d, src / "c.txt", "changed too\n")
    return taken, _incremental(d)


def test_an_incremental_after_an_index_file_was_deleted_restores_whole(start_daemon, tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    _source(src)
    d = start_daemon("--repo", str(repo), "--source", str(src))
    before, s = _set_with_lost_subtrees(d, repo, src)
    now = snapshot(str(src))

    assert s["level"] == "incremental" and s["base"] == before[-1][0]["id"] and s["extra"]["changes"] == "journal", s
    _restores(d, s, now, tmp_path / "out")
    notes = s["extra"].get("notes", [])
    assert any(n.startswith("the base set's 'a' names blob ") and "no index file names" in n for n in notes), notes
    _verify_names_the_pack(d, repo)
    r = d.cli("verify", "--set", s["id"])
    assert s["id"][:12] not in r.stdout, r.stdout  # the new set is whole; only the older ones are hurt

    again = _incremental(d)  # nothing changed: carried over whole, read nothing
    assert again["stats"]["bytes_read"] == 0 and again["stats"]["bytes_added"] < 2000, again["stats"]
    _repair_and_check(d, [*before, (s, now), (again, now)], tmp_path)


def test_a_base_whose_own_listing_lost_its_index_file_is_not_used(start_daemon, tmp_path):
    """The index file naming the base set's root listing is deleted: the incremental the journal
    plans against it is taken as a full that says why, not refused as if a prune had removed
    what it relies on (which running it again would not have changed)."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    _source(src)
    d = start_daemon("--repo", str(repo), "--source", str(src))
    full = json.loads(d.ok("--json", "backup", "--level", "full"))
    was = snapshot(str(src))
    (only,) = _index_files(repo)
    os.unlink(repo / "index" / only)
    _change(d, src / "c.txt", "changed\n")

    s = _incremental(d)
    now = snapshot(str(src))
    assert s["level"] == "full" and s["base"] is None and "the index does not name their trees" in s["note"], s
    _restores(d, s, now, tmp_path / "out")
    _verify_names_the_pack(d, repo)
    _repair_and_check(d, [(full, was), (s, now)], tmp_path)
