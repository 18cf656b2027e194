"""`cairn repair index` and `cairn repair sets` through the real daemon, after real damage.

A lost pack and a damaged set object: verify fails and names the repairs, the repairs report
what they drop, and the next backup stores the data again, after which every set, also the ones
taken before the damage, restores identical and verify --read-data is clean. (A backup taken
before the repair stores again what a lost pack held itself: test_daemon_missing_pack.py.) A
backup that relies on a pack cut short is refused before it commits, naming the repair; one
whose pack was deleted stores what it held again.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

import pytest
from cairnd_harness import CAIRND, env_for, snapshot


@pytest.fixture
def daemon(start_daemon, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}.bin").write_bytes(os.urandom(300_000 + i))
    (src / "a.txt").write_text("a\n" * 1000)
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.src = src
    d.repo = tmp_path / "repo"
    return d


def _backup(daemon, *args: str) -> dict:
    return json.loads(daemon.ok("--json", "backup", "--level", "full", *args))


def _files(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _dirs, files in os.walk(root) for f in files if not d.endswith("locks")}


def test_repair_index_and_sets_after_a_lost_pack_and_a_damaged_set(daemon, tmp_path):
    s1 = _backup(daemon)
    s2 = _backup(daemon, "--tag", "second")
    doomed = _backup(daemon, "--tag", "doomed")
    packs = sorted(p for d in (daemon.repo / "packs").iterdir() for p in d.iterdir())
    lost = packs[0]
    lost.unlink()
    set_file = daemon.repo / "sets" / doomed["id"]
    data = bytearray(set_file.read_bytes())
    data[20] ^= 0x01
    set_file.write_bytes(bytes(data))

    r = daemon.cli("verify")
    verify_out = r.stdout + r.stderr
    assert r.returncode == 1
    assert f"error: pack '{lost.name[:8]}..' is indexed but missing" in r.stdout
    assert f"error: set '{doomed['id'][:8]}..' is damaged" in r.stdout
    hurt = [line for line in r.stdout.splitlines() if line.startswith("error: ") and "(sets " in line]
    assert hurt and all(s1["id"][:12] in line for line in hurt), r.stdout  # which sets the loss hurts
    hint = r.stderr.splitlines()[-1]
    assert hint.startswith("hint: ") and "'cairn repair sets'" in hint and "'cairn repair index'" in hint, r.stderr

    before = _files(daemon.repo)
    dry = json.loads(daemon.ok("--json", "repair", "index", "--dry-run"))
    assert dry["dry_run"] is True and dry["missing_packs"] == [lost.name]
    assert dry["entries_dropped_missing"] > 0 and dry["hint"].startswith("take a full backup")
    text = daemon.ok("repair", "index", "--dry-run")
    assert f"pack '{lost.name[:8]}..' is missing" in text and "would drop" in text
    assert _files(daemon.repo) == before  # a dry run writes nothing

    out = daemon.ok("repair", "index")
    lines = [line for line in out.splitlines() if not line.startswith("repair index")]  # progress lines
    assert lines[0] == f"pack '{lost.name[:8]}..' is missing"
    assert lines[-2].startswith("replaced ") and lines[-1].startswith("hint: take a full backup"), out
    again = json.loads(daemon.ok("--json", "repair", "index"))
    assert again["entries_dropped_missing"] == 0 and again["hint"] is None

    r = daemon.cli("repair", "sets", "--dry-run")
    assert r.returncode == 0 and r.stdout.startswith(f"would remove set {doomed['id']}: unable to read set")
    assert set_file.exists()
    out_sets = daemon.ok("repair", "sets")
    assert out_sets.startswith(f"removed set {doomed['id']}: ")
    assert out_sets.splitlines()[-1] == "removed 1 unreadable set, kept 2 readable sets"
    assert not set_file.exists()
    assert json.loads(daemon.ok("--json", "repair", "sets"))["removed"] == []

    healed = _backup(daemon)
    assert healed["stats"]["chunks_added"] > 0
    want = snapshot(str(daemon.src))
    for s in (s1, s2, healed):
        target = tmp_path / f"restored-{s['id'][:8]}"
        daemon.ok("restore", s["id"], "--target", str(target))
        assert snapshot(str(target)) == want, s["id"]
    verified = daemon.ok("verify", "--read-data")
    assert verified.splitlines()[-1].startswith("repository ok: 3 sets") and "warning" not in verified, verified
    assert {s["id"] for s in json.loads(daemon.ok("--json", "sets"))} == {s1["id"], s2["id"], healed["id"]}
    print(verify_out, text, out, out_sets, sep="\n")


def test_repair_is_refused_by_a_read_only_daemon(start_daemon, tmp_path, daemon):
    daemon.ok("backup", "--level", "full")
    daemon.terminate(20)
    ro = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src), "--read-only")
    for args in (("repair", "index"), ("repair", "sets")):
        r = ro.cli(*args)
        assert r.returncode == 1 and "the daemon serves the repository read-only" in r.stderr, r.stderr
    assert ro.cli("repair", "index", "--dry-run").returncode == 0


def test_after_a_repair_dropped_data_the_next_set_is_a_full_even_after_a_restart(start_daemon, tmp_path):
    """An incremental carries unchanged files over by reference: after `repair index` dropped
    a damaged blob it would name it again. The daemon that repaired takes its next
    set as a full — also when it was restarted in between (the time is kept in its state)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(os.urandom(400_000 + i))
    home = str(tmp_path / "home")
    repo = tmp_path / "repo"
    d = start_daemon("--repo", str(repo), "--source", str(src), home=home)
    base = _backup(d)
    from cairn.store.repository import Repository

    r = Repository.open_local(str(repo), read_only=True)
    try:  # one flipped byte in f0.bin's first chunk (the set's listing stays readable)
        tree = r.load_tree(bytes.fromhex(r.get_set(base["id"]).tree))
        loc = r.index.get(next(e for e in tree if e.name == b"f0.bin").chunks[0])
    finally:
        r.close()
    with open(repo / "packs" / loc.pack[:2] / loc.pack, "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x20]))
    report = json.loads(d.ok("--json", "repair", "index", "--read-data"))
    assert report["entries_dropped_damaged"] == 1
    assert d.terminate(timeout=30)[0] == 0
    d = start_daemon("--repo", str(repo), "--source", str(src), home=home)
    s = json.loads(d.ok("--json", "backup", "--level", "incremental"))
    assert s["level"] == "full" and "repair index" in s["note"], s
    for ref in (s["id"], base["id"]):  # the new set, and the old one healed by it
        target = tmp_path / f"out-{ref[:6]}"
        d.ok("restore", ref, "--target", str(target))
        assert snapshot(str(target)) == snapshot(str(src))
    assert json.loads(d.ok("--json", "backup", "--level", "incremental"))["level"] == "incremental"


def test_prune_forget_forgets_the_named_set_alone(daemon):
    """`cairn prune --forget SET` (the way out for a set whose listing is lost for good): that
    set only, whatever the rules; an unknown set is exit 3 and nothing is forgotten."""
    s1, s2, s3 = _backup(daemon), _backup(daemon, "--tag", "b"), _backup(daemon, "--tag", "c")
    r = daemon.cli("prune", "--forget", "0" * 12 if not s2["id"].startswith("0") else "f" * 12)
    assert r.returncode == 3 and "unknown set" in r.stderr, r.stderr
    dry = json.loads(daemon.ok("--json", "prune", "--forget", s2["id"][:10], "--dry-run"))
    assert dry["forgotten"] == [s2["id"]]
    daemon.ok("prune", "--forget", s2["id"][:10])
    assert [s["id"] for s in json.loads(daemon.ok("--json", "sets"))] == [s1["id"], s3["id"]]


def test_a_damaged_set_object_is_named_by_sets_and_by_restore(start_daemon, daemon, tmp_path):
    good, bad = _backup(daemon), _backup(daemon, "--tag", "second")
    path = daemon.repo / "sets" / bad["id"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    # a daemon started now reads the damaged object (the running one holds the set in memory)
    assert daemon.terminate(timeout=20)[0] == 0
    d = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src))
    r = d.cli("sets")
    assert r.returncode == 0 and good["id"][:12] in r.stdout and bad["id"][:12] not in r.stdout
    assert f"cairn: warning: set '{bad['id'][:12]}' cannot be read (" in r.stderr and "checksum mismatch" in r.stderr
    assert "'cairn repair sets' removes it" in r.stderr
    r = d.cli("restore", bad["id"][:12], "--target", str(tmp_path / "t"))
    assert r.returncode == 1 and "unknown set" not in r.stderr and not (tmp_path / "t").exists()
    # one line that names the set once and says why: not "unable to read set ..: unable to read set .."
    assert _error_line(r.stderr) == f"cairn: error: unable to read set '{bad['id'][:12]}': checksum mismatch"
    r = d.cli("prune")
    assert r.returncode == 1
    assert _error_line(r.stderr) == (f"cairn: error: unable to read set '{bad['id'][:12]}..' (checksum mismatch): "
                                     "what it needs cannot be known, so nothing may be deleted")


def _error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("cairn: error: "))


def _damage_listing(daemon, set_id: str, name: bytes) -> None:
    """Flip a byte of the stored listing of top-level directory `name` of the set (daemon stopped)."""
    from cairn.store.repository import Repository

    repo = Repository.open_local(str(daemon.repo), read_only=True)
    try:
        root = bytes.fromhex(repo.get_set(set_id).tree)
        sub = next(e.subtree for e in repo.load_tree(root) if e.name == name)
        loc = repo.index.get(sub)
    finally:
        repo.close()
    pack = daemon.repo / "packs" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0x08
    pack.write_bytes(bytes(data))


def test_ls_lists_past_a_damaged_directory_and_names_it(start_daemon, daemon, tmp_path):
    (daemon.src / "z.txt").write_text("after d\n")
    s = _backup(daemon)
    assert daemon.terminate(timeout=20)[0] == 0
    _damage_listing(daemon, s["id"], b"d")
    d = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src))
    r = d.cli("ls", "-r", s["id"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("cairn: error: unable to list 'd/': ") and len(r.stderr.splitlines()) == 1, r.stderr
    names = [line.split()[-1] for line in r.stdout.splitlines()]
    assert names == ["a.txt", "d/", "z.txt"], r.stdout  # everything the damage does not hide
    assert d.cli("ls", s["id"]).returncode == 0  # the top level alone is whole


def test_a_damaged_directory_whose_name_is_not_utf8_is_named_escaped(start_daemon, daemon, tmp_path):
    """A directory named b'e\\xff\\n' (not UTF-8, with a newline) whose listing is damaged: `ls -r`
    and both kinds of restore name it as `ls -b` would and go on with everything else (a
    name with an undecodable byte in a message once failed the whole call: "internal error")."""
    odd = os.fsencode(str(daemon.src)) + b"/e\xff\n"
    os.mkdir(odd)
    with open(odd + b"/inside.bin", "wb") as f:
        f.write(os.urandom(50_000))
    s = _backup(daemon)
    assert daemon.terminate(timeout=20)[0] == 0
    _damage_listing(daemon, s["id"], b"e\xff\n")
    d = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src))
    r = d.cli("ls", "-r", s["id"])
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert r.stderr.startswith("cairn: error: unable to list 'e\\xff\\n/': "), r.stderr
    assert "d/f4.bin" in r.stdout and "a.txt" in r.stdout
    for extra in ((), ("--stream",)):
        target = tmp_path / f"t{len(extra)}"
        r = d.cli("restore", s["id"], "--target", str(target), *extra)
        assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
        assert "'e\\xff\\n/'" in r.stderr, r.stderr
        assert _files(target) == {k: v for k, v in _files(daemon.src).items() if not k.startswith("e")}


def test_a_set_whose_listing_is_in_no_index_file_is_damaged_not_unknown(start_daemon, daemon, tmp_path):
    """Every index file lost: `ls`, `diff` and `restore` of an existing set are exit 1 (damage,
    with the way out), not exit 3 (which says the set does not exist); the repair brings it back."""
    first = _backup(daemon)
    (daemon.src / "a.txt").write_text("changed\n")
    s = _backup(daemon)
    assert daemon.terminate(timeout=20)[0] == 0
    for f in (daemon.repo / "index").iterdir():
        f.unlink()
    d = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src))
    target = str(tmp_path / "t")
    for args in (("ls", s["id"]), ("diff", first["id"], s["id"]), ("restore", s["id"], "--target", target)):
        r = d.cli(*args)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert "is not in the index" in r.stderr and "cairn repair index" in r.stderr, r.stderr
    d.ok("repair", "index")
    d.ok("restore", s["id"], "--target", str(tmp_path / "t"))
    assert _files(tmp_path / "t") == _files(daemon.src)


def test_verify_read_data_reports_a_truncated_pack_once(daemon):
    """A pack cut short is one error line of `cairn verify --read-data`, as truncated (not also as
    a checksum mismatch), besides the lines naming the sets and paths it hurts; `repair index`
    then drops what was cut, and the next backup stores it again."""
    _backup(daemon)
    pack = max((p for d in (daemon.repo / "packs").iterdir() for p in d.iterdir()), key=lambda p: p.stat().st_size)
    os.truncate(pack, pack.stat().st_size // 2)
    for args in (("verify", "--read-data"), ("verify",)):
        r = daemon.cli(*args)
        assert r.returncode == 1, (r.stdout, r.stderr)
        errors = [line for line in r.stdout.splitlines() if line.startswith("error: ")]
        own = [line for line in errors if "(set" not in line]
        assert len(own) == 1 and own[0].startswith(f"error: pack '{pack.name[:8]}..' is truncated: "), r.stdout
        assert errors[1:] and all(line.endswith(")") and f"pack '{pack.name[:8]}..' is truncated" in line
                                  for line in errors[1:]), r.stdout
        assert "checksum mismatch" not in r.stdout, r.stdout
        assert f"repository has {len(errors)} errors" in r.stderr, r.stderr
    daemon.ok("repair", "index")
    _backup(daemon)
    daemon.ok("verify", "--read-data")


def test_a_base_whose_set_object_is_damaged_is_shown_damaged_not_pruned(start_daemon, daemon):
    """`cairn sets` marks a base that is not listed; one that is not listed because its set object
    cannot be read is damaged, and saying "pruned" would send the operator the wrong way."""
    full = _backup(daemon)
    (daemon.src / "new.txt").write_text("new\n")
    inc = json.loads(daemon.ok("--json", "backup", "--level", "incremental"))
    assert inc["base"] == full["id"]
    path = daemon.repo / "sets" / full["id"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    assert daemon.terminate(timeout=20)[0] == 0  # a new daemon reads the damaged object
    d = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src))

    r = d.cli("sets")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith(inc["id"][:12]))
    assert f"{full['id'][:12]} (damaged)" in row and "(pruned)" not in row, r.stdout
    listed = json.loads(d.ok("--json", "sets"))
    assert [(s["id"], s["base_damaged"], s["base_pruned"]) for s in listed] == [(inc["id"], True, False)]

    d.ok("repair", "sets")  # removed: from now on the base is gone, as if pruned
    assert f"{full['id'][:12]} (pruned)" in d.ok("sets")
    listed = json.loads(d.ok("--json", "sets"))
    assert [(s["base_damaged"], s["base_pruned"]) for s in listed] == [(False, True)]


def test_an_incremental_reads_again_an_unchanged_file_whose_index_file_was_lost(start_daemon, daemon, tmp_path):
    """The index file naming a file's content is lost (emptied by a crash of the disk), the
    listings of the newest set are still indexed: an incremental finds the file unchanged and
    would carry its content over by reference, committing a set that names blobs no index
    file names (not restorable until a repair). It reads the file again instead, so the new
    set restores whole at once, and it says so."""
    past = time.time() - 3600  # older than the sets: not read again by the racy-timestamp rule
    for d, _dirs, files in os.walk(daemon.src):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))
    first = _backup(daemon)
    (first_index,) = os.listdir(daemon.repo / "index")
    (daemon.src / "later.txt").write_text("later\n")
    os.utime(daemon.src / "later.txt", (past, past))
    json.loads(daemon.ok("--json", "backup", "--level", "incremental"))  # its listings in a new index file
    assert daemon.terminate(timeout=20)[0] == 0
    os.truncate(daemon.repo / "index" / first_index, 0)
    d = start_daemon("--repo", str(daemon.repo), "--source", str(daemon.src))

    s = json.loads(d.ok("--json", "backup", "--level", "incremental"))
    assert s["level"] == "incremental", s
    target = tmp_path / "restored"
    d.ok("restore", s["id"], "--target", str(target))
    assert snapshot(str(target)) == snapshot(str(daemon.src))
    assert any("is not in the index: read from the source instead" in n for n in s["extra"].get("notes", [])), s
    r = d.cli("verify")
    assert r.returncode == 1 and s["id"][:12] not in r.stdout, r.stdout  # only the older sets are hurt
    d.ok("repair", "index")
    d.ok("verify", "--read-data")
    d.ok("restore", first["id"], "--target", str(tmp_path / "first"))


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_wal_segment_whose_pack_is_lost_is_removed_by_repair_wal(daemon, tmp_path, damage):
    """A WAL catalog entry that reads but whose chunks are gone for good (their pack lost or
    cut short, then `repair index` dropped them) kept verify failing and prune refusing for
    ever: no repair removed it. Verify's hint names `repair wal` after `repair index`, which
    removes it, also while the pack cut short is still there (no index names it: prune, which
    would delete it, cannot run yet)."""
    kept = _backup(daemon)
    before = {p.name for p in (daemon.repo / "packs").rglob("*") if p.is_file()}
    seg = tmp_path / "000000010000000000000001"
    seg.write_bytes(os.urandom(1_200_000))
    daemon.ok("wal-push", str(seg), "--system-id", "7")
    for pack in [p for p in (daemon.repo / "packs").rglob("*") if p.is_file() and p.name not in before]:
        pack.unlink() if damage == "deleted" else os.truncate(pack, 0)

    r = daemon.cli("verify")
    assert r.returncode == 1 and "WAL file '7@000000010000000000000001'" in r.stdout, (r.stdout, r.stderr)
    hint = r.stderr.splitlines()[-1]
    assert hint.index("'cairn repair index'") < hint.index("'cairn repair wal'"), r.stderr
    daemon.ok("repair", "index")
    r = daemon.cli("prune")
    assert r.returncode == 1 and "the WAL archive" in r.stderr and "'cairn repair wal'" in r.stderr, r.stderr

    dry = daemon.ok("repair", "wal", "--dry-run")
    assert dry.startswith("would remove WAL catalog entry 7@000000010000000000000001: ") and "data is lost" in dry
    out = daemon.ok("repair", "wal")
    assert out.splitlines()[-1] == "removed 1 WAL catalog entry that cannot be read or whose data is lost, " \
                                   "kept 0 readable entries", out
    assert not (daemon.repo / "wal" / "7@000000010000000000000001").exists()
    daemon.ok("prune")
    verified = daemon.ok("verify", "--read-data")
    assert verified.splitlines()[-1].startswith("repository ok: 1 set") and "warning" not in verified, verified
    daemon.ok("restore", kept["id"], "--target", str(tmp_path / "restored"))
    assert snapshot(str(tmp_path / "restored")) == snapshot(str(daemon.src))
    assert daemon.ok("wal-push", str(seg), "--system-id", "7").startswith("archived 000000010000000000000001")


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_an_incremental_relying_on_a_damaged_pack_is_refused_before_it_commits(daemon, tmp_path, damage):
    """An incremental carried unchanged files over by reference without asking whether their
    pack is there and whole: with that pack cut short (a torn copy, a full disk) or deleted it
    committed a set that did not restore. With the pack cut short it is refused, naming the
    pack and the repair, as a full's deduplicated blobs are; after the repair a backup works.
    With the pack deleted (found missing when the backup starts) the files are read again and
    the set commits; it restores, and so does its base, whose lost chunks it stored again."""
    _backup(daemon)
    (daemon.src / "d" / "more.bin").write_bytes(os.urandom(1000))
    base = _backup(daemon)  # its listings lie in a pack of their own, f0.bin's data in the first set's
    from cairn.store.repository import Repository

    r = Repository.open_local(str(daemon.repo), read_only=True)
    try:
        tree = r.load_tree(bytes.fromhex(r.get_set(base["id"]).tree))
        sub = r.load_tree(next(e for e in tree if e.name == b"d").subtree)
        pack = r.index.get(next(e for e in sub if e.name == b"f0.bin").chunks[0]).pack
        assert pack != r.index.get(bytes.fromhex(r.get_set(base["id"]).tree)).pack
    finally:
        r.close()
    if damage == "truncated":
        os.truncate(daemon.repo / "packs" / pack[:2] / pack, 0)
    else:
        os.unlink(daemon.repo / "packs" / pack[:2] / pack)
    (daemon.src / "new.txt").write_text("new\n")

    sets_before = json.loads(daemon.ok("--json", "sets"))
    r = daemon.cli("--json", "backup", "--level", "incremental")
    if damage == "truncated":
        assert r.returncode == 1, (r.stdout, r.stderr)
        refused = json.loads(r.stderr)["error"]
        assert f"pack '{pack[:8]}..' holds blobs this backup relies on and is truncated: 0 bytes" \
            in refused["message"]
        assert "'cairn repair index'" in refused["hint"]
        assert json.loads(daemon.ok("--json", "sets")) == sets_before  # no set relies on what is lost
        daemon.ok("repair", "index")
        healed = _backup(daemon)
    else:
        assert r.returncode == 0, (r.stdout, r.stderr)
        healed = json.loads(r.stdout)
        assert any(f"pack '{pack[:8]}..' the index names is missing" in n for n in healed["extra"]["notes"]), healed
    for ref in (healed["id"], base["id"]):  # the new set, and the base healed by it
        target = tmp_path / f"restored-{ref[:8]}"
        daemon.ok("restore", ref, "--target", str(target))
        want = {k: v for k, v in snapshot(str(daemon.src)).items() if ref == healed["id"] or k != "new.txt"}
        got = snapshot(str(target))
        assert {k: v[-1] for k, v in got.items() if v[0] == "file"} == \
               {k: v[-1] for k, v in want.items() if v[0] == "file"}


@pytest.mark.parametrize("kind", ["sets", "wal"])
def test_two_objects_whose_names_were_swapped_are_removed_by_their_repair(start_daemon, tmp_path, kind):
    """The only two set objects (or WAL catalog entries) of an encrypted repository swapped
    their names: each fails its check, and the repair verify names refused ("all 2 of them fail
    their check, which points to a wrong config or key") although the repository's own key
    opens its index. It removes them; a wrong config or key, which opens no index file, is still
    refused (tests/unit/store/test_repair.py)."""
    src, repo, key = tmp_path / "src", tmp_path / "repo", tmp_path / "key"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(300_000))
    key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    r = subprocess.run([CAIRND, "--repo", str(repo), "--init", "--key-file", str(key)], capture_output=True,
                       text=True, timeout=60, env=env_for())
    assert r.returncode == 0, r.stderr
    args = ("--repo", str(repo), "--source", str(src), "--key-file", str(key))
    daemon = start_daemon(*args)
    first = _backup(daemon)
    for n in (1, 2):
        seg = tmp_path / f"00000001000000000000000{n}"
        seg.write_bytes(os.urandom(2000 + n))
        daemon.ok("wal-push", str(seg), "--system-id", "7")
    second = _backup(daemon, "--tag", "second")
    names = [first["id"], second["id"]] if kind == "sets" else \
        [f"7@00000001000000000000000{n}" for n in (1, 2)]
    a, b = (repo / kind / name for name in names)
    data_a = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data_a)
    daemon.terminate(20)  # (the running daemon holds the sets it read)
    d = start_daemon(*args)

    r = d.cli("verify")
    assert r.returncode == 1 and f"'cairn repair {kind}'" in r.stderr, (r.stdout, r.stderr)
    out = d.ok("repair", kind)
    assert all(any(line.startswith("removed ") and f" {name}: " in line for line in out.splitlines())
               for name in names), out
    for name in names:
        assert not (repo / kind / name).exists()
    d.ok("prune")
    if kind == "wal":
        verified = d.ok("verify", "--read-data")
        assert verified.splitlines()[-1].startswith("repository ok: 2 sets"), verified


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_full_relying_on_a_damaged_pack_for_small_files_is_refused(start_daemon, tmp_path, damage):
    """A full found the one chunk of each small file (up to the chunker's minimum size) stored
    without noting where: with that pack deleted or cut short it committed a set that did not
    restore. With the pack cut short it is refused as the packs of larger files' chunks are,
    and after the repair a full stores them again; with the pack deleted (found missing when
    the backup starts) the full stores them again itself."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(4):
        (src / "d" / f"small-{i}.bin").write_bytes(os.urandom(100_000 + i))
    repo = tmp_path / "repo"
    d = start_daemon("--repo", str(repo), "--source", str(src))
    _backup(d)
    first = {p.name for p in (repo / "packs").rglob("*") if p.is_file()}
    (src / "d" / "more.bin").write_bytes(os.urandom(1000))
    _backup(d)  # its listings lie in a pack of their own; the small files' data in the first set's
    (pack,) = first
    if damage == "truncated":
        os.truncate(repo / "packs" / pack[:2] / pack, 1000)
    else:
        os.unlink(repo / "packs" / pack[:2] / pack)

    r = d.cli("--json", "backup", "--level", "full")
    if damage == "truncated":
        assert r.returncode == 1, (r.stdout, r.stderr)
        message = json.loads(r.stderr)["error"]["message"]
        assert f"pack '{pack[:8]}..' holds blobs this backup relies on and is truncated: 1000 bytes" in message
        d.ok("repair", "index")
        healed = _backup(d)
    else:
        assert r.returncode == 0, (r.stdout, r.stderr)
        healed = json.loads(r.stdout)
    d.ok("restore", healed["id"], "--target", str(tmp_path / "restored"))
    assert snapshot(str(tmp_path / "restored")) == snapshot(str(src))
