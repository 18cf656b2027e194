"""verify's read-data subset: "n/m" reads group n of m of the packs, and the m groups together
read every pack exactly once (so rotating through them finds damage anywhere); "P%" reads that
share of the packs; damage is reported by the run whose packs hold it and by no other; bad
subsets are refused before anything is read."""

from __future__ import annotations

import math

import pytest
from cairn.store.content.packs import TYPE_DATA
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import InvalidArgumentError
from cairn.store.maintenance.check import parse_subset
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from storekit import backup, make_tree


@pytest.fixture
def many_packs(src, rng):
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new(pack_size=64 * 1024))  # small packs: many of them
    make_tree(str(src), rng, files=40, max_size=60_000)
    backup(repo, src)
    packs = sorted(name for kind, name in inner.objects if kind == "packs")
    assert len(packs) >= 12
    return inner, packs


def test_groups_read_every_pack_once_and_find_the_damage(many_packs):
    inner, packs = many_packs
    # a pack of file data only, damaged inside a blob: a damaged tree would be found by the
    # structure walk of every run, whatever its group (pack names change with the files' times)
    by_pack: dict[str, list] = {}
    for _bid, loc in Repository.open(inner).index.items():
        by_pack.setdefault(loc.pack, []).append(loc)
    data_only = [p for p in packs if all(loc.type == TYPE_DATA for loc in by_pack.get(p, []))]
    victim = data_only[len(data_only) // 2]
    first = min(by_pack[victim], key=lambda loc: loc.offset)
    data = bytearray(inner.objects[("packs", victim)])
    data[first.offset + first.stored_len // 2] ^= 0x40
    inner.objects[("packs", victim)] = bytes(data)
    m = 5
    read, found = 0, []
    for n in range(1, m + 1):
        report = Repository.open(inner).check(subset=f"{n}/{m}")
        read += report.packs_checked
        if not report.ok:
            assert any(p.object_id == victim for p in report.errors), report.errors
            found.append(n)
    assert read == len(packs)  # every pack once over the m runs
    assert found == [int(victim[:8], 16) % m + 1]  # only the run whose group holds it
    assert not Repository.open(inner).check(read_data=True).ok


def test_a_percentage_reads_that_share(many_packs):
    inner, packs = many_packs
    report = Repository.open(inner).check(subset="25%")
    assert report.ok and report.packs_checked == math.ceil(len(packs) * 0.25)
    assert Repository.open(inner).check(subset="0.1%").packs_checked == 1  # at least one
    assert Repository.open(inner).check(subset="100%").packs_checked == len(packs)


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "x/y", "0%", "150%", "-5%", "1/0", ""])
def test_bad_subsets_are_refused(many_packs, bad):
    inner, _ = many_packs
    if not bad:
        assert Repository.open(inner).check(subset=bad).packs_checked == 0  # empty: no subset, no read
        return
    with pytest.raises(InvalidArgumentError, match="invalid read-data subset"):
        parse_subset(bad)
    with pytest.raises(InvalidArgumentError, match="invalid read-data subset"):
        Repository.open(inner).check(subset=bad)


def test_a_subset_does_not_go_with_one_set(many_packs):
    inner, _ = many_packs
    repo = Repository.open(inner)
    with pytest.raises(InvalidArgumentError, match="does not go with a set"):
        repo.check(subset="1/2", set_ref=repo.list_sets()[0].id)


def test_an_unindexed_pack_beside_a_running_backup_is_not_sent_to_repair(many_packs):
    """A backup indexes its packs when it finishes them: while one runs (a lock held by another
    host), verify says the pack may be its own rather than advising a repair at once."""
    import json
    import time

    inner, _ = many_packs
    inner.put("packs", "9" * 64, b"a pack being written")
    plain = Repository.open(inner).check()
    assert plain.warnings == () and [n.message for n in plain.notes] == [
        "1 pack not in any index, left by an interrupted write; prune removes it"]
    inner.put("locks", "e" * 32, json.dumps({"host": "beta", "pid": 4242, "pid_space": "elsewhere",
                                             "exclusive": False, "purpose": "backup of source 'app'",
                                             "time": time.time()}).encode())
    busy = Repository.open(inner).check()
    (w,) = [p for p in busy.warnings if p.object_id == "9" * 64]
    assert "is not indexed yet: it may belong to what is running now (backup of source 'app' on host beta" \
           in w.message


def test_a_read_only_verify_beside_a_dead_hosts_lock_leaves_the_lock_in_the_store(many_packs):
    """A host killed in the middle of a backup leaves a pack it never indexed and its lock. The
    read-only recovery daemon's verify looks at the locks (to tell whether the pack may still be
    being written) and must leave them as they are: it writes nothing to the store, not even the
    removal of a stale lock (this host's, whose process is gone, so stale at once)."""
    import json
    import subprocess
    import time

    from cairn.store.content.locks import Locks, pid_space

    inner, _ = many_packs
    inner.put("packs", "9" * 64, b"a pack the killed backup never indexed")
    gone = subprocess.Popen(["true"])
    gone.wait()
    inner.put("locks", "d" * 32, json.dumps({"host": Locks(inner).host, "pid": gone.pid, "pid_space": pid_space(),
                                             "exclusive": False, "purpose": "backup of source 'app'",
                                             "time": time.time()}).encode())
    before = dict(inner.objects)
    report = Repository.open(inner, read_only=True).check()
    assert [n.message for n in report.notes] == [
        "1 pack not in any index, left by an interrupted write; prune removes it"]
    assert dict(inner.objects) == before
    assert Repository.open(inner).locks.others() == [] and ("locks", "d" * 32) not in inner.objects  # writable: removed
