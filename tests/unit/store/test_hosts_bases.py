"""Hosts sharing a repository and a source name each build incremental and differential sets on
their own sets: a base from another host would compare this host's files with a tree another
machine took (and, were stat data equal, carry that machine's content over). Likewise 'latest'
names the asking host's newest set, never silently another machine's."""

from __future__ import annotations

import os
import random
import time

import pytest
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.model import BackupRequest, BackupSet, SetStats
from cairn.store.repository import Repository
from cairn.store.snapshots.sets import resolve
from cairn.store.storage.backend import MemoryBackend
from storekit import make_tree


def test_each_host_bases_its_sets_on_its_own(tmp_path):
    repo = Repository.init(MemoryBackend(), RepoConfig.new())
    trees = {}
    for i, host in enumerate(("alpha", "beta")):
        trees[host] = str(tmp_path / host)
        make_tree(trees[host], random.Random(i), files=5, max_size=20_000)
        for d, _, files in os.walk(trees[host]):  # older than any set: no file is "racy"
            for name in files:
                os.utime(os.path.join(d, name), (time.time() - 3600,) * 2)

    def take(host: str, level: str):
        return repo.backup(BackupRequest(source="data", paths=(trees[host],), level=level, hostname=host))

    fulls = {h: take(h, "full") for h in ("alpha", "beta")}  # beta's is the newest set of 'data'
    inc = take("alpha", "incremental")
    assert inc.level == "incremental" and inc.base == fulls["alpha"].id
    assert inc.stats.bytes_read == 0  # nothing changed on alpha: carried over from its own tree
    diff = take("beta", "differential")
    assert diff.base == fulls["beta"].id
    assert repo.choose_base("data", "incremental", "gamma") == (
        "full", None, "no set of source 'data' to base an incremental on: taken as full")
    assert repo.choose_base("data", "incremental")[1].id == diff.id  # no host named: any host's newest


def _sets(*specs: tuple[str, str, float]) -> list[BackupSet]:
    """Set records (host, source, time_end) for resolve(); ids sort as given."""
    out = []
    for i, (host, source, t) in enumerate(specs):
        out.append(BackupSet(id=f"{i:02x}" + "ab" * 31, source=source, level="full", requested_level="full", base=None,
                             time_start=t, time_end=t, hostname=host, paths=("/x",), tree="00" * 32,
                             stats=SetStats()))
    return out


def test_latest_is_the_asking_hosts_newest_set():
    """Hosts share a source name: 'latest' on alpha is alpha's set even when beta's is newer, and
    --host names another host's; a fresh host (disaster recovery) gets the only host's newest;
    with several other hosts it is ambiguous rather than a guess."""
    sets = _sets(("alpha", "app", 10), ("beta", "app", 20), ("alpha", "app", 30), ("beta", "app", 40),
                 ("alpha", "logs", 50))
    assert resolve(sets, "latest", "app", own_host="alpha").id == sets[2].id
    assert resolve(sets, "latest", "app", own_host="beta").id == sets[3].id
    assert resolve(sets, "latest", own_host="beta").id == sets[3].id  # no source: beta's newest of any source
    assert resolve(sets, "latest", "app", host="beta", own_host="alpha").id == sets[3].id
    assert resolve(sets, "latest", "logs", own_host="beta").id == sets[4].id  # only alpha has 'logs'
    with pytest.raises(InvalidArgumentError, match=r"ambiguous.*hosts alpha, beta.*'gamma'.*--host"):
        resolve(sets, "latest", "app", own_host="gamma")
    assert resolve(sets, "latest", "app", host="alpha", own_host="gamma").id == sets[2].id
    with pytest.raises(NotFoundError, match="no set of source 'app' of host 'delta'"):
        resolve(sets, "latest", "app", host="delta", own_host="alpha")
    assert resolve(sets, "latest", "app").id == sets[3].id  # no host known: the newest of any (store callers)
    # an id or prefix names one set whatever the host; --host narrows it
    assert resolve(sets, sets[3].id[:4], own_host="alpha").id == sets[3].id
    with pytest.raises(NotFoundError, match=r"unknown set '03ab' of host 'alpha': it is a set of source 'app' "
                                            r"of host 'beta'"):
        resolve(sets, sets[3].id[:4], host="alpha", own_host="alpha")
    with pytest.raises(NotFoundError, match=r"^unknown set 'ff'$"):
        resolve(sets, "ff", own_host="alpha")


def test_latest_and_bases_are_the_asking_machines_own_where_the_host_name_is_shared():
    """Clones under one host name: 'latest' and a base are the asking machine's newest set when
    it took any, else the host's newest (a fresh machine that took over the name)."""
    from cairn.store.model import BackupSet, SetStats
    from cairn.store.snapshots.sets import of_machine, resolve

    def mk(i: int, machine: str, t: float) -> BackupSet:
        return BackupSet(id=f"{i:064x}", source="app", level="full", requested_level="full", base=None,
                         time_start=t, time_end=t, hostname="web", paths=("/x",), tree="00" * 32,
                         stats=SetStats(), extra={"machine": machine})

    sets = [mk(1, "m-a", 10), mk(2, "m-b", 20), mk(3, "m-a", 30), mk(4, "m-b", 40)]
    assert resolve(sets, "latest", own_host="web", own_machine="m-a").id == sets[2].id
    assert resolve(sets, "latest", own_host="web", own_machine="m-b").id == sets[3].id
    assert resolve(sets, "latest", own_host="web", own_machine="m-new").id == sets[3].id
    assert resolve(sets, "latest", own_host="web").id == sets[3].id
    assert of_machine(sets, "m-a") == [sets[0], sets[2]] and of_machine(sets, "") == sets
