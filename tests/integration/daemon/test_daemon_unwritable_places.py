"""The real cairnd where it must create its files for the first time and cannot: a state
directory on a full file system, or on a read-only one, and a repository on a read-only one.

What must hold: each is one line naming the path and the reason (never a traceback, never an
OSError's "[Errno N]"), and nothing is lost:
- a new state directory on a full file system: cairnd starts and serves (its lock is held
  without the pid the lock file would hold), the scheduler's failed saves of its record are
  one line, and a later start with room writes the pid;
- a state directory on a read-only file system, missing, new or used: cairnd exits 1 with one
  line naming the directory or its lock file and "Read-only file system", and a used one keeps
  every file;
- a repository on a read-only file system: cairnd serves its sets, a backup fails with one
  line naming the lock it could not write, and once the file system is writable again the
  next backup succeeds and every set restores identical;
- a host whose key is write-only, with its state directory full: a backup is refused in one
  line before it reads anything (its own sets and trees are recorded there first), also when
  the directory for those records cannot be made yet (cairnd starts all the same);
- WAL pushes with the state directory full, or filling while one is spooled: archived (the
  push held in memory), every segment fetched identical;
- restore-db of a dump taken as a directory, with the state directory (its scratch) full: one
  line naming the scratch directory, a hint to write the files elsewhere, nothing left there;
- a local restore into a directory on a full or read-only file system: one line naming the
  target (not the claim file the client makes there first), and no claim file left in it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from cairnd_harness import init_encrypted_repo, snapshot, write_config
from mounts import bind_read_only, fill, fill_inodes, mount_tmpfs, unmount, writable


def backup_id(out: str) -> str:
    set_id = out.strip().splitlines()[-1]
    assert len(set_id) == 64, out
    return set_id


def one_error(stderr: str, program: str) -> str:
    """The only line of an error on stderr (log lines aside), without traceback or errno."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("ts=", "hint: "))]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), stderr
    assert "Traceback" not in stderr and "Errno" not in stderr, stderr
    return lines[0]


@pytest.fixture
def mnt(rundir: str) -> Iterator[str]:
    """A directory for a test's mount (unmounted at the end, after the daemons are gone)."""
    path = os.path.join(rundir, "mnt")
    os.makedirs(path)
    yield path
    unmount(path)


def state_config(tmp_path, rundir: str, state: str, schedule: bool = False) -> tuple[str, str, str]:
    """A config with source 'app' and `state` as the state directory: (config, socket, source)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("alpha\n")
    sock = os.path.join(rundir, "d.sock")
    schedules = {"app": {"incremental": "0 3 * * *"}} if schedule else None
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)}, schedules)
    with open(config, encoding="utf-8") as f:
        text = f.read()
    default = f'state_dir = "{os.path.join(rundir, "state")}"'
    assert default in text
    with open(config, "w", encoding="utf-8") as f:
        f.write(text.replace(default, f'state_dir = "{state}"'))
    return config, sock, str(src)


def test_a_new_state_dir_on_a_full_file_system_starts_and_serves(mnt, start_daemon, rundir, tmp_path):
    mount_tmpfs(mnt)
    state = os.path.join(mnt, "state")
    os.makedirs(state)                                   # as packaging or an earlier mkdir left it: empty
    config, sock, src = state_config(tmp_path, rundir, state, schedule=True)
    filler = fill(os.path.join(mnt, "fill"))
    d = start_daemon("--config", config, socket_path=sock)   # READY=1 (asserted)
    problem = f"state directory '{state}' is full: no space left on device"
    status = json.loads(d.ok("--json", "status"))
    assert any(w.startswith(problem) for w in status["daemon"]["warnings"]), status["daemon"]
    first = backup_id(d.ok("backup", "--source", "app"))
    # the lock is held, pid or not: a second daemon on this state directory is refused
    other = str(tmp_path / "other.toml")
    with open(config, encoding="utf-8") as f, open(other, "w", encoding="utf-8") as g:
        g.write(f.read().replace(sock, os.path.join(rundir, "other.sock")))
    second = start_daemon("--config", other, socket_path=os.path.join(rundir, "other.sock"), wait_ready=False)
    assert second.proc.wait(20) == 1
    assert f"state directory '{state}' is in use by another cairnd" in one_error(second.log(), "cairnd")
    log = d.log()
    assert "Traceback" not in log and "Errno" not in log, log
    saves = [ln for ln in log.splitlines() if "unable to save the schedule state" in ln]
    assert len(saves) == 1 and f"'{state}': no space left on device" in saves[0], log

    code, _ = d.terminate(20)
    assert code == 0, d.log()
    os.unlink(filler)
    d = start_daemon("--config", config, socket_path=sock)
    with open(os.path.join(state, "cairnd.lock"), encoding="ascii") as f:
        assert f.read() == f"{d.proc.pid}\n"
    target = str(tmp_path / "restored")
    d.ok("restore", first, "--target", target)
    assert snapshot(target) == snapshot(src)


@pytest.mark.parametrize("kind", ["missing", "new", "used"])
def test_a_state_dir_on_a_read_only_file_system_is_one_line_and_keeps_its_files(kind, mnt, start_daemon, rundir,
                                                                                 tmp_path):
    state = os.path.join(mnt, "state")
    config, sock, _ = state_config(tmp_path, rundir, state)
    if kind != "missing":
        os.makedirs(state)
    if kind == "used":
        d = start_daemon("--config", config, socket_path=sock)
        backup_id(d.ok("backup", "--source", "app"))
        assert d.terminate(20)[0] == 0
    kept = mnt if kind == "missing" else state
    before = {name: os.path.getsize(os.path.join(kept, name)) for name in os.listdir(kept)}
    bind_read_only(mnt)
    d = start_daemon("--config", config, socket_path=sock, wait_ready=False)
    assert d.proc.wait(20) == 1
    line = one_error(d.log(), "cairnd")
    if kind == "missing":
        assert line == f"cairnd: error: unable to create state directory '{state}': Read-only file system", line
    else:
        assert line == (f"cairnd: error: unable to open '{os.path.join(state, 'cairnd.lock')}' to lock it: "
                        "Read-only file system"), line
    assert {name: os.path.getsize(os.path.join(kept, name)) for name in os.listdir(kept)} == before
    writable(mnt)
    d = start_daemon("--config", config, socket_path=sock)
    assert len(json.loads(d.ok("--json", "sets"))) == (1 if kind == "used" else 0)


def test_a_repository_on_a_read_only_file_system_fails_a_backup_in_one_line(mnt, start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    sock = os.path.join(rundir, "d.sock")
    config = write_config(str(tmp_path / "cairn.toml"), os.path.join(mnt, "repo"), sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    first = backup_id(d.ok("backup", "--source", "app"))
    first_tree = snapshot(str(src))
    assert d.terminate(20)[0] == 0
    bind_read_only(mnt)
    (src / "b.bin").write_bytes(os.urandom(200_000))
    d = start_daemon("--config", config, socket_path=sock)
    r = d.cli("backup", "--source", "app")
    assert r.returncode == 1, r.stdout
    line = one_error(r.stderr, "cairn")
    assert line.startswith(f"cairn: error: unable to write '{os.path.join(mnt, 'repo', 'locks')}/"), line
    assert line.endswith("': Read-only file system"), line
    assert [s["id"] for s in json.loads(d.ok("--json", "sets"))] == [first]
    assert d.alive and "Traceback" not in d.log()

    writable(mnt)
    second = backup_id(d.ok("backup", "--source", "app"))
    d.ok("verify", "--read-data")
    for set_id, want in ((first, first_tree), (second, snapshot(str(src)))):
        target = str(tmp_path / f"restore-{set_id[:8]}")
        d.ok("restore", set_id, "--target", target)
        assert snapshot(target) == want


def test_a_write_only_host_with_a_full_state_dir_refuses_a_backup_in_one_line(mnt, start_daemon, rundir, tmp_path):
    """A host whose key is write-only keeps its own sets and trees in its state directory, each
    record before the object it mirrors: with that directory full its backup is refused before
    it reads anything, in one line, and the next backup once there is room is an incremental on
    the set it took before."""
    repo, full_pw, wo_pw = init_encrypted_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(100_000))
    full_cfg = tmp_path / "full.toml"
    full_sock = os.path.join(rundir, "full.sock")
    full_cfg.write_text(f'[repository]\npath = "{repo}"\npassphrase_file = "{full_pw}"\n\n'
                        f'[daemon]\nsocket = "{full_sock}"\nstate_dir = "{tmp_path / "full-state"}"\n')
    d = start_daemon("--config", str(full_cfg), socket_path=full_sock)
    d.ok("key", "add", "--write-only", "--passphrase-file", str(wo_pw))
    assert d.terminate(20)[0] == 0

    mount_tmpfs(mnt)
    state = os.path.join(mnt, "state")
    sock = os.path.join(rundir, "wo.sock")
    config = tmp_path / "wo.toml"
    config.write_text(f'[repository]\npath = "{repo}"\npassphrase_file = "{wo_pw}"\n\n'
                      f'[daemon]\nsocket = "{sock}"\nstate_dir = "{state}"\nhost = "wo-host"\n\n'
                      f'[[source]]\nname = "app"\npaths = ["{src}"]\nwatch = false\n')
    d = start_daemon("--config", str(config), socket_path=sock)
    first = backup_id(d.ok("backup"))
    filler = fill(os.path.join(mnt, "fill"))
    (src / "b.bin").write_bytes(os.urandom(100_000))
    r = d.cli("backup")
    assert r.returncode == 1, r.stdout
    line = one_error(r.stderr, "cairn")
    assert line == (f"cairn: error: unable to back up source 'app' with a write-only key: state directory "
                    f"'{state}' is full: no space left on device"), line
    log = d.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log, log
    assert [s["id"] for s in json.loads(d.ok("--json", "sets"))] == [first]

    os.unlink(filler)
    second = json.loads(d.ok("--json", "backup", "--level", "incremental"))
    assert second["level"] == "incremental" and second["base"] == first, second


def test_wal_pushes_go_on_while_the_state_dir_is_full(mnt, start_daemon, rundir, tmp_path):
    """A WAL push is spooled in the state directory before it is stored. With that directory
    full (from the start, or filling while a segment is spooled) the push is held in memory
    instead and archived: PostgreSQL's archiver must not stop because /var is full. One line
    says so, one more once pushes are spooled there again; every segment fetches identical."""
    mount_tmpfs(mnt)
    state = os.path.join(mnt, "state")
    os.makedirs(state)
    config, sock, _ = state_config(tmp_path, rundir, state)
    d = start_daemon("--config", config, socket_path=sock)
    segments = {}
    for i in range(1, 5):
        segments[f"00000001000000000000000{i}"] = os.urandom(1 << 20)

    def push(name: str) -> None:
        path = tmp_path / name
        path.write_bytes(segments[name])
        assert d.ok("wal-push", str(path), "--system-id", "7").strip() == f"archived {name} (system 7)"

    names = sorted(segments)
    push(names[0])                                         # room: spooled there
    filler = fill(os.path.join(mnt, "fill"))
    push(names[1])                                         # full from the start of the push
    os.truncate(filler, os.path.getsize(filler) - 256 * 1024)
    push(names[2])                                         # fills while the segment is spooled
    os.unlink(filler)
    push(names[3])                                         # room again
    for name, data in segments.items():
        target = tmp_path / f"fetched-{name}"
        d.ok("wal-fetch", name, str(target), "--system-id", "7")
        assert target.read_bytes() == data, name
    log = d.log()
    assert "Traceback" not in log, log
    held = [ln for ln in log.splitlines() if "to spool WAL pushes: they are held in memory" in ln]
    assert len(held) == 1 and f"no room in '{state}'" in held[0], log
    assert sum(f"WAL pushes are spooled in '{state}' again" in ln for ln in log.splitlines()) == 1, log


def test_a_directory_dump_restored_with_the_state_dir_full_is_one_line_naming_it(mnt, start_daemon, rundir,
                                                                                 tmp_path):
    """restore-db --target-dsn of a dump taken as a directory restores it into a scratch
    directory in the state directory first: with that full, one line naming the directory and
    the reason, a hint to write the files elsewhere (which works meanwhile), no scratch left;
    once there is room the restore runs."""
    mount_tmpfs(mnt)
    state = os.path.join(mnt, "state")
    os.makedirs(state)
    config, sock, _ = state_config(tmp_path, rundir, state)
    loaded = tmp_path / "loaded"
    dump = json.dumps(["sh", "-c", "head -c 3000000 /dev/urandom > {dir}/rows"])
    load = json.dumps(["sh", "-c", f"cp {{dir}}/rows {loaded}"])
    with open(config, "a", encoding="utf-8") as f:
        f.write(f'database = "notes"\n\n[[database]]\nname = "notes"\nkind = "command"\ndump = {dump}\n'
                f'restore = {load}\n')
    d = start_daemon("--config", config, socket_path=sock)
    set_id = backup_id(d.ok("backup"))
    filler = fill(os.path.join(mnt, "fill"))
    r = d.cli("restore-db", set_id, "--database", "notes", "--target-dsn", "notes")
    assert r.returncode == 1, r.stdout
    line = one_error(r.stderr, "cairn")
    restores = os.path.join(state, "restores")
    assert line.startswith(f"cairn: error: unable to restore the dump of database 'notes' in '{restores}': "), line
    assert line.endswith("No space left on device"), line
    assert "--database notes --target DIR" in r.stderr, r.stderr
    assert os.listdir(restores) == [] and not loaded.exists()
    files = tmp_path / "files"
    d.ok("restore-db", set_id, "--database", "notes", "--target", str(files))
    os.unlink(filler)
    d.ok("restore-db", set_id, "--database", "notes", "--target-dsn", "notes")
    assert loaded.read_bytes() == (files / "rows").read_bytes()
    assert os.listdir(restores) == []


def test_a_write_only_host_starts_where_its_records_cannot_be_made_yet(mnt, start_daemon, rundir, tmp_path):
    """A host that had a full key gets a write-only one while its state directory's file system
    has no inode left: the directory for its own records cannot be made. cairnd starts and
    serves all the same, refuses its backups in one line, and once there is room the next
    backup makes the records and succeeds."""
    repo, full_pw, wo_pw = init_encrypted_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(100_000))
    mount_tmpfs(mnt, inodes=64)
    state = os.path.join(mnt, "state")
    sock = os.path.join(rundir, "wo.sock")
    config = tmp_path / "host.toml"
    text = (f'[repository]\npath = "{repo}"\npassphrase_file = "{full_pw}"\n\n'
            f'[daemon]\nsocket = "{sock}"\nstate_dir = "{state}"\nhost = "the-host"\n\n'
            f'[[source]]\nname = "app"\npaths = ["{src}"]\nwatch = false\n')
    config.write_text(text)
    d = start_daemon("--config", str(config), socket_path=sock)
    d.ok("key", "add", "--write-only", "--passphrase-file", str(wo_pw))
    assert d.terminate(20)[0] == 0
    config.write_text(text.replace(str(full_pw), str(wo_pw)))
    made = fill_inodes(mnt)
    d = start_daemon("--config", str(config), socket_path=sock)   # READY=1 (asserted)
    problem = f"state directory '{state}' is full: no space left on device"
    assert problem in d.ok("status")
    r = d.cli("backup")
    assert r.returncode == 1, r.stdout
    assert one_error(r.stderr, "cairn") == (f"cairn: error: unable to back up source 'app' with a write-only key: "
                                            f"{problem}"), r.stderr
    assert "Traceback" not in d.log(), d.log()
    for path in made:
        os.unlink(path)
    first = json.loads(d.ok("--json", "backup"))
    assert first["level"] == "full", first
    assert os.listdir(os.path.join(state, "write-only", "sets")) != []


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_local_restore_into_a_directory_that_cannot_take_a_file_is_one_line_and_leaves_nothing(
        how, mnt, start_daemon, rundir, tmp_path):
    """A local restore proves the target is the client's own with a small claim file in it
    before the daemon writes there. A target on a full or a read-only file system: one line
    naming the target and the reason, and nothing left in it (no claim file)."""
    config, sock, src = state_config(tmp_path, rundir, os.path.join(rundir, "state"))
    d = start_daemon("--config", config, socket_path=sock)
    backup_id(d.ok("backup"))
    target = os.path.join(mnt, "target")
    if how == "full":
        mount_tmpfs(mnt)
        os.makedirs(target)
        fill(os.path.join(mnt, "fill"))
        reason = "No space left on device"
    else:
        os.makedirs(target)
        bind_read_only(mnt)
        reason = "Read-only file system"
    r = d.cli("restore", "latest", "--target", target)
    assert r.returncode == 1, r.stdout
    assert one_error(r.stderr, "cairn") == f"cairn: error: unable to use '{target}': {reason}", r.stderr
    assert os.listdir(target) == []
