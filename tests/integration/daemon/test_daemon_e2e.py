"""End to end through the real daemon and client: full -> changes -> incremental -> changes ->
differential; the listing and diffs tell the truth; every set restores to the tree as it was;
a read-only daemon on a copy of the repository restores the same."""

from __future__ import annotations

import json
import os
import shutil

from cairnd_harness import snapshot, write_config


def build_tree(src: str) -> None:
    os.makedirs(os.path.join(src, "docs", "guide"))
    os.makedirs(os.path.join(src, "data"))
    os.makedirs(os.path.join(src, "empty"))
    files = {
        "docs/readme.txt": b"read me\n",
        "docs/guide/intro.md": b"# intro\n" * 100,
        "data/small.txt": b"small\n",
        "data/blob.bin": os.urandom(300_000),
        "exec.sh": b"#!/bin/sh\necho hi\n",
    }
    for rel, data in files.items():
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(src, "exec.sh"), 0o755)
    os.symlink("docs/readme.txt", os.path.join(src, "link-to-readme"))


def first_changes(src: str) -> None:
    """Edit, add, delete, rename a directory, chmod, chown, new symlink."""
    with open(os.path.join(src, "docs/readme.txt"), "ab") as f:
        f.write(b"more\n")
    with open(os.path.join(src, "data/new.txt"), "wb") as f:
        f.write(b"new file\n")
    os.unlink(os.path.join(src, "data/small.txt"))
    os.rename(os.path.join(src, "docs/guide"), os.path.join(src, "docs/manual"))
    os.chmod(os.path.join(src, "exec.sh"), 0o700)
    os.chown(os.path.join(src, "data/blob.bin"), 1234, 1234)
    os.symlink("data/new.txt", os.path.join(src, "latest-data"))


def second_changes(src: str) -> None:
    """Edit again, add in the renamed directory, drop a symlink, retarget another."""
    with open(os.path.join(src, "data/new.txt"), "wb") as f:
        f.write(b"new file, second version, longer\n")
    with open(os.path.join(src, "docs/manual/extra.md"), "wb") as f:
        f.write(b"extra\n")
    os.unlink(os.path.join(src, "latest-data"))
    os.unlink(os.path.join(src, "link-to-readme"))
    os.symlink("docs/manual/intro.md", os.path.join(src, "link-to-readme"))


def expected_diff(old: dict, new: dict) -> dict[str, set[str]]:
    """What changed between two snapshots; directories count only for being added or deleted."""
    return {
        "added": set(new) - set(old),
        "deleted": set(old) - set(new),
        "modified": {p for p in set(old) & set(new) if old[p] != new[p] and new[p][0] != "dir"},
    }


def reported_diff(d: dict) -> dict[str, set[str]]:
    """The diff as the daemon reports it (directories end in '/'), normalised to snapshot keys."""
    return {k: {p.rstrip("/") for p in d[k]} for k in ("added", "deleted", "modified")}


def backup(daemon, level: str) -> str:
    out = daemon.ok("backup", "--source", "app", "--level", level)
    set_id = out.strip().splitlines()[-1]
    assert len(set_id) == 64 and all(c in "0123456789abcdef" for c in set_id), out
    return set_id


def check_diff(daemon, a: str, b: str, old: dict, new: dict) -> None:
    got = reported_diff(json.loads(daemon.ok("--json", "diff", a, b)))
    want = expected_diff(old, new)
    assert got["added"] == want["added"]
    assert got["deleted"] == want["deleted"]
    # Directories whose entries changed may be listed as modified; nothing else may be.
    assert want["modified"] <= got["modified"]
    extra = got["modified"] - want["modified"]
    assert all(new[p][0] == "dir" for p in extra), extra


def restore_and_compare(daemon, set_id: str, target: str, want: dict) -> None:
    out = daemon.ok("restore", set_id[:10], "--target", target)
    assert "restored set" in out
    assert snapshot(target) == want


def test_full_incremental_differential_then_restore_every_set(start_daemon, rundir, tmp_path):
    src = str(tmp_path / "src")
    build_tree(src)
    repo = str(tmp_path / "repo")
    sock = os.path.join(rundir, "e2e.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo, sock, {"app": src})
    daemon = start_daemon("--config", config, socket_path=sock)

    id_full = backup(daemon, "full")
    snap_full = snapshot(src)
    first_changes(src)
    id_inc = backup(daemon, "incremental")
    snap_inc = snapshot(src)
    second_changes(src)
    id_diff = backup(daemon, "differential")
    snap_diff = snapshot(src)

    # The listing: levels, bases and changed counts against each base.
    sets = json.loads(daemon.ok("sets", "--json"))
    assert [s["id"] for s in sets] == [id_full, id_inc, id_diff]
    assert [s["level"] for s in sets] == ["full", "incremental", "differential"]
    assert [s["base"] for s in sets] == [None, id_full, id_full]
    assert all(s["status"] == "ok" and s["source"] == "app" for s in sets)
    for s, base_snap, snap in ((sets[1], snap_full, snap_inc), (sets[2], snap_full, snap_diff)):
        want = expected_diff(base_snap, snap)
        assert s["stats"]["added"] == len(want["added"])
        assert s["stats"]["deleted"] == len(want["deleted"])
        assert s["stats"]["modified"] >= len(want["modified"])
    assert sets[0]["stats"]["files"] == sum(1 for v in snap_full.values() if v[0] == "file")
    table = daemon.ok("sets").splitlines()
    assert table[0].split() == ["ID", "TIME", "END", "SOURCE", "LEVEL", "BASE", "HOST", "FILES", "SIZE", "CHANGED",
                                "ADDED", "STATUS", "DATABASES", "TAGS"]
    rows = [line.split() for line in table[1:]]
    assert [r[0] for r in rows] == [i[:12] for i in (id_full, id_inc, id_diff)]
    assert [r[7] for r in rows] == [s["hostname"] for s in sets]
    assert [r[5] for r in rows] == ["full", "incremental", "differential"]
    assert [r[6] for r in rows] == ["-", id_full[:12], id_full[:12]]

    # The diffs, and the human form of one of them.
    check_diff(daemon, id_full, id_inc, snap_full, snap_inc)
    check_diff(daemon, id_inc, id_diff, snap_inc, snap_diff)
    check_diff(daemon, id_full, id_diff, snap_full, snap_diff)
    human = daemon.ok("diff", id_full[:8], id_inc[:8]).splitlines()
    assert "- data/small.txt" in human and "+ data/new.txt" in human and "~ docs/readme.txt" in human

    # Browsing: the renamed directory and the symlink as they were in the incremental.
    listing = daemon.ok("ls", id_inc, "docs")
    assert "manual/" in listing and "guide" not in listing
    root = json.loads(daemon.ok("--json", "ls", id_inc))
    links = {e["name"]: e["target"] for e in root if e["kind"] == "symlink"}
    assert links == {"link-to-readme": "docs/readme.txt", "latest-data": "data/new.txt"}

    # Every set restores to the tree as it was when it was taken, and `latest` is the newest.
    for set_id, snap, name in ((id_full, snap_full, "r1"), (id_inc, snap_inc, "r2"), (id_diff, snap_diff, "r3")):
        restore_and_compare(daemon, set_id, str(tmp_path / name), snap)
    daemon.ok("restore", "latest", "--source", "app", "--target", str(tmp_path / "r4"))
    assert snapshot(str(tmp_path / "r4")) == snap_diff

    # A partial restore writes just the asked subtree.
    daemon.ok("restore", id_inc, "docs/manual", "--target", str(tmp_path / "part"))
    assert set(snapshot(str(tmp_path / "part"))) == {"docs", "docs/manual", "docs/manual/intro.md"}

    # A non-empty target is refused unless asked, and then overwritten to the set's content.
    refused = daemon.cli("restore", id_full, "--target", str(tmp_path / "r3"))
    assert refused.returncode == 1
    assert refused.stderr.startswith("cairn: error: restore target") and "not empty" in refused.stderr
    assert snapshot(str(tmp_path / "r3")) == snap_diff
    daemon.ok("restore", id_full, "--target", str(tmp_path / "r3"), "--overwrite")
    restored = snapshot(str(tmp_path / "r3"))
    assert {k: v for k, v in restored.items() if k in snap_full} == snap_full

    code, _ = daemon.terminate(timeout=30)
    assert code == 0

    # Disaster recovery: a read-only daemon on a copy of the repository restores the same.
    copy = str(tmp_path / "repo-copy")
    shutil.copytree(repo, copy, symlinks=True)
    ro = start_daemon("--repo", copy, "--read-only")
    ro_sets = json.loads(ro.ok("--json", "sets"))
    assert [s["id"] for s in ro_sets] == [id_full, id_inc, id_diff]
    for set_id, snap, name in ((id_full, snap_full, "c1"), (id_inc, snap_inc, "c2"), (id_diff, snap_diff, "c3")):
        restore_and_compare(ro, set_id, str(tmp_path / name), snap)
    refused = ro.cli("backup", "--source", "app")
    assert refused.returncode != 0
    status = json.loads(ro.ok("--json", "status"))
    assert status["daemon"]["read_only"] is True
    assert [s["name"] for s in status["sources"]] == ["app"]  # known from its sets
