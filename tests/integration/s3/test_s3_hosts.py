"""Several hosts, one repository in a bucket: three real cairnd processes, each with its own state
directory and `[daemon] host`, back up different and partly identical trees to one SeaweedFS
bucket at the same time, in rounds (full, incremental, incremental, full) while the trees change
between rounds, and a fourth cairnd runs retention and garbage collection (`cairn prune
--keep-last 2`) against the same bucket again and again while they run.

Nothing orders the hosts but the repository itself: the daemons' local locks do not reach
across processes on object storage, so this is the design's lock-free adds, two-phase garbage
collection and conditional writes under real concurrency. The collector runs with a grace
period of 0, the most eager setting: the design's argument (docs/format.md) needs no grace for
writers, whose repository locks keep what they rely on; the grace period only protects readers
that hold no lock, and here no restore or check runs beside the collector.

Afterwards: `cairn verify --read-data` is clean; every kept set (the last two of each host)
restores byte-identical, with its metadata, to the tree as it was when the set was taken; every
blob the kept sets reference is stored in exactly one pack, and the repository holds about one
copy of the data the hosts share, not three; `cairn sets` shows each set's host and `--host`
filters."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid

import pytest
from cairn.store.content.crypto import Secret
from cairn.store.content.index import decode_index
from cairn.store.content.packs import parse_pack
from cairn.store.repository import Repository
from cairnd_harness import snapshot
from s3daemons import Host, s3_repository
from s3kit import write_file

HOSTS = ("alpha", "beta", "gamma")
LEVELS = ("full", "incremental", "incremental", "full")
KEEP_LAST = 2
KIB = 1024


class Trees:
    """The three hosts' trees: `shared/` is identical on every host (and changes identically),
    `own/` is each host's alone. Records which content is shared."""

    def __init__(self, rundir: str, rng: random.Random) -> None:
        self.rng = rng
        self.roots = {h: os.path.join(rundir, "trees", h) for h in HOSTS}
        self.shared_digests: set[bytes] = set()

    def _blob(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def shared(self, rel: str, size: int) -> None:
        data = self._blob(size)
        self.shared_digests.add(data)
        for root in self.roots.values():
            write_file(os.path.join(root, "shared", rel), data)

    def own(self, host: str, rel: str, size: int) -> None:
        write_file(os.path.join(self.roots[host], "own", rel), self._blob(size))

    def first(self) -> None:
        for i in range(6):
            self.shared(f"lib/l{i}.bin", 256 * KIB)
        for h in HOSTS:
            for i in range(4):
                self.own(h, f"o{i}.bin", 128 * KIB)

    def change(self, r: int) -> None:
        """Round r's changes: a new shared file, a shared file replaced, on every host alike; on
        each host a new file of its own, one deleted, one changed in place."""
        self.shared(f"r{r}.bin", 512 * KIB)
        self.shared(f"lib/l{r % 6}.bin", 256 * KIB)
        for h in HOSTS:
            self.own(h, f"n{r}.bin", 128 * KIB)
            os.unlink(os.path.join(self.roots[h], "own", f"o{r % 4}.bin"))
            self.own(h, f"o{r % 4}.bin", 96 * KIB)
            path = os.path.join(self.roots[h], "own", f"o{(r + 1) % 4}.bin")
            with open(path, "r+b") as f:
                f.seek(4 * KIB)
                f.write(self._blob(8 * KIB))


def concurrent_round(hosts: dict[str, Host], keeper: Host, level: str,
                     prunes: list[tuple[float, float, dict]]) -> dict[str, dict]:
    """One backup on every host at once while the keeper prunes again and again; returns each
    host's set and adds the keeper's prune reports (with start and end times) to `prunes`."""
    results: dict[str, dict] = {}
    errors: list[str] = []
    done = threading.Event()

    spans: list[tuple[float, float]] = []

    def backup(h: str) -> None:
        t0 = time.monotonic()
        res = hosts[h].cli("--json", "backup", "--source", "data", "--level", level)
        spans.append((t0, time.monotonic()))
        if res.returncode != 0:
            errors.append(f"{h}: {res.stderr.strip()}")
        else:
            results[h] = json.loads(res.stdout)

    def collect() -> None:  # the fourth process: retention + gc until the hosts are done
        while True:
            t0 = time.monotonic()
            res = keeper.cli("--json", "prune", "--keep-last", str(KEEP_LAST))
            if res.returncode != 0:
                errors.append(f"keeper: {res.stderr.strip()}")
                return
            prunes.append((t0, time.monotonic(), json.loads(res.stdout)))
            if done.is_set():
                return

    writers = [threading.Thread(target=backup, args=(h,)) for h in HOSTS]
    collector = threading.Thread(target=collect)
    seen = len(prunes)
    collector.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(240)
    done.set()
    collector.join(240)
    assert not errors, errors
    assert any(p0 < b1 and p1 > b0 for p0, p1, _ in prunes[seen:] for b0, b1 in spans), \
        "no prune ran while a backup did"
    return results


@pytest.mark.slow
def test_three_hosts_back_up_to_one_bucket_beside_a_collector(weed, creds, rundir):
    passphrase = os.path.join(rundir, "repo.pass")
    with open(passphrase, "w") as f:
        f.write("three hosts one bucket\n")
    prefix = f"hosts-{uuid.uuid4().hex[:8]}"
    trees = Trees(rundir, random.Random(20261204))
    trees.first()
    repo = s3_repository(weed, creds, prefix, passphrase)
    hosts = {h: Host(rundir, h, repo, {"data": trees.roots[h]}) for h in HOSTS}
    keeper = Host(rundir, "keeper", repo + ['gc_grace = "0s"'], {})
    hosts["alpha"].init()
    started = [*hosts.values(), keeper]
    try:
        for d in started:
            d.spawn()
        for d in started:
            d.ready()

        captured: dict[str, dict] = {}  # set id -> the tree as it was when the set was taken
        owner: dict[str, str] = {}
        previous: dict[str, str] = {}  # host -> its last set
        prunes: list[tuple[float, float, dict]] = []
        for r, level in enumerate(LEVELS):
            if r:
                trees.change(r)
            expected = {h: snapshot(trees.roots[h]) for h in HOSTS}  # the trees do not change during the round
            results = concurrent_round(hosts, keeper, level, prunes)
            for h in HOSTS:
                s = results[h]
                assert s["hostname"] == h and s["level"] == level and s["status"] != "failed", s
                # an incremental builds on its own host's last set, never on another host's tree
                assert s["base"] == (previous[h] if level != "full" else None), (h, s["base"])
                captured[s["id"]], owner[s["id"]], previous[h] = expected[h], h, s["id"]
            for h in HOSTS:  # each host's view now holds every host's sets (check reloads the index)
                hosts[h].ok("verify")

        # The hosts are done; one more run frees what the last round's concurrent writes duplicated.
        final = json.loads(keeper.ok("--json", "prune", "--keep-last", str(KEEP_LAST)))
        assert sum(p[2]["packs_deleted"] for p in prunes) > 0  # the collector freed packs while hosts wrote
        forgotten = [i for p in prunes for i in p[2]["forgotten"]] + final["forgotten"]
        assert sorted(forgotten) == sorted(set(forgotten)) and len(forgotten) == len(HOSTS) * (len(LEVELS) - KEEP_LAST)

        alpha = hosts["alpha"]
        report = json.loads(alpha.ok("--json", "verify", "--read-data", timeout=300))
        assert report["ok"] and not report["errors"], report

        # `cairn sets`: every host's sets, the HOST column, and --host filters.
        listed = json.loads(keeper.ok("--json", "sets"))
        kept = {s["id"] for s in listed}
        assert len(kept) == len(HOSTS) * KEEP_LAST and kept <= set(captured)
        for h in HOSTS:
            mine = json.loads(keeper.ok("--json", "sets", "--host", h))
            assert {s["id"] for s in mine} == {i for i in kept if owner[i] == h}
            assert {s["hostname"] for s in mine} == {h}
            newest = sorted((i for i in captured if owner[i] == h), key=list(captured).index)[-KEEP_LAST:]
            assert {s["id"] for s in mine} == set(newest)  # retention kept each host's own last two
        for h in HOSTS:  # each daemon's status describes its own source, though all three share the name
            source = next(x for x in json.loads(hosts[h].ok("--json", "status"))["sources"] if x["name"] == "data")
            assert source["sets"] == KEEP_LAST and {x["hostname"] for x in source["last"].values()} == {h}, source
        table = keeper.ok("sets").splitlines()
        assert "HOST" in table[0].split()
        at = table[0].index(" HOST ") + 1  # the column starts where its heading does
        assert sorted(line[at:].split()[0] for line in table[1:]) == sorted(owner[i] for i in kept)
        omega = keeper.cli("sets", "--host", "omega")  # no host of that name: one line naming those there are
        assert omega.returncode == 3 and "unknown host 'omega'" in omega.stderr, omega.stderr
        assert all(h in omega.stderr for h in HOSTS), omega.stderr

        # Every kept set restores as it was taken, through the host that took it and through another.
        for i, set_id in enumerate(sorted(kept)):
            via = hosts[owner[set_id]] if i % 2 == 0 else keeper
            target = os.path.join(rundir, "restored", set_id[:12])
            via.ok("restore", set_id, "--target", target, timeout=300)
            assert snapshot(target) == captured[set_id], f"set {set_id[:12]} of {owner[set_id]} differs"
    finally:
        for d in started:
            d.stop()

    # Identical files were stored once: each blob the kept sets reference lies in one pack, and
    # the packs hold about one copy of the live data, though the shared part was sent three times.
    backend = weed.backend(prefix)
    store = Repository.open(backend, read_only=True, secret=Secret.from_passphrase_file(passphrase))
    try:
        copies: dict[bytes, list[int]] = {}  # blob -> its stored length in every pack that holds it
        for pack in backend.list("packs"):  # what the packs hold, whatever the index names
            for e in parse_pack(pack, backend.get("packs", pack), store.key.open_trailer):
                copies.setdefault(e.id, []).append(e.stored_len)
        named: dict[bytes, int] = {}
        for name in store.backend.list("index"):  # opened through the repository's key
            for _pack, entries in decode_index(name, store.backend.get("index", name)).items():
                for e in entries:
                    named[e.id] = named.get(e.id, 0) + 1
        live: set[bytes] = set()
        shared: set[bytes] = set()
        sets = store.list_sets()
        stack = [(bytes.fromhex(s.tree), False) for s in sets]
        while stack:
            tree, under_shared = stack.pop()
            if tree in live:
                continue
            live.add(tree)
            for e in store.load_tree(tree):
                inside = under_shared or e.name == b"shared"
                if e.subtree:
                    stack.append((e.subtree, inside))
                live.update(e.chunks)
                if inside:
                    shared.update(e.chunks)
        missing = [b.hex()[:12] for b in live if not copies.get(b) or not named.get(b)]
        assert not missing, f"{len(missing)} live blobs are not both stored and indexed: {missing[:5]}"
        # A blob two hosts stored at the same moment can stay twice where its second copy shares a
        # pack that is mostly live (below the rewrite threshold): few blobs, and bounded in bytes below.
        twice = [b for b in live if len(copies[b]) > 1 or named[b] > 1]
        assert len(twice) <= len(live) // 20, f"{len(twice)} of {len(live)} live blobs are held twice"
        live_bytes = sum(copies[b][0] for b in live)
        shared_bytes = sum(copies[b][0] for b in shared)
        pack_bytes = sum(backend.stat("packs", p) for p in backend.list("packs"))
        print(f"\nrepository: {pack_bytes} bytes in packs for {live_bytes} bytes of live blobs, of which "
              f"{shared_bytes} are shared by {len(HOSTS)} hosts (sent {len(HOSTS)} times); "
              f"{len(prunes) + 1} prunes")
        assert shared_bytes > live_bytes // 3  # so that extra copies would show clearly
        # The shared data was sent three times; less than half of one more copy is left
        # (pack framing, dead space below the rewrite threshold).
        assert pack_bytes < live_bytes + shared_bytes // 2
    finally:
        store.close()
