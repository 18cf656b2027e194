"""The damage campaign's kit: a repository with a history, damaged one object class and one
kind of damage at a time, and the operator's commands run on each copy through a real daemon,
with what must hold after each (test_daemon_damage_campaign.py says what; the object-store
campaign in tests/integration/s3 runs a subset on a bucket).

`Template` builds the history through a driver: `LocalDriver` (a local directory) here, or the
bucket's driver of the object-store test. A driver makes the repository, runs daemons on it and
copies it to a local directory (`mirror`), where every damage is made; a trial's daemon serves
that damaged copy (the bucket's driver uploads it to a fresh prefix first). What always holds:
the template is never changed by a trial, and a trial's damage is made before its daemon starts.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from cairnd_harness import CAIRND, env_for, snapshot

SEED = int(os.environ.get("CAIRN_DAMAGE_SEED", "5113"))
TRIALS = int(os.environ.get("CAIRN_DAMAGE_TRIALS", "5"))
# "class/kind,...": only these pairs, in this order (a failure's pair, replayed with its seed)
ONLY = [tuple(p.split("/", 1)) for p in os.environ.get("CAIRN_DAMAGE_PAIRS", "").split(",") if p]
PLAINTEXT = os.environ.get("CAIRN_DAMAGE_PLAINTEXT", "") not in ("", "0")

CLASSES = ("config", "keys", "sets", "index", "tree-packs", "data-packs", "wal", "wal-packs", "locks", "gc", "state",
           "repo")
KINDS = ("delete", "truncate-0", "truncate-half", "flip", "zero-block", "replace", "rollback", "swap", "zero-tail",
         "half-synced")
# the kinds that apply to a class, where not all do: the whole repository is rolled back (put
# back from an older copy of its directory while the state directory is newer) or half-synced
# (a copy made file by file in the order of their paths that stopped partway, after keys/: the
# file it was writing cut short, those after it not there), and only it
APPLIES = {c: {k for k in KINDS if k != "half-synced"} for c in CLASSES}
APPLIES["repo"] = {"rollback", "half-synced"}
# damage that only reading a pack's bytes finds: a backup may still deduplicate against it
READ_ONLY_FINDS = {"flip", "zero-block", "swap", "replace", "zero-tail"}
SEGMENT = "00000001000000000000000{}"
SYSTEM_ID = 7
WAL_SEGMENT_SIZE = 1 << 20


def _segment(name: str, rng: random.Random) -> bytes:
    """A whole WAL segment `name` of system SYSTEM_ID: its long page header (which says what
    segment it is: a catalog entry holding another segment's content can be told), then random
    bytes."""
    pageaddr = int(name[16:24], 16) * WAL_SEGMENT_SIZE + int(name[8:16], 16) * 0x100000000
    header = ((0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + int(name[:8], 16).to_bytes(4, "little")
              + pageaddr.to_bytes(8, "little") + bytes(8) + SYSTEM_ID.to_bytes(8, "little")
              + WAL_SEGMENT_SIZE.to_bytes(4, "little") + (8192).to_bytes(4, "little"))
    return header + rng.randbytes(WAL_SEGMENT_SIZE - len(header))


def _files(tree: dict[str, tuple]) -> dict[str, tuple]:
    """What a restore must reproduce of a snapshot: files' mode, size and content, symlinks."""
    return {p: (v[0], v[1], v[5], v[6]) if v[0] == "file" else v[:2] if v[0] == "symlink" else v[:1]
            for p, v in tree.items()}


def _clean(r: subprocess.CompletedProcess, what: str) -> None:
    """No traceback or internal error reaches the client; a failure is one line and a hint."""
    text = r.stdout + r.stderr
    for bad in ("Traceback", "internal error", "Exception", "exception"):
        assert bad not in text, f"{what}: {bad!r} in the output\n{text}"
    if r.returncode != 0:
        if r.stderr.startswith('{"error": '):  # --json: one object
            error = json.loads(r.stderr)["error"]
            assert error["message"] and "\n" not in error["message"], f"{what}: {r.stderr}"
            return
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if not line.startswith(("hint: ", "cairn: warning: "))]
        assert len(errors) == 1 and errors[0].startswith("cairn: error: "), \
            f"{what}: exit {r.returncode}, not one error line\n{text}"


def _mutate(src: str, rng: random.Random, tag: str) -> None:
    for i in range(3):
        name = os.path.join(src, f"d{rng.randrange(3)}", f"{tag}-{i}.bin")
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as f:
            f.write(rng.randbytes(rng.randint(1000, 300_000)))
    victims = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
    os.unlink(rng.choice(victims))
    with open(os.path.join(src, "log.txt"), "a") as f:
        f.write(f"{tag}\n" * 500)


class Template:
    """The undamaged repository (a local copy of it: `repo`), the daemon's state, the source,
    and copies of the repository and the state from before the last backup; what each set must
    restore to. `driver` says where the repository lives and how a daemon runs on it."""

    def __init__(self, root: Path, driver: LocalDriver | Any) -> None:
        rng = random.Random(SEED)
        root.mkdir()
        self.root, self.driver = root, driver
        self.repo, self.src = str(root / "repo"), str(root / "src")
        other = str(root / "other-repo")  # a config and key of another repository, for "replace"
        r = subprocess.run([CAIRND, "--repo", other, "--init", "--key-file", driver.make_key(root / "other-key")],
                           capture_output=True, text=True, timeout=60, env=env_for())
        assert r.returncode == 0, r.stderr
        self.other_repo = other
        os.makedirs(os.path.join(self.src, "d0"))
        with open(os.path.join(self.src, "d0", "big.bin"), "wb") as f:
            f.write(rng.randbytes(1_500_000))
        for i in range(6):
            with open(os.path.join(self.src, f"d{i % 3}", f"f{i}.bin") if i % 3 == 0 else
                      os.path.join(self.src, f"f{i}.bin"), "wb") as f:
                f.write(rng.randbytes(rng.randint(10, 200_000)))
        os.symlink("d0/big.bin", os.path.join(self.src, "link"))
        self.expected: dict[str, dict] = {}
        self.home = driver.init(root, self.src)
        d = driver.template_daemon()
        self._backup(d, "full")
        self._wal(d, 1, rng)
        _mutate(self.src, rng, "second")
        self._backup(d, "incremental")
        if driver.secret() is not None:
            d.ok("key", "add", "--new-key-file", str(root / "key2"))
        _mutate(self.src, rng, "third")
        driver.stop(d)
        self.older_repo, self.older_home = str(root / "older-repo"), str(root / "older-home")
        driver.mirror(self.older_repo)
        shutil.copytree(self.home, self.older_home, symlinks=True)
        d = driver.template_daemon()
        self._wal(d, 2, rng)
        self._backup(d, "incremental")
        driver.stop(d)
        driver.mirror(self.repo)
        self._lock_elsewhere()
        self._classify()
        self._marker(rng)

    def _backup(self, d, level: str) -> None:
        out = json.loads(d.ok("--json", "backup", "--level", level))
        self.expected[out["id"]] = _files(snapshot(self.src))

    def _wal(self, d, n: int, rng: random.Random) -> None:
        seg = self.root / SEGMENT.format(n)
        seg.write_bytes(_segment(SEGMENT.format(n), rng))
        d.ok("wal-push", str(seg), "--system-id", str(SYSTEM_ID))
        self.wal = {**getattr(self, "wal", {}), SEGMENT.format(n): seg.read_bytes()}

    def _open(self, read_only: bool = True):
        from cairn.store.repository import Repository

        return Repository.open_local(self.repo, read_only=read_only, secret=self.driver.secret())

    def _lock_elsewhere(self) -> None:
        """A shared lock of a backup running on another host (fresh: not stale)."""
        repo = self._open(read_only=False)
        try:
            doc = {"host": "elsewhere", "daemon_host": "elsewhere", "pid": 4242, "pid_space": "x",
                   "exclusive": False, "purpose": "backup"}
            assert repo.locks._create(os.urandom(16).hex(), doc)
        finally:
            repo.close()

    def _marker(self, rng: random.Random) -> None:
        """A garbage-collection marker not yet ripe: a set of a scratch source taken and
        forgotten by a prune whose grace period keeps its packs (marked) for a day."""
        from cairn.store.model import BackupRequest, PrunePolicy

        scratch = self.root / "scratch"
        scratch.mkdir()
        (scratch / "only-here.bin").write_bytes(rng.randbytes(300_000))
        repo = self._open(read_only=False)
        try:
            s = repo.backup(BackupRequest(source="scratch", paths=(str(scratch),)))
            repo.prune(PrunePolicy(forget=(s.id,)), grace=86400)
            assert list(repo.backend.list("gc")), "prune left no marker"
        finally:
            repo.close()

    def _classify(self) -> None:
        """Which packs hold trees, file data and WAL segments."""
        repo = self._open()
        try:
            wal_chunks = set()
            for name in repo.backend.list("wal"):
                wal_chunks.update(json.loads(repo.backend.get("wal", name))["chunks"])
            self.packs: dict[str, set[str]] = {"tree-packs": set(), "data-packs": set(), "wal-packs": set()}
            for blob_id, loc in repo.index.items():
                kind = "wal-packs" if blob_id.hex() in wal_chunks else "tree-packs" if loc.type == 1 else "data-packs"
                self.packs[kind].add(loc.pack)
        finally:
            repo.close()

    def objects(self, base: str, cls: str, older: bool = False) -> list[str]:
        """The paths of the objects of class `cls` under `base` (a copy of repo and home)."""
        repo = os.path.join(base, "repo")
        if cls == "state":
            home = os.path.join(base, "home")
            return sorted(os.path.join(d, f) for d, _, fs in os.walk(home) for f in fs)
        if cls.endswith("packs"):
            return sorted(os.path.join(repo, "packs", p[:2], p) for p in self.packs[cls]
                          if os.path.exists(os.path.join(repo, "packs", p[:2], p)))
        directory = os.path.join(repo, cls)
        return sorted(os.path.join(directory, f) for f in os.listdir(directory)) if os.path.isdir(directory) else []


def _damage(t: Template, base: str, cls: str, kind: str, rng: random.Random) -> str | None:
    """Damage one object of `cls` under `base`; what was done, or None when it does not apply."""
    objs = t.objects(base, cls)
    if cls == "repo" and kind == "half-synced":
        repo = os.path.join(base, "repo")
        files = sorted(os.path.relpath(os.path.join(d, f), repo) for d, _, fs in os.walk(repo) for f in fs)
        after = [f for f in files if f > "keys/~"]
        cut = rng.randrange(len(after))
        os.truncate(os.path.join(repo, after[cut]), rng.randrange(os.path.getsize(os.path.join(repo, after[cut])) + 1))
        for f in after[cut + 1:]:
            os.unlink(os.path.join(repo, f))
        return f"the repository half-synced: {after[cut]} cut short, the {len(after) - cut - 1} files after it gone"
    if cls == "repo":  # the repository's directory put back from a copy taken before the last backup
        shutil.rmtree(os.path.join(base, "repo"))
        shutil.copytree(t.older_repo, os.path.join(base, "repo"), symlinks=True)
        return "the whole repository rolled back to before the last backup, the state directory not"
    if kind == "rollback":
        if cls in ("config", "tree-packs", "data-packs", "wal-packs"):
            older_root = t.root / "older"
            if not older_root.exists():
                older_root.mkdir()
                os.symlink(t.older_repo, older_root / "repo")
                os.symlink(t.older_home, older_root / "home")
            old = {os.path.relpath(p, str(older_root)) for p in t.objects(str(older_root), cls)}
            gone = [p for p in objs if os.path.relpath(p, base) not in old]
            if not gone:
                return None
            for p in gone:  # packs are immutable: rolled back, the newer ones are not there
                os.unlink(p)
            return f"{cls} rolled back: {len(gone)} newer objects gone"
        older, mine = (t.older_home, os.path.join(base, "home")) if cls == "state" else \
            (os.path.join(t.older_repo, cls), os.path.join(base, "repo", cls))
        shutil.rmtree(mine, ignore_errors=True)
        if os.path.isdir(older):
            shutil.copytree(older, mine, symlinks=True)
        else:  # the class had no object then (gc markers)
            os.mkdir(mine)
        return f"{cls} rolled back to before the last backup"
    if not objs:
        return None
    victim = rng.choice(objs)
    rel = os.path.relpath(victim, base)
    size = os.path.getsize(victim)
    if kind == "delete":
        os.unlink(victim)
    elif kind == "truncate-0":
        os.truncate(victim, 0)
    elif kind == "truncate-half":
        os.truncate(victim, size // 2)
    elif kind == "zero-tail":  # a tail the file system lost in a crash reads back as zeros
        if size == 0:
            return None
        at = rng.randrange(size)
        with open(victim, "r+b") as f:
            f.seek(at)
            f.write(bytes(size - at))
        rel += f" from {at}"
    elif kind in ("flip", "zero-block"):
        if size == 0:
            return None
        at = rng.randrange(size)
        with open(victim, "r+b") as f:
            f.seek(at)
            if kind == "flip":
                b = f.read(1)[0]
                f.seek(at)
                f.write(bytes([b ^ (1 << rng.randrange(8))]))
            else:
                at = max(0, min(at, size - 4096))
                f.seek(at)
                f.write(bytes(min(4096, size)))
        rel += f" at {at}"
    elif kind == "replace":
        if cls == "config":
            other = os.path.join(t.other_repo, "config", "config")
        elif cls == "keys":
            other = os.path.join(t.other_repo, "keys", os.listdir(os.path.join(t.other_repo, "keys"))[0])
        else:
            others = [p for p in objs if p != victim]
            if not others:
                return None
            other = rng.choice(others)
        shutil.copyfile(other, victim)
        rel += f" with {os.path.basename(other)}"
    elif kind == "swap":
        others = [p for p in objs if p != victim]
        if not others:
            return None
        other = rng.choice(others)
        tmp = victim + ".swap"
        os.rename(victim, tmp)
        os.rename(other, victim)
        os.rename(tmp, other)
        rel += f" with {os.path.basename(other)}"
    return f"{kind} {rel}"


def pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """Every (class, kind) pair in an order of the seed; the first `count` (repeating when more)."""
    every = [(c, k) for c in CLASSES for k in KINDS if k in APPLIES[c]]
    rng.shuffle(every)
    if ONLY:
        return [ONLY[i % len(ONLY)] for i in range(count)]
    return [every[i % len(every)] for i in range(count)]


class Trial:
    """One damaged copy: its repository (`repo`, a local copy the driver serves), state, source."""

    def __init__(self, t: Template, base: Path, what: str) -> None:
        self.t, self.base, self.what = t, base, what
        self.repo, self.home, self.src = str(base / "repo"), str(base / "home"), str(base / "src")
        self.n = 0
        self.d: Any = None

    def start(self) -> bool:
        """Start a daemon on the copy; False when it refused to, with one line and no traceback."""
        try:
            self.d = self.t.driver.trial_daemon(self)
        except AssertionError as e:
            text = str(e)
            assert "Traceback" not in text, f"{self.what}: cairnd at start\n{text}"
            errors = [line for line in text.splitlines() if "cairnd: error: " in line]
            assert len(errors) == 1, f"{self.what}: cairnd at start\n{text}"
            return False
        return True

    def stop(self) -> None:
        if self.d is not None:
            self.t.driver.stop(self.d)
            self.d = None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        r = self.d.cli(*args, timeout=timeout)
        _clean(r, f"{self.what}: cairn {' '.join(args)}")
        return r

    def restore(self, set_id: str, expected: dict) -> bool:
        """Restore a set; True when it is identical, False when the restore failed naming every
        file it did not give right. In turn: with --verify, plainly (the daemon writes), streamed
        to the client, and as a delta over a tree whose every file differs from the set's in every
        byte (each chunk is fetched: none is taken from the tree as it is). A delta that failed
        as a whole (one error, no file named: the set or its listing cannot be read) may leave
        files as they were, and so may one naming a directory above them it could not read; one
        that names files must have mended every other."""
        self.n += 1
        target = str(self.base / f"restored-{self.n}")
        mode = RESTORE_MODES[self.n % len(RESTORE_MODES)]
        if mode == "--delta":
            shutil.copytree(self.src, target, symlinks=True)
            for d, _, fs in os.walk(target):
                for f in fs:
                    path = os.path.join(d, f)
                    if not os.path.islink(path):
                        size = os.path.getsize(path)
                        with open(path, "wb") as out:
                            out.write(_bytes_of(self.src, target, path, size).translate(INVERTED))
        before = _files(snapshot(target)) if mode == "--delta" else {}
        r = self.cli("restore", set_id, "--target", target, *(["--delta", "--delete"] if mode == "--delta" else
                                                                 [mode] if mode else []))
        got = _files(snapshot(target)) if os.path.isdir(target) else {}
        if r.returncode == 0:
            assert got == expected, f"{self.what}: set {set_id[:8]} restored different content, exit 0\n" \
                                    f"{_differ(got, expected)}\n{r.stdout}"
            return True
        text = r.stdout + r.stderr
        whole = "unable to restore '" not in text
        for path in _differ(got, expected):
            parents = [path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)]
            if path in before and got.get(path) == before[path] and \
                    (whole or any(f"'{p}'" in text for p in parents)):
                continue  # not written: the delta stopped before it, or its directory cannot be read
            if got.get(path, ("",))[0] == "file" and path not in text:
                raise AssertionError(f"{self.what}: set {set_id[:8]}: '{path}' restored different and "
                                     f"not named\n{text}")
        return False

    def fetch(self, name: str, data: bytes) -> bool:
        """wal-fetch a WAL file; True when it gave exactly `data`, False when it failed (a
        non-zero exit status: recovery never takes another file for it)."""
        self.n += 1
        target = self.base / f"fetched-{self.n}"
        r = self.cli("wal-fetch", "--system-id", str(SYSTEM_ID), name, str(target))
        if r.returncode == 0:
            got = target.read_bytes() if target.exists() else b""
            assert got == data, f"{self.what}: wal-fetch {name} gave different content, exit 0"
            return True
        return False


RESTORE_MODES = ("--verify", "", "--stream", "--delta")
INVERTED = bytes(255 - i for i in range(256))  # every bit of every byte flipped


def _bytes_of(src: str, target: str, path: str, size: int) -> bytes:
    """The source's bytes of the file copied to `path`, `size` of them."""
    with open(os.path.join(src, os.path.relpath(path, target)), "rb") as f:
        return f.read(size)


def _differ(got: dict, expected: dict) -> list[str]:
    return sorted(p for p in set(got) | set(expected) if got.get(p) != expected.get(p))


def _put_back(t: Template, trial: Trial, cls: str) -> str:
    """The daemon refused to start: with the damaged class put back from the template it
    starts, verify --read-data passes and every set restores (nothing else was lost)."""
    what = trial.what
    assert cls in ("config", "keys"), f"{what}: cairnd refused to start"
    shutil.rmtree(os.path.join(trial.repo, cls))
    shutil.copytree(os.path.join(t.repo, cls), os.path.join(trial.repo, cls))
    trial.stop()
    assert trial.start(), f"{what}: cairnd refused to start with the {cls} put back"
    final = trial.cli("verify", "--read-data", timeout=300)
    assert final.returncode == 0, f"{what}: with the {cls} put back\n{final.stdout}"
    for s, exp in t.expected.items():
        assert trial.restore(s, exp), f"{what}: set {s[:8]} with the {cls} put back"
    return "refused to start; the object put back, all is well"


def _copy(t: Template, trial: Trial, restored: dict[str, bool]) -> int:
    """`cairn copy` of the damaged repository into a new one: every set it copied restores
    there exactly as taken (damage is never carried into a copy), and a set it did not copy is
    one whose restore failed here. Returns how many sets it copied."""
    from cairn.store.content.crypto import Secret
    from cairn.store.repository import Repository

    key, dest = LocalDriver.make_key(trial.base / "copy-key"), str(trial.base / "copy")
    r = trial.cli("--json", "copy", "--to", dest, "--to-key-file", key, timeout=300)
    if not r.stdout.strip():  # failed as a whole (no set listed, say): one line, checked by cli
        return 0
    out = json.loads(r.stdout)
    for f in out["failed"]:
        original = next(s for s in restored if s.startswith(f["set"]))
        assert not restored[original], f"{trial.what}: set {original[:8]} restored whole, not copied: {f['error']}"
    copy = Repository.open_local(dest, read_only=True, secret=Secret.from_key_file(key))
    try:
        sets = {s.id: s for s in copy.list_sets()}
        for c in out["copied"]:
            original = next(s for s in t.expected if s.startswith(c["set"]))
            target = str(trial.base / f"copied-{original[:8]}")
            copy.restore(sets[next(i for i in sets if i.startswith(c["copy"]))], target)
            assert _files(snapshot(target)) == t.expected[original], \
                f"{trial.what}: the copy of set {original[:8]} restores different content"
    finally:
        copy.close()
    return len(out["copied"])


def _listed(trial: Trial) -> set[str]:
    r = trial.cli("--json", "sets")
    return {s["id"] for s in json.loads(r.stdout)} if r.returncode == 0 else set()


def _run_trial(t: Template, trial: Trial, cls: str, kind: str, rng: random.Random) -> str:
    what = trial.what
    if not trial.start():
        return _put_back(t, trial, cls)
    verify = trial.cli("verify")
    deep = trial.cli("verify", "--read-data", timeout=300)
    listed = _listed(trial)
    restored = {s: trial.restore(s, exp) for s, exp in t.expected.items()}
    # a set object deleted (or rolled back away) looks like a set forgotten: no other object
    # names a set; its restore fails as an unknown set, and nothing else may be amiss
    gone = {s for s in restored if s not in listed} \
        if cls == "repo" or cls == "sets" and kind in ("delete", "rollback") else set()
    assert all(not restored[s] for s in gone), what
    hurt = {s for s, ok in restored.items() if not ok and s not in gone}
    fetched = {name: trial.fetch(name, data) for name, data in t.wal.items()}
    copied = _copy(t, trial, restored)
    if hurt:
        assert deep.returncode != 0, f"{what}: sets {sorted(h[:8] for h in hurt)} do not restore, " \
                                     f"verify --read-data passed\n{deep.stdout}"
    for s in sorted(hurt):  # the check of one set finds what its restore met
        one = trial.cli("verify", "--set", s, "--read-data", timeout=300)
        assert one.returncode != 0, f"{what}: set {s[:8]} does not restore, verify --set passed\n{one.stdout}"
    trial.cli("verify", "--read-data-subset", "1/2", timeout=300)  # a failure is one line, like any
    # backups after the damage: what they commit restores as the source is
    _mutate(trial.src, rng, "after")
    for level in ("incremental", "full"):
        r = trial.cli("--json", "backup", "--level", level, timeout=300)
        if r.returncode == 0:
            new = json.loads(r.stdout)["id"]
            want = _files(snapshot(trial.src))
            if not trial.restore(new, want):
                assert kind in READ_ONLY_FINDS and cls.endswith("packs"), \
                    f"{what}: a {level} backup after the damage committed set {new[:8]}, which does not restore"
            else:
                t_expected = want
                trial.extra = {**getattr(trial, "extra", {}), new: t_expected}
    trial.cli("prune")
    # the repairs the hints name, in the order docs/operations.md gives
    text = verify.stdout + verify.stderr + deep.stdout + deep.stderr
    repaired = []
    if "'cairn repair sets'" in text:
        repaired.append(trial.cli("repair", "sets"))
    if "'cairn repair index --read-data'" in text:
        repaired.append(trial.cli("repair", "index", "--read-data", timeout=300))
    elif "'cairn repair index'" in text:
        repaired.append(trial.cli("repair", "index", timeout=300))
    if "'cairn repair wal'" in text:
        repaired.append(trial.cli("repair", "wal"))
    for r in repaired:
        assert r.returncode == 0, f"{what}: a repair failed\n{r.stdout}\n{r.stderr}"
    if repaired:
        r = trial.cli("--json", "backup", "--level", "full", timeout=300)
        assert r.returncode == 0, f"{what}: the full backup after the repair failed\n{r.stderr}"
        new = json.loads(r.stdout)["id"]
        trial.extra = {**getattr(trial, "extra", {}), new: _files(snapshot(trial.src))}
    pruned = trial.cli("prune")
    command = re.search(r"'cairn prune ((?:--forget [0-9a-f]+ ?)+)'", pruned.stderr)
    if pruned.returncode != 0 and command is not None:  # the way out for sets whose listings are lost for good
        named = command.group(1).split()[1::2]
        for n in named:
            assert any(s.startswith(n) for s in hurt), \
                f"{what}: prune names set {n} to forget, which restored identical\n{pruned.stderr}"
        forgot = trial.cli("prune", *command.group(1).split())
        assert forgot.returncode == 0, f"{what}: prune as its hint says\n{pruned.stderr}\n{forgot.stderr}"
        pruned = trial.cli("prune")
    assert pruned.returncode == 0, f"{what}: prune after the repairs\n{pruned.stderr}"
    final = trial.cli("verify", "--read-data", timeout=300)
    if final.returncode != 0:
        named = [line for line in final.stdout.splitlines() if line.startswith("error: ")]
        for line in named:
            for s in restored:
                if s[:12] in line:
                    assert s in hurt, f"{what}: after the repairs verify names set {s[:8]}, which restored " \
                                      f"identical after the damage\n{final.stdout}"
    for s, ok in restored.items():
        if ok:
            assert trial.restore(s, t.expected[s]), f"{what}: set {s[:8]} no longer restores after prune/repair"
    for name, ok in fetched.items():
        if ok:
            assert trial.fetch(name, t.wal[name]), f"{what}: WAL file {name} no longer fetches after prune/repair"
    for s, exp in getattr(trial, "extra", {}).items():
        if final.returncode == 0:
            assert trial.restore(s, exp), f"{what}: new set {s[:8]} does not restore after the repairs"
    return f"verify {verify.returncode}, read-data {deep.returncode}, hurt {len(hurt)}, copied {copied}, " \
           f"repairs {len(repaired)}, final {final.returncode}"


class LocalDriver:
    """The repository in a local directory, encrypted under a key file (plaintext when
    `plaintext`: CAIRN_DAMAGE_PLAINTEXT=1); daemons started by the daemon tests' `start_daemon`
    fixture."""

    def __init__(self, start_daemon: Any, plaintext: bool = False) -> None:
        self.start_daemon, self.plaintext = start_daemon, plaintext

    @staticmethod
    def make_key(path: Path) -> str:
        path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        return str(path)

    def init(self, root: Path, src: str) -> str:
        """Create the repository; the daemon's state directory."""
        self.key, self.src = self.make_key(root / "key"), src
        self.live, self.home = str(root / "live-repo"), str(root / "home")
        r = subprocess.run([CAIRND, "--repo", self.live, "--init", *self._keyed()],
                           capture_output=True, text=True, timeout=60, env=env_for())
        assert r.returncode == 0, r.stderr
        return self.home

    def _keyed(self) -> list[str]:
        return ["--no-encryption"] if self.plaintext else ["--key-file", self.key]

    def secret(self) -> Any:
        from cairn.store.content.crypto import Secret

        return None if self.plaintext else Secret.from_key_file(self.key)

    def template_daemon(self) -> Any:
        args = self._keyed() if not self.plaintext else []
        return self.start_daemon("--repo", self.live, "--source", self.src, *args, home=self.home)

    def mirror(self, dest: str) -> None:
        shutil.copytree(self.live, dest, symlinks=True)

    def trial_daemon(self, trial: Trial) -> Any:
        args = self._keyed() if not self.plaintext else []
        return self.start_daemon("--repo", trial.repo, "--source", trial.src, *args, home=trial.home)

    @staticmethod
    def stop(d: Any) -> None:
        if d.alive:
            assert d.terminate(30)[0] == 0


def run_campaign(t: Template, root: Path, pairs: list[tuple[str, str]], rng: random.Random, tag: str) -> None:
    """Run a trial for each (class, kind) on a copy of the template; fail at the end with every
    trial's failure (the others still run)."""
    failures: list[str] = []
    for i, (cls, kind) in enumerate(pairs):
        base = root / f"trial-{i}"
        base.mkdir()
        shutil.copytree(t.repo, str(base / "repo"), symlinks=True)
        shutil.copytree(t.home, str(base / "home"), symlinks=True)
        shutil.copytree(t.src, str(base / "src"), symlinks=True)
        done = _damage(t, str(base), cls, kind, rng)
        if done is None:
            print(f"{cls}/{kind}: does not apply", flush=True)
            continue
        trial = Trial(t, base, f"{tag}: trial {i}: {cls}: {done}")
        try:
            outcome = _run_trial(t, trial, cls, kind, rng)
        except AssertionError as e:  # the other trials still run: every failure is reported
            failures.append(str(e))
            print(f"FAILED: {e}", flush=True)
            outcome = "FAILED"
        print(f"{cls}/{kind}: {done}: {outcome}", flush=True)
        trial.stop()
        if outcome != "FAILED":
            shutil.rmtree(base, ignore_errors=True)
    assert not failures, "\n\n".join(failures)
