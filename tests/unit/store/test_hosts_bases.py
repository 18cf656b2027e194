"""Hosts sharing a repository and a source name each build incremental and differential sets on
their own sets: a base from another host would compare this host's files with a tree another
machine took (and, were stat data equal, carry that machine's content over)."""

from __future__ import annotations

import os
import random
import time

from cairn.store.content.repoconfig import RepoConfig
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
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
        "full", None, "no set of source 'data' to base a incremental on: taken as full")
    assert repo.choose_base("data", "incremental")[1].id == diff.id  # no host named: any host's newest
