"""A set taken by older code holding a file that grew while it was read: its entry records the
size the file had after the read, larger than the bytes its chunks hold. Real daemon, real
verify and restore over gRPC; the set is written through the store API in that shape, as the
older code wrote it.

verify (the structure check, no --read-data) reports it as an error naming the set and the
path, with advice, and exits 1; restore writes the bytes the set holds, never NULs up to the
recorded size, says so in a warning (and in the JSON report) and exits 0.
"""

from __future__ import annotations

import json
import os

from cairn.store.content.packs import TYPE_TREE
from cairn.store.repository import Repository
from cairn.store.snapshots.sets import encode_set, set_fields
from cairn.store.snapshots.trees import encode_tree
from cairnd_harness import snapshot

GREW = 50_000  # bytes the file grew by while the older code read it


def _grown_set(repo_path: str, full_id: str) -> str:
    """A copy of set `full_id` whose 'grown.bin' records GREW more bytes than its chunks hold
    and is flagged fuzzy, written as a new, later set of the same source: its id."""
    repo = Repository.open_local(repo_path)
    try:
        full = next(s for s in repo.list_sets() if s.id == full_id)
        entries = repo.load_tree(bytes.fromhex(full.tree))
        grown = next(e for e in entries if e.name == b"grown.bin")
        grown.size += GREW
        writer = repo.writer()
        tree = writer.put_data(TYPE_TREE, encode_tree(entries))
        writer.finish()
        fields = set_fields(full)
        fields.update(tree=tree.hex(), level="incremental", base=full.id, time_start=full.time_start + 1,
                      time_end=full.time_end + 1)
        fields["stats"].update(fuzzy_paths=["grown.bin"], bytes_total=full.stats.bytes_total + GREW)
        set_id, data = encode_set(fields)
        repo.backend.put("sets", set_id, data)
        return set_id
    finally:
        repo.close()


def test_verify_names_a_file_recorded_larger_than_its_content_and_restore_pads_nothing(start_daemon, tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "grown.bin").write_bytes(os.urandom(300_000))
    (src / "other.txt").write_text("other\n")
    d = start_daemon("--repo", str(repo), "--source", str(src))
    full = json.loads(d.ok("--json", "backup", "--level", "full"))
    was = snapshot(str(src))
    old = _grown_set(str(repo), full["id"])

    r = d.cli("verify")
    assert r.returncode == 1, (r.stdout, r.stderr)
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("error: ")]
    assert line == (f"error: file records {300_000 + GREW} bytes but its chunks hold 300000: it grew while it was "
                    f"read (a set taken by an older Cairn), and a restore writes only the 300000 bytes stored "
                    f"(set {old[:12]}; grown.bin)"), r.stdout
    assert "a full backup of its source stores it whole" in r.stderr, r.stderr
    report = json.loads(d.cli("--json", "verify").stdout)
    (problem,) = report["errors"]
    assert problem["sets"] == [old] and problem["paths"] == ["grown.bin"], report
    d.ok("verify", "--set", full["id"])  # the set taken whole is fine

    out = tmp_path / "out"
    r = d.cli("restore", old, "--target", str(out))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (f"cairn: warning: 'grown.bin' is restored with the 300000 bytes its set holds, not the "
            f"{300_000 + GREW} its entry records") in r.stderr, r.stderr
    assert snapshot(str(out)) == was  # what was read, no NULs after it
    doc = json.loads(d.ok("--json", "restore", old, "--target", str(tmp_path / "again")))
    assert doc["errors"] == [] and len(doc["notices"]) == 1 and "'grown.bin'" in doc["notices"][0], doc
    assert (tmp_path / "again" / "grown.bin").stat().st_size == 300_000
