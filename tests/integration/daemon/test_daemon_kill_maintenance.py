"""SIGKILL of cairnd (and of the client) in the middle of the operations the backup and prune
campaign does not reach: `repair index`, `repair sets`, `key add` / `key remove` (also a
write-only key, which first reseals the index), `copy --to` another repository, and
`wal-push`; the client is killed too during repair index, copy and wal-push, and while the
daemon adds a key file.

After every kill the daemon is started again on the same repository and must come up with at
most one line of explanation in its log; `verify --read-data` is clean, or names only what the
interrupted repair itself fixes (then running it again to the end makes it clean), and of a
copy's destination only packs its killed sessions uploaded and never indexed, which no set
needs (prune removes them, as it does those of a killed backup); every listed
set restores identical to the tree it captured; and the interrupted operation, run again,
succeeds. Key operations must leave a repository that still opens with the old secret, and
with the new one once its addition was acknowledged. A killed wal-push never leaves a segment
that is fetched short: the next push of the same file succeeds and it is fetched whole.

The kill delays follow CAIRN_CRASH_SEED; CAIRN_CRASH_TRIALS sets how many kills each
operation gets (2 by default, sized for the suite).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from cairnd_harness import CAIRN, Daemon, env_for, snapshot

SEED = int(os.environ.get("CAIRN_CRASH_SEED", "4711"))
TRIALS = int(os.environ.get("CAIRN_CRASH_TRIALS", "2"))
MIB = 1024 * 1024


def _files(tree: dict[str, tuple]) -> dict[str, tuple]:
    """What a restore must reproduce of a snapshot: files' mode, size and content, symlinks."""
    return {p: (v[0], v[1], v[5], v[6]) if v[0] == "file" else v[:1] for p, v in tree.items()}


def _grow(src: str, rng: random.Random, files: int, size: int) -> None:
    os.makedirs(src, exist_ok=True)
    for _ in range(files):
        d = os.path.join(src, f"d{rng.randrange(4)}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{rng.randrange(1 << 30):08x}"), "wb") as f:
            f.write(rng.randbytes(rng.randint(size // 2, size)))


def _kill_during(d: Daemon, argv: list[str], delay: float, started: Callable[[], bool] = lambda: True
                 ) -> subprocess.CompletedProcess:
    """Run `cairn ARGV` and SIGKILL the daemon `delay` seconds after `started()` (or at once if
    the client ends first); the client's outcome."""
    client = subprocess.Popen([CAIRN, "--socket", d.socket, *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env_for())
    deadline = time.monotonic() + 30
    while not started() and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    out, err = client.communicate(timeout=60)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(argv, client.returncode, out, err)


def _restart(start_daemon, *args: str) -> Daemon:
    """Start cairnd again after a kill: it comes up, saying at most one line about it."""
    d = start_daemon(*args)  # returns once READY=1 came: everything said at start is in the log
    noisy = [line for line in d.log().splitlines() if "warning" in line.lower() or "error" in line.lower()]
    assert len(noisy) <= 1 and "Traceback" not in d.log(), d.log()
    return d


def _check(d: Daemon, expected: dict[str, dict], tmp, tag: str, fixes: tuple[str, ...] = ()) -> None:
    """verify --read-data clean (or, with `fixes`, only problems whose advice names them: then
    each repair runs to the end and verify is clean); every listed set restores identical."""
    report = json.loads(d.cli("--json", "verify", "--read-data", timeout=120).stdout)
    problems = [p["message"] + " " + p.get("hint", "") for p in report["errors"] + report["warnings"]]
    if problems and fixes:
        assert any(f"repair {f}" in json.dumps(report) for f in fixes), f"{tag}: verify: {report}"
        for f in fixes:
            d.ok("repair", f, timeout=120)
        report = json.loads(d.cli("--json", "verify", "--read-data", timeout=120).stdout)
        problems = [p["message"] for p in report["errors"] + report["warnings"]]
    assert report["ok"] and not problems, f"{tag}: verify: {report}"
    listed = [s["id"] for s in json.loads(d.ok("--json", "sets"))]
    assert set(listed) <= set(expected), f"{tag}: sets from nowhere: {set(listed) - set(expected)}"
    for sid in listed:
        target = tmp / f"{tag}-{sid[:8]}"
        d.ok("restore", sid, "--target", str(target), timeout=120)
        assert _files(snapshot(str(target))) == expected[sid], f"{tag}: set {sid[:8]} restores different"


def _backup(d: Daemon, src: str, expected: dict[str, dict], level: str = "full") -> str:
    sid = json.loads(d.ok("--json", "backup", "--level", level, timeout=120))["id"]
    expected[sid] = _files(snapshot(src))
    return sid


def _wait_unlocked(repo: str) -> None:
    """Wait until the repository holds no lock (a cancelled operation ended)."""
    locks = os.path.join(repo, "locks")
    deadline = time.monotonic() + 60
    while [n for n in os.listdir(locks) if not n.startswith(".")]:
        assert time.monotonic() < deadline, f"a lock was never released: {os.listdir(locks)}"
        time.sleep(0.02)


def _index_files(repo: str) -> list[str]:
    return sorted(os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(repo, "index")) for n in ns
                  if not n.startswith("."))


@pytest.mark.campaign
def test_repair_index_and_sets_killed(start_daemon, tmp_path):
    rng = random.Random(SEED)
    src, repo = str(tmp_path / "src"), str(tmp_path / "repo")
    args = ("--repo", repo, "--source", src)
    expected: dict[str, dict] = {}
    _grow(src, rng, 12, 512 * 1024)
    d = start_daemon(*args)
    for trial in range(TRIALS):
        tag = f"seed {SEED}, repair index, trial {trial}"
        _grow(src, rng, 6, 512 * 1024)
        _backup(d, src, expected, rng.choice(["full", "incremental"]))
        for victim in _index_files(repo)[: rng.randint(1, 2)]:  # packs the index no longer names
            os.unlink(victim)
        argv = ["repair", "index", "--read-data"] if rng.random() < 0.5 else ["repair", "index"]
        if trial % 2:  # the client killed: the daemon cancels the repair, or finishes it
            client = subprocess.Popen([CAIRN, "--socket", d.socket, *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env_for())
            time.sleep(rng.uniform(0.0, 0.25))
            client.kill()
            client.communicate(timeout=30)
            r = subprocess.CompletedProcess(argv, client.returncode)
            _wait_unlocked(repo)
        else:
            r = _kill_during(d, argv, rng.uniform(0.0, 0.25))
            d = _restart(start_daemon, *args)
        _check(d, expected, tmp_path, f"ri{trial}", fixes=("index",))
        _backup(d, src, expected, "incremental")  # the next operation succeeds
        print(f"{tag}: client exit {r.returncode}")
    for trial in range(TRIALS):
        tag = f"rs{trial}"
        sid = _backup(d, src, expected)
        path = os.path.join(repo, "sets", sid)
        with open(path, "r+b") as f:  # a damaged set object
            f.seek(20)
            b = f.read(1)
            f.seek(20)
            f.write(bytes([b[0] ^ 1]))
        del expected[sid]
        _kill_during(d, ["repair", "sets"], rng.uniform(0.0, 0.05))
        d = _restart(start_daemon, *args)
        _check(d, expected, tmp_path, tag, fixes=("sets",))
        _backup(d, src, expected, "incremental")


def _encrypted(start_daemon, tmp_path, secret_args: tuple[str, ...]):
    from cairn.store.content import crypto
    from cairn.store.repository import Repository

    repo = str(tmp_path / "repo")
    os.makedirs(repo, mode=0o700)
    Repository.init_local(repo, secret=crypto.Secret.from_passphrase_file(str(tmp_path / "old.pass"))).close()
    return repo


def _opens(repo: str, flag: str, path: str) -> bool:
    from cairn.errors import WrongKeyError
    from cairn.store.content import crypto
    from cairn.store.repository import Repository

    secret = crypto.Secret.from_passphrase_file(path) if flag == "--passphrase-file" else \
        crypto.Secret.from_key_file(path)
    try:
        Repository.open_local(repo, read_only=True, secret=secret).close()
        return True
    except WrongKeyError:
        return False


@pytest.mark.campaign
def test_key_operations_killed(start_daemon, tmp_path):
    """key add (passphrase, key file, write-only) and key remove with the daemon killed at random
    points: the repository opens with the old secret every time, and with the new one whenever
    the client reported it added; a key file the client leaves is either empty-free and usable,
    or absent."""
    rng = random.Random(SEED + 1)
    (tmp_path / "old.pass").write_text("the old one\n")
    src = str(tmp_path / "src")
    _grow(src, rng, 6, 256 * 1024)
    repo = _encrypted(start_daemon, tmp_path, ())
    args = ("--repo", repo, "--source", src, "--passphrase-file", str(tmp_path / "old.pass"))
    expected: dict[str, dict] = {}
    d = start_daemon(*args)
    _backup(d, src, expected)
    for trial in range(TRIALS * 2):
        tag = f"seed {SEED + 1}, key, trial {trial}"
        kind = rng.choice(["passphrase", "keyfile", "write-only", "remove"])
        new = str(tmp_path / f"new{trial}")
        if kind == "remove":
            spare = str(tmp_path / f"spare{trial}")
            added = d.ok("key", "add", "--new-key-file", spare).split()[-1]
            argv, flag, new = ["key", "remove", added], "--key-file", spare
        elif kind == "passphrase":
            with open(new, "w") as f:
                f.write(f"new passphrase {trial}\n")
            argv, flag = ["key", "add", "--passphrase-file", new], "--passphrase-file"
        else:
            argv, flag = ["key", "add", "--new-key-file", new], "--key-file"
            if kind == "write-only":
                argv.append("--write-only")
        r = _kill_during(d, argv, rng.uniform(0.0, 0.3))
        assert _opens(repo, "--passphrase-file", str(tmp_path / "old.pass")), f"{tag}: the old secret no longer opens"
        if r.returncode == 0 and kind != "remove":
            assert kind == "write-only" or _opens(repo, flag, new), f"{tag}: added, but the new secret does not open"
        if kind in ("keyfile", "write-only") and os.path.exists(new):
            assert os.path.getsize(new) > 0, f"{tag}: an empty key file was left behind"
        d = _restart(start_daemon, *args)
        _check(d, expected, tmp_path, f"k{trial}")
        _grow(src, rng, 2, 128 * 1024)
        _backup(d, src, expected, "incremental")
        if kind == "remove":
            if _opens(repo, flag, new):  # not removed before the kill: the next attempt removes it
                d.ok(*argv)
            assert not _opens(repo, flag, new), f"{tag}: the removed key still opens"
        elif not os.path.exists(new) or kind == "passphrase":
            d.ok(*argv)  # the next attempt succeeds


def _packs(repo: str) -> set[str]:
    """The packs a repository holds (not the temporary files of one being written)."""
    return {n for dp, _, ns in os.walk(os.path.join(repo, "packs")) for n in ns if not n.startswith(".")}


@pytest.mark.campaign
def test_copy_killed_then_run_again(start_daemon, tmp_path):
    """copy --to cancelled (its client killed), then the daemon killed twice into the same
    destination, the second time just after a pack of the copy landed there, then a copy that
    finishes: the destination holds every set whole. A session killed after a pack's upload and
    before the index file naming it leaves that pack behind (as a killed backup does): verify
    may warn of such packs, as packs no set needs, and of nothing else."""
    rng = random.Random(SEED + 2)
    src, repo = str(tmp_path / "src"), str(tmp_path / "repo")
    args = ("--repo", repo, "--source", src)
    expected: dict[str, dict] = {}
    (tmp_path / "dest.pass").write_text("dest\n")
    os.makedirs(src)
    d = start_daemon(*args)
    _grow(src, rng, 3, 16 * MIB)  # the first set copied spans packs: some land while its session runs
    _backup(d, src, expected, "full")
    for _ in range(3):
        _grow(src, rng, 8, MIB)
        _backup(d, src, expected, "incremental")
    for trial in range(TRIALS):
        dest = str(tmp_path / f"dest{trial}")
        copy = ["copy", "--to", dest, "--to-passphrase-file", str(tmp_path / "dest.pass")]
        client = subprocess.Popen([CAIRN, "--socket", d.socket, *copy], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env_for())
        time.sleep(rng.uniform(0.0, 0.6))
        client.kill()  # the client killed: the daemon cancels the copy
        client.communicate(timeout=30)
        _wait_unlocked(repo)
        # two kills of the daemon into the same destination (at random, then as soon as a pack of
        # this attempt is there), then a copy that finishes
        _kill_during(d, copy, rng.uniform(0.0, 0.6))
        d = _restart(start_daemon, *args)
        before = _packs(dest)
        _kill_during(d, copy, 0.0, started=lambda dest=dest, before=before: bool(_packs(dest) - before))
        d = _restart(start_daemon, *args)
        d.ok(*copy, timeout=120)
        other = _restart(start_daemon, "--repo", dest, "--read-only", "--passphrase-file",
                         str(tmp_path / "dest.pass"))
        copied = json.loads(other.ok("--json", "sets"))
        assert len(copied) == len(expected), f"trial {trial}: {copied}"
        report = json.loads(other.cli("--json", "verify", "--read-data", timeout=120).stdout)
        left = {w["object_id"] for w in report["warnings"] if "is not indexed: no set needs it" in w["message"]}
        assert report["ok"] and not report["errors"] and len(left) == len(report["warnings"]), report
        assert left <= _packs(dest), report
        print(f"trial {trial}: {len(left)} packs left by the killed sessions")
        for sid in json.loads(other.ok("--json", "sets")):
            target = tmp_path / f"c{trial}-{sid['id'][:8]}"
            other.ok("restore", sid["id"], "--target", str(target), timeout=120)
        other.proc.kill()
        other.proc.wait(10)
        _check(d, expected, tmp_path, f"c{trial}")


@pytest.mark.campaign
def test_wal_push_killed(start_daemon, tmp_path):
    """The daemon, or the client (archive_command), SIGKILLed while it pushes a segment: a
    later push of the same file succeeds, and it is fetched whole, never short."""
    rng = random.Random(SEED + 3)
    src, repo = str(tmp_path / "src"), str(tmp_path / "repo")
    _grow(src, rng, 2, 64 * 1024)
    args = ("--repo", repo, "--source", src)
    d = start_daemon(*args)
    for trial in range(TRIALS * 2):
        seg = tmp_path / f"00000001000000000000{trial:04X}"
        seg.write_bytes(rng.randbytes(16 * MIB))
        victim = rng.choice(["daemon", "client"])
        argv = ["wal-push", str(seg)]
        if victim == "daemon":
            _kill_during(d, argv, rng.uniform(0.0, 0.4))
            d = _restart(start_daemon, *args)
        else:
            client = subprocess.Popen([CAIRN, "--socket", d.socket, *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env_for())
            time.sleep(rng.uniform(0.0, 0.4))
            client.kill()
            client.communicate(timeout=30)
        got = tmp_path / f"got{trial}"
        r = d.cli("wal-fetch", "--prefetch", "0", seg.name, str(got))
        if r.returncode == 0:  # archived before the kill: then whole
            assert got.read_bytes() == seg.read_bytes(), f"trial {trial} ({victim}): a short segment was served"
        else:
            assert not got.exists()
        d.ok("wal-push", str(seg))  # the archiver's retry
        d.ok("wal-fetch", "--prefetch", "0", seg.name, str(got))
        assert got.read_bytes() == seg.read_bytes(), f"trial {trial}: fetched different"
    report = json.loads(d.cli("--json", "verify", "--read-data", timeout=120).stdout)
    assert report["ok"] and not report["errors"] and not report["warnings"], report


def test_key_file_client_killed_while_the_daemon_adds_it(start_daemon, tmp_path):
    """`cairn key add --new-key-file F` SIGKILLed while its request waits on the daemon (held
    with SIGSTOP): F is already whole, so whether or not the daemon goes on to add the key, no
    key is ever added whose secret exists nowhere, and F is never left empty. Before the fix F
    was filled only after the daemon's answer: it stayed empty here."""
    from cairn.store.content import crypto

    (tmp_path / "old.pass").write_text("the old one\n")
    src = tmp_path / "src"
    src.mkdir()
    repo = _encrypted(start_daemon, tmp_path, ())
    d = start_daemon("--repo", repo, "--source", str(src), "--passphrase-file", str(tmp_path / "old.pass"))
    new = tmp_path / "new.key"
    d.proc.send_signal(signal.SIGSTOP)
    try:
        client = subprocess.Popen([CAIRN, "--socket", d.socket, "key", "add", "--new-key-file", str(new)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for())
        deadline = time.monotonic() + 20
        while not (new.exists() and new.stat().st_size > 0):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the key file was not written while the daemon was held"
            time.sleep(0.01)
        client.kill()
        client.communicate(timeout=30)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    crypto.decode_key_file(new.read_bytes(), str(new))  # whole: a key file that is read
    assert _opens(repo, "--passphrase-file", str(tmp_path / "old.pass"))
    ids = [k["id"] for k in json.loads(d.ok("key", "list", "--json"))]
    assert len(ids) == 1 or _opens(repo, "--key-file", str(new)), "a key was added that no file holds"
    d.ok("key", "add", "--new-key-file", str(tmp_path / "next.key"))
    assert _opens(repo, "--key-file", str(tmp_path / "next.key"))
