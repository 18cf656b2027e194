"""The remaining client commands through the real daemon: verify, prune, wal-push/wal-fetch,
status, and the output forms of backup (plain lines, --json, tags)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest


@pytest.fixture
def daemon(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.src = src
    return d


def test_backup_output_forms_and_status(daemon):
    plain = daemon.ok("backup", "--level", "full", "--tag", "first").splitlines()
    assert plain[0] == "started full backup of 'src'"
    assert plain[-2].startswith("full set of source 'src' done in ")
    first = json.loads(daemon.ok("backup", "--json", "--level", "full", "--tag", "again"))
    assert first["level"] == "full" and first["tags"] == ["again"] and first["stats"]["files"] == 1
    (daemon.src / "b.txt").write_text("b\n")
    second = json.loads(daemon.ok("--json", "backup"))
    assert second["level"] == "incremental" and second["base"] == first["id"]
    assert second["stats"]["added"] == 1 and second["stats"]["modified"] == 0

    status = json.loads(daemon.ok("--json", "status"))
    src = status["sources"][0]
    assert src["name"] == "src" and src["sets"] == 3 and src["running"] is None
    assert src["last"]["full"]["id"] == first["id"] and src["last"]["incremental"]["id"] == second["id"]
    text = daemon.ok("status")
    assert re.search(rf"last incremental:\s+{second['id'][:12]}\s", text)
    assert "sets: 3" in text

    r = daemon.cli("backup", "--tag", "has space")
    assert r.returncode == 2 and "invalid tag" in r.stderr


def test_verify_and_prune(daemon):
    ids = []
    for i in range(3):
        (daemon.src / f"f{i}.txt").write_text(f"{i}\n" * 1000)
        ids.append(daemon.ok("backup", "--level", "full").strip().splitlines()[-1])
    out = daemon.ok("verify")
    assert out.startswith("repository ok: 3 sets")
    report = json.loads(daemon.ok("--json", "verify", "--set", ids[0][:10], "--read-data"))
    assert report["ok"] is True and report["chunks_checked"] > 0

    nothing = json.loads(daemon.ok("--json", "prune"))  # no policy: only unreferenced data is freed
    assert nothing["forgotten"] == [] and len(nothing["kept"]) == 3
    dry = json.loads(daemon.ok("--json", "prune", "--dry-run", "--keep-full", "1"))
    assert dry["dry_run"] is True and sorted(dry["forgotten"]) == sorted(ids[:2])
    assert len(json.loads(daemon.ok("--json", "sets"))) == 3
    done = json.loads(daemon.ok("--json", "prune", "--keep-full", "1"))
    assert sorted(done["forgotten"]) == sorted(ids[:2]) and done["kept"] == [ids[2]]
    assert [s["id"] for s in json.loads(daemon.ok("--json", "sets"))] == [ids[2]]
    assert daemon.ok("verify").startswith("repository ok: 1 set ")
    assert daemon.cli("ls", ids[0]).returncode == 3


def test_verify_read_data_subset(daemon, tmp_path):
    """--read-data-subset through the daemon: the groups 1/2 and 2/2 read every pack between them,
    the one holding a damaged pack fails (exit 1) and the other passes; a bad subset is one line
    and exit 2."""
    for i in range(4):
        (daemon.src / f"r{i}.bin").write_bytes(os.urandom(300_000))
        daemon.ok("backup", "--level", "full")
    whole = json.loads(daemon.ok("--json", "verify", "--read-data"))
    packs_dir = tmp_path / "repo" / "packs"
    packs = sorted(p for p in packs_dir.rglob("*") if p.is_file())
    assert whole["packs_checked"] == len(packs) >= 1
    victim = packs[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x10
    victim.write_bytes(bytes(data))
    read, failed = 0, []
    for n in (1, 2):
        r = daemon.cli("verify", "--read-data-subset", f"{n}/2")
        assert r.returncode in (0, 1), r.stderr
        assert f"(read-data subset {n}/2)" in r.stdout + r.stderr
        if r.returncode == 1:
            failed.append(n)
            assert f"pack '{victim.name[:8]}" in r.stdout, r.stdout
        read += json.loads(daemon.cli("--json", "verify", "--read-data-subset", f"{n}/2").stdout)["packs_checked"]
    assert failed == [int(victim.name[:8], 16) % 2 + 1] and read == len(packs)
    r = daemon.cli("verify", "--read-data-subset", "3/2")
    assert r.returncode == 2 and "invalid read-data subset '3/2'" in r.stderr and len(r.stderr.splitlines()) <= 2


def test_a_dead_hosts_lock_is_named_by_prune_and_removed_by_unlock(daemon, tmp_path):
    """A host that died mid-backup leaves a fresh-looking lock: prune frees nothing and says which
    lock its marked packs wait for; `cairn unlock` keeps it (not stale), `--host` removes it, and
    the next prune frees the packs."""
    first = daemon.ok("backup", "--level", "full").strip().splitlines()[-1]
    (daemon.src / "big.bin").write_bytes(os.urandom(400_000))
    daemon.ok("backup", "--level", "full")
    locks = tmp_path / "repo" / "locks"
    (locks / ("f" * 32)).write_text(json.dumps({"host": "beta", "pid": 4242, "pid_space": "elsewhere",
                                                 "exclusive": False, "purpose": "backup of source 'app'",
                                                 "time": time.time()}))
    (daemon.src / "big.bin").unlink()
    out = daemon.ok("prune", "--keep-last", "1")
    assert "wait for operations that were running when they were marked: backup of source 'app' on host beta " \
           "(pid 4242" in out and "'cairn unlock --host H'" in out, out
    assert first not in daemon.ok("sets")
    kept = daemon.ok("unlock")
    assert "kept lock ffffffffffff: backup of source 'app' on host beta" in kept and "removed 0 locks" in kept
    r = daemon.cli("unlock", "--host", "")
    assert r.returncode == 2
    gone = json.loads(daemon.ok("--json", "unlock", "--host", "beta"))
    assert [x["host"] for x in gone["removed"]] == ["beta"] and gone["kept"] == []
    freed = json.loads(daemon.ok("--json", "prune"))
    assert freed["packs_deleted"] > 0 and freed["waiting"] == {"packs": 0, "bytes": 0, "on": []}
    assert "repository ok: 1 set" in daemon.ok("verify", "--read-data")


def test_another_machine_under_this_host_name_is_a_status_warning(daemon, tmp_path):
    """Sets record the machine that took them; a set another machine took under this daemon's
    host name after this machine's first one makes status warn (a cloned configuration)."""
    import socket

    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository

    mine = json.loads(daemon.ok("--json", "backup", "--level", "full"))
    machine = mine["extra"].get("machine")
    assert machine and len(machine) >= 16
    assert json.loads(daemon.ok("--json", "status"))["daemon"]["warnings"] == []
    repo = Repository.open_local(str(tmp_path / "repo"))
    try:  # the clone: same host name, another machine id
        repo.backup(BackupRequest(source="src", paths=(str(daemon.src),), hostname=socket.gethostname(),
                                  extra={"machine": "f" * 32}))
    finally:
        repo.close()
    status = json.loads(daemon.ok("--json", "status"))
    (warning,) = status["daemon"]["warnings"]
    assert f"the host name '{socket.gethostname()}' is also used by another machine (machine id ffffffffffff)" \
        in warning
    assert "warning: the host name" in daemon.ok("status")


def test_wal_push_and_fetch(daemon, tmp_path):
    seg = tmp_path / "000000010000000000000001"
    data = os.urandom(3 << 20)  # more than one message
    seg.write_bytes(data)
    assert daemon.ok("wal-push", str(seg)).strip() == "archived 000000010000000000000001"
    again = daemon.ok("wal-push", str(seg)).strip()
    assert again == "000000010000000000000001 was already archived (identical)"
    other = tmp_path / "other" / "000000010000000000000001"
    other.parent.mkdir()
    other.write_bytes(b"different")
    r = daemon.cli("wal-push", str(other))
    assert r.returncode == 1 and r.stderr.startswith("cairn: error: ")

    dest = tmp_path / "restored" / "RECOVERYXLOG"
    dest.parent.mkdir()
    daemon.ok("wal-fetch", "000000010000000000000001", str(dest))
    assert dest.read_bytes() == data
    missing = daemon.cli("wal-fetch", "000000010000000000000009", str(tmp_path / "x"))
    assert missing.returncode == 3
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(str(tmp_path / "x") + ".cairn-tmp")
    r = daemon.cli("wal-push", str(tmp_path / "nope"))
    assert r.returncode == 3 and "unable to read WAL file" in r.stderr


def test_copy_names_a_set_whose_data_is_lost_copies_the_rest_and_exits_1(daemon, tmp_path):
    """A lost pack spoils one set: `cairn copy` says which, copies every other set, exits 1; the
    rerun after the damage is gone from the selection copies nothing twice."""
    repo = tmp_path / "repo"

    def packs() -> set[str]:
        return {p.name for p in (repo / "packs").rglob("*") if p.is_file()}

    first = daemon.ok("backup", "--level", "full").strip().splitlines()[-1]
    before = packs()
    (daemon.src / "only-in-second.bin").write_bytes(os.urandom(300_000))
    second = daemon.ok("backup", "--level", "full").strip().splitlines()[-1]
    seconds = packs() - before  # the second set's own packs: its new file's data and its root tree
    (daemon.src / "only-in-second.bin").unlink()
    third = daemon.ok("backup", "--level", "full").strip().splitlines()[-1]
    for p in seconds:
        os.unlink(next((repo / "packs").rglob(p)))
    pw = tmp_path / "copy.pass"
    pw.write_text("copy passphrase\n")
    dest = tmp_path / "copy-dest"

    r = daemon.cli("copy", "--to", str(dest), "--to-passphrase-file", str(pw), timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"warning: set {second[:12]} not copied: unable to read pack" in r.stdout
    assert "1 set could not be copied" in r.stderr and "hint:" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    assert "copied 2 sets" in r.stdout and first[:12] in r.stdout and third[:12] in r.stdout

    j = daemon.cli("--json", "copy", "--to", str(dest), "--to-passphrase-file", str(pw), timeout=120)
    assert j.returncode == 1
    report = json.loads(j.stdout)
    assert [f["set"] for f in report["failed"]] == [second] and report["copied"] == []
    assert sorted(p["set"] for p in report["present"]) == sorted([first, third])
    assert json.loads(j.stderr)["error"]["message"].startswith("1 set could not be copied")


def test_copy_to_a_key_file_not_made_yet_says_how_to_make_one(daemon, tmp_path):
    """The README's `cairn copy --to DIR --to-key-file F` with no F yet: one line and the command
    that makes F, which then works as printed; nothing is written before."""
    daemon.ok("backup", "--level", "full")
    key, dest = tmp_path / "keys dir" / "offsite.key", tmp_path / "offsite"
    key.parent.mkdir()
    r = daemon.cli("copy", "--to", str(dest), "--to-key-file", str(key))
    assert r.returncode == 2 and not dest.exists()
    error, hint = r.stderr.strip().splitlines()
    assert error == f"cairn: error: unable to read key file '{key}': No such file or directory"
    command = hint.removeprefix("hint: make one with: ").split(", and keep a copy")[0]
    assert command != hint
    subprocess.run(["sh", "-c", command], check=True)
    assert oct(os.stat(key).st_mode & 0o777) == oct(0o600)
    assert "copied 1 set" in daemon.ok("copy", "--to", str(dest), "--to-key-file", str(key), timeout=120)
