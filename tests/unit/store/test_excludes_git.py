"""Exclude patterns decide as git does: drawn trees and drawn .gitignore lines, compared with
what `git ls-files --others --exclude-standard` lists, and with what a backup stores.

The patterns mix what operators write (names, "*.log", "cache/", "/root-only", "**/tmp",
"a/**", "a/*", character classes) with negations in every place, where git's rules are
subtle: a negation cannot bring back a path below an excluded directory, and "!e" applies to
paths named e, not to what lies below a directory e. Seeded: CAIRN_FUZZ_SEED replays a
failure, CAIRN_FUZZ_ROUNDS runs more cases; CI (CI set) runs a fixed seed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from cairn.store.snapshots.excludes import Excluder
from cairn.store.storage.backend import MemoryBackend
from storekit import fuzz_rounds, fuzz_seed

pytestmark = [pytest.mark.campaign,
              pytest.mark.skipif(shutil.which("git") is None, reason="needs git, the reference")]

ROUNDS = fuzz_rounds(300)  # 300 cases in about 10 s
NAMES = ("a", "b", "c.log", "d.tmp", "cache", "keep.log", "x y", "e")



def _pattern(rng: random.Random) -> str:
    n = rng.choice(NAMES)
    return rng.choice((
        n, "*.log", f"{n}/", f"/{n}", f"**/{n}", f"a/**/{n}", "a/*", f"*/{n}", f"!{n}", "!keep.log", "!*.log",
        f"{n}*", "cache/**", "a/**", "**/cache/", f"b/{n}", "[ab]", f"!/{n}", f"!{n}/", f"a/**/b/{n}", "*/", "**/",
        f"*/{n}/", f"!a/{n}", "a/", "/a/", "!a/", f"**/{n}/**", "*.tmp", f"{n}/*", "# a comment", "",
        "!**/keep.log", "e/**/*.log", "**/*.tmp"))


def _tree(root: str, rng: random.Random, depth: int = 0) -> None:
    for n in rng.sample(NAMES, rng.randrange(2, 6)):
        p = os.path.join(root, n)
        if depth < 3 and rng.random() < 0.45:
            os.mkdir(p)
            _tree(p, rng, depth + 1)
        else:
            with open(p, "w") as f:
                f.write(n)


def _walk(root: str, ex: Excluder) -> set[str]:
    """Files a walk keeps that never enters an excluded directory (as the backup's walker)."""
    out: set[str] = set()
    stack = [""]
    while stack:
        rel = stack.pop()
        for n in os.listdir(os.path.join(root, rel) if rel else root):
            r = f"{rel}/{n}" if rel else n
            if r in (".git", ".gitignore"):
                continue
            d = os.path.isdir(os.path.join(root, r))
            if ex.excluded(r, d):
                continue
            if d:
                stack.append(r)
            else:
                out.add(r)
    return out


def _stored(repo: Repository, tree: bytes, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for e in repo.load_tree(tree):
        path = prefix + os.fsdecode(e.name)
        if e.kind == "dir":
            out |= _stored(repo, e.subtree, path + "/") if e.subtree else set()
        else:
            out.add(path)
    return out


def test_excludes_decide_as_git_does(tmp_path):
    seed = fuzz_seed()
    print(f"CAIRN_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path))  # no user's global excludes
    # one empty repository whose work tree is each case's tree in turn (a `git init` per case
    # cost more than the rest of the case); it holds no index, so every file is "other"
    git_dir = str(tmp_path / "git")
    subprocess.run(["git", "init", "-q", "--template=", git_dir], check=True, env=env)
    git_dir = os.path.join(git_dir, ".git")
    for case in range(ROUNDS):
        root = str(tmp_path / f"t{case}")
        os.mkdir(root)
        _tree(root, rng)
        patterns = [_pattern(rng) for _ in range(rng.randrange(1, 5))]
        with open(os.path.join(root, ".gitignore"), "w") as f:
            f.write("\n".join(patterns) + "\n")
        r = subprocess.run(["git", f"--git-dir={git_dir}", f"--work-tree={root}", "ls-files", "--others",
                            "--exclude-standard", "-z"], capture_output=True, check=True, env=env)
        want = {x for x in r.stdout.decode().split("\0") if x and x != ".gitignore"}
        got = _walk(root, Excluder(patterns))
        assert got == want, (f"seed {seed} case {case}, patterns {patterns}: only Cairn keeps {sorted(got - want)}, "
                             f"only git keeps {sorted(want - got)}")
        if case % 20 == 0:  # the backup's own walker, through a real backup
            repo = Repository.init(MemoryBackend(), RepoConfig.new())
            s = repo.backup(BackupRequest(source="t", paths=(root,),
                                          excludes=(".git/", "/.gitignore", *patterns)))
            assert _stored(repo, bytes.fromhex(s.tree)) == want, f"seed {seed} case {case}, patterns {patterns}"
        shutil.rmtree(root)
