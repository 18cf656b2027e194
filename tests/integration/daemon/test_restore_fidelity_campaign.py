"""Restore-fidelity campaign: what a restore must give back at 3 a.m., through the real daemon
and client on a local repository.

A seeded tree (fidelitykit.py) holds regular files of many sizes (empty, sparse with holes of
1 MiB and more), hard links within a directory and across directories, symlinks (relative,
absolute, dangling, to directories, to names that are not UTF-8), a FIFO, device nodes, xattrs
(user.*, trusted.*, security.capability, POSIX ACLs as system.posix_acl_access and _default),
setuid/setgid/sticky modes, owners and groups without a name on the host, mtimes with
nanoseconds on every kind (directories and symlinks included), names that are not UTF-8, hold
a newline or are 255 bytes long, a path of 4,800 bytes, a setuid file of 17 MiB with a
capability and a second link (the daemon writes it as a lane), and the source directory's own
mode, owner, xattrs and default ACL. The targets lie in a directory with a default ACL, which
nothing the restores make may inherit. A full set is taken, the tree
mutated (content, metadata, a file made a directory and back, symlinks made files, links
added and removed), an incremental set, mutated again, a differential set. Each set is then
restored and compared with the tree as it was when the set was taken (content, kind, mode,
owner, mtime in ns, xattrs, symlink targets, device numbers, which paths share an inode,
sparseness), as `cp -a` keeps a tree:

- a plain restore into an empty directory (written by the daemon on this host), and `--stream`
  (written by the client);
- one directory of a set, named as a path and as an `--include` pattern, and all but one with
  `--exclude` (a hard link to a file outside what is restored comes back as a file);
- `--delta --delete` of the differential set onto the tree of the full set, and of the full set
  onto the differential's (tree left from another set), by the daemon and with `--stream`, and
  then a `--delta --dry-run` that finds nothing left to do;
- `--delta --delete --verify` of the incremental set onto a damaged copy of itself: kinds
  swapped, content changed at the same length and mtime, owners, modes and xattrs changed, a
  hard link broken into a copy, a sparse file filled, extras added;
- a client that is not root (nobody) restores the full set, mends it into the incremental one
  with `--delta --delete`, then mends a damaged copy: every entry its own, the xattrs such a
  client may set (user.* and the POSIX ACLs: docs/restore.md), each device node an error and
  exit 1, the rest as above.

CAIRN_FIDELITY_SEED picks the trees (printed on failure: set it to replay a run),
CAIRN_FIDELITY_ROUNDS how many rounds run, each with the next seed (1 by default, 6-12 s on an
idle machine). Where the target of a delta already holds a file's right content without its
holes (a dense copy), the delta leaves it so: it writes only what differs, and the damage here
keeps holes where it copies a file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable

import pytest
from cairnd_harness import CAIRN, Daemon, env_for, nobody
from fidelitykit import (
    Builder,
    acl,
    as_restored_by,
    chown_tree,
    damage,
    differences,
    snapshot,
    subset,
    visible_to_users,
)

SEED = int(os.environ.get("CAIRN_FIDELITY_SEED", "4111"))
ROUNDS = int(os.environ.get("CAIRN_FIDELITY_ROUNDS", "1"))
NOBODY_ID = 65534


def _check(want: dict, target: str | dict, what: str, tag: str) -> None:
    diffs = differences(want, snapshot(target) if isinstance(target, str) else target)
    assert not diffs, f"{what} differs from the set's tree ({tag}):\n" + "\n".join(diffs)


@pytest.mark.campaign
@pytest.mark.skipif(os.geteuid() != 0, reason="owners, device nodes and trusted.* attributes need root")
@pytest.mark.timeout(120 + 60 * ROUNDS)
def test_restores_give_back_every_kind_of_entry_and_its_metadata(start_daemon, rundir) -> None:
    for round_ in range(ROUNDS):
        seed = SEED + round_
        tag = f"seed {seed}: CAIRN_FIDELITY_SEED={seed} replays it"
        work = os.path.join(rundir, f"r{round_}")
        daemons: list[Daemon] = []
        try:
            _round(start_daemon, work, seed, tag, daemons)
        except AssertionError as e:  # any step's failure (a backup's too) names the seed, and what the daemon logged
            log = daemons[0].log()[-4000:] if daemons else ""
            raise AssertionError(f"{tag}\n{e}\ncairnd's log ends:\n{log}") from None
        daemons[0].terminate(30)
        shutil.rmtree(work)


def _round(start_daemon: Callable[..., Daemon], work: str, seed: int, tag: str, daemons: list[Daemon]) -> None:
    """One round: the tree of `seed` in `work`, its three sets, every restore compared."""
    rng = random.Random(seed)
    src = os.path.join(work, "src")
    os.makedirs(src)
    b = Builder(src, rng)
    b.build()
    d = start_daemon("--repo", os.path.join(work, "repo"), "--source", src)
    daemons.append(d)
    sets, snaps = [], []
    for level in ("full", "incremental", "differential"):
        if level != "full":
            b.mutate()
        snaps.append(snapshot(src))
        sets.append(json.loads(d.ok("--json", "backup", "--level", level))["id"])
    # the targets lie in a directory with a default ACL: what the restore makes must not inherit it
    shared = os.path.join(work, "shared")
    os.mkdir(shared)
    os.setxattr(shared, "system.posix_acl_default", acl(0o770, 4242, 123456))
    for i, set_id in enumerate(sets):
        for route in ((), ("--stream",)):
            target = os.path.join(shared, f"t{i}{'s' if route else ''}")
            out = d.ok("restore", set_id, "--target", target, "--verify", *route)
            assert "verified" in out, f"{tag}: {out}"
            _check(snaps[i], target, f"restore {' '.join(route)} of set {i}", tag)
    # one directory of the set, as a path and as a pattern: links to files outside it are files
    for i, how in ((1, ("b",)), (2, ("--include", "/c/"))):
        target = os.path.join(shared, f"part{i}")
        d.ok("restore", sets[i], "--target", target, *how)
        got = snapshot(target)
        got.pop(b".")
        top = how[-1].strip("/").encode()
        _check(subset(snaps[i], top), got, f"restore {' '.join(how)} of set {i}", tag)
    # all but one directory: the rest whole, the target the set's root, links into it files
    for i, route in ((0, ()), (1, ("--stream",))):
        target = os.path.join(shared, f"but-a{i}")
        d.ok("restore", sets[i], "--target", target, "--exclude", "/a/", *route)
        want = {p: e for p, e in snaps[i].items() if p != b"a" and not p.startswith(b"a/")}
        for p, e in want.items():
            links = tuple(q for q in e.get("links", ()) if q in want)
            want[p] = {k: v for k, v in e.items() if k != "links"} | ({"links": links} if len(links) > 1 else {})
        _check(want, target, f"restore --exclude /a/ {' '.join(route)} of set {i}", tag)
    # trees left from another set, mended by the daemon and by the client; then nothing is left to do
    for i, onto, route in ((2, "t0", ()), (0, "t2s", ("--stream",))):
        target = os.path.join(shared, onto)
        d.ok("restore", sets[i], "--target", target, "--delta", "--delete", *route)
        _check(snaps[i], target, f"--delta {' '.join(route)} of set {i} onto {onto}", tag)
        again = d.ok("restore", sets[i], "--target", target, "--delta", "--delete", "--dry-run")
        assert "dry run: 0 changes" in again, f"{tag}: a second delta of set {i} onto {onto}:\n{again}"
    # a damaged copy, mended by each
    for route in ((), ("--stream",)):
        target = os.path.join(shared, f"t1{'s' if route else ''}")
        damage(target, rng)
        before = snapshot(target)
        r = d.cli("restore", sets[1], "--target", target, "--delta", "--delete", "--verify", *route)
        damaged = "\n".join(differences(snaps[1], before, 60))
        _check(snaps[1], target, f"--delta {' '.join(route)} of set 1 onto its damaged copy "
               f"(exit {r.returncode}: {r.stderr.strip()}), which differed so:\n{damaged}\nand after it", tag)
        assert r.returncode == 0 and "verified" in r.stdout, r.stdout + r.stderr
    # a client that is not root: its own owner everywhere, the xattrs it may set, no devices;
    # set 0 plainly, set 1 by --delta onto it, then onto a damaged copy
    os.chmod(d.socket, 0o666)
    target = os.path.join(work, "nobody")
    os.mkdir(target)
    os.chown(target, NOBODY_ID, NOBODY_ID)
    for i, route, hurt in ((0, (), False), (1, ("--delta", "--delete"), False), (1, ("--delta", "--delete"), True)):
        if hurt:
            damage(target, rng)
            chown_tree(target, NOBODY_ID, NOBODY_ID)
        r = subprocess.run([*nobody(), CAIRN, "--socket", d.socket, "restore", sets[i], "--target", target,
                            "--stream", *route], capture_output=True, text=True, env=env_for(), timeout=120)
        devices = [p for p, e in snaps[i].items() if e["kind"] in ("chardev", "blockdev")]
        what = f"restore {' '.join(route)} of set {i}{' onto a damaged copy' if hurt else ''} by a client " \
               "that is not root"
        assert r.returncode == (1 if devices else 0), f"{what} ({tag}):\n{r.stdout}{r.stderr}"
        _check(as_restored_by(snaps[i], NOBODY_ID, NOBODY_ID), visible_to_users(snapshot(target)), what, tag)
