"""Helpers for the store tests: building source trees, snapshotting and comparing them.

`snapshot(root)` walks a tree with lstat and records, per relative path (bytes), everything a
restore must reproduce: kind, permission bits, owner, mtime_ns, size, a content digest,
symlink target, xattrs, plus the hardlink grouping of the whole tree. `assert_same_tree`
compares two snapshots and fails with the list of differences.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass

from cairn.store.model import BackupRequest, BackupSet
from cairn.store.repository import Repository

KIND = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
        stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFSOCK: "socket"}


@dataclass(frozen=True)
class Node:
    """What a restore must reproduce of one entry."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    size: int
    digest: str
    target: bytes
    xattrs: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Snapshot:
    nodes: dict[bytes, Node]
    links: frozenset[frozenset[bytes]]


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in names:
        if not n.startswith("user."):
            continue
        out.append((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)))
    return tuple(sorted(out))


def _digest(path: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def snapshot(root: str | bytes, *, skip: tuple[bytes, ...] = (), root_meta: bool = False) -> Snapshot:
    """Everything restorable under `root` (the root's own metadata only with root_meta)."""
    broot = os.fsencode(root)
    nodes: dict[bytes, Node] = {}
    inodes: dict[int, set[bytes]] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        path = os.path.join(broot, rel) if rel else broot
        st = os.lstat(path)
        kind = KIND[stat.S_IFMT(st.st_mode)]
        if rel and rel not in skip:
            nodes[rel] = _node(path, st, kind)
            if kind == "file" and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, set()).add(rel)
        elif root_meta and not rel:
            nodes[b"."] = _node(path, st, kind)
        if kind == "dir" and (not rel or rel not in skip):
            for name in os.listdir(path):
                stack.append(os.path.join(rel, name) if rel else name)
    links = frozenset(frozenset(v) for v in inodes.values() if len(v) > 1)
    return Snapshot(nodes, links)


def _node(path: bytes, st: os.stat_result, kind: str) -> Node:
    return Node(
        kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        mtime_ns=st.st_mtime_ns, size=st.st_size if kind in ("file", "symlink") else 0,
        digest=_digest(path) if kind == "file" else "", target=os.readlink(path) if kind == "symlink" else b"",
        xattrs=_xattrs(path))


def differences(a: Snapshot, b: Snapshot) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    out = []
    for rel in sorted(set(a.nodes) | set(b.nodes)):
        x, y = a.nodes.get(rel), b.nodes.get(rel)
        if x is None or y is None:
            out.append(f"{rel!r}: only in {'restored' if x is None else 'source'}")
        elif x != y:
            fields = [f for f in x.__dataclass_fields__ if getattr(x, f) != getattr(y, f)]
            out.append(f"{rel!r}: " + ", ".join(f"{f} {getattr(x, f)!r} != {getattr(y, f)!r}" for f in fields))
    if a.links != b.links:
        out.append(f"hardlink groups differ: {sorted(map(sorted, a.links))} != {sorted(map(sorted, b.links))}")
    return out


def assert_same_tree(src: str | bytes, dst: str | bytes, *, skip: tuple[bytes, ...] = ()) -> Snapshot:
    a, b = snapshot(src, skip=skip), snapshot(dst, skip=skip)
    diff = differences(a, b)
    assert not diff, "restored tree differs:\n" + "\n".join(diff[:40])
    return a


def write_random(path: str | bytes, size: int, rng: random.Random) -> bytes:
    data = rng.randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


def make_tree(root: str, rng: random.Random, *, files: int = 20, max_size: int = 64 * 1024,
              dirs: tuple[str, ...] = ("a", "a/b", "c")) -> None:
    """A small tree of random files spread over `dirs`."""
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    places = ("",) + dirs
    for i in range(files):
        d = places[i % len(places)]
        write_random(os.path.join(root, d, f"f{i:03d}.bin"), rng.randrange(0, max_size), rng)


def backup(repo: Repository, src: str, level: str = "full", source: str = "src", **kw) -> BackupSet:
    return repo.backup(BackupRequest(source=source, paths=(str(src),), level=level, **kw))


def truncated_pack(repo: Repository, *, damage_blob: bool = False) -> tuple[str, bytes, bytes | None]:
    """A pack of `repo` whose first and last blobs are file data, cut inside its last blob (its
    trailer goes too) and, with `damage_blob`, one byte of its first blob flipped: (the pack, the
    bytes to store in its place, the id of the flipped blob or None). The caller stores them. (A
    small `pack_size` makes several such packs; a damaged tree would hide the files below it.)"""
    from cairn.store.content.packs import TYPE_DATA

    blobs: dict[str, list] = {}
    for bid, loc in repo.index.items():
        blobs.setdefault(loc.pack, []).append((loc.offset, loc.stored_len, bid, loc.type))
    fit = sorted(p for p, bs in blobs.items() if len(bs) >= 3 and min(bs)[3] == max(bs)[3] == TYPE_DATA)
    assert fit, "no pack of three blobs or more begins and ends with file data"
    pack = fit[0]
    ordered = sorted(blobs[pack])
    data = bytearray(repo.backend.get("packs", pack))
    off, length, _, _ = ordered[-1]
    del data[off + length // 2:]
    flipped = None
    if damage_blob:
        off, length, flipped, _ = ordered[0]
        data[off + length // 2] ^= 0x01
    return pack, bytes(data), flipped


def assert_truncated_once(report, pack: str, flipped: bytes | None) -> None:
    """The check report names the truncated `pack` in one finding, as truncated and never as a
    checksum mismatch besides; a flipped blob still within it is counted there and found
    through the sets that need it."""
    from cairn.store.errors import short

    about = [p for p in report.errors if p.object_id == pack or f"pack '{short(pack)}'" in p.message]
    own = [p for p in about if p.object_id == pack]
    assert len(own) == 1 and f"pack '{short(pack)}' is truncated: " in own[0].message, report.errors
    assert not any("checksum mismatch" in p.message and flipped is None for p in about), report.errors
    hurt = [p for p in about if p.object_id != pack]
    assert hurt and all(p.sets for p in hurt), report.errors
    if flipped is None:
        assert all(p.message.endswith(f"pack '{short(pack)}' is truncated") for p in hurt), report.errors
        assert "verification too" not in own[0].message
    else:
        assert own[0].message.endswith("; 1 of the blobs still within it fails verification too"), own[0]
        damaged = [p for p in hurt if not p.message.endswith("is truncated")]  # checksum, or authentication
        assert [p.object_id for p in damaged] == [flipped.hex()], report.errors
        assert any(p.message.endswith(f"pack '{short(pack)}' is truncated") for p in hurt), report.errors


def restore_and_compare(repo: Repository, s: BackupSet, src: str, target: str) -> None:
    stats = repo.restore(s, target)
    assert stats.errors == ()
    assert_same_tree(src, target)


def listing(root: str) -> dict[str, tuple[int, int, str]]:
    """Every path under root with (mode, size, digest): to show that nothing changed."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            digest = _digest(os.fsencode(p)) if stat.S_ISREG(st.st_mode) else ""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, digest)
    return out


CI_SEED = 20261206  # the seed CI runs the store's campaigns with


def fuzz_seed() -> int:
    """The seed of a seeded campaign: CAIRN_FUZZ_SEED when set (to replay a failure), the fixed
    CI_SEED under CI (a landing is never decided by the draw), else a new draw (to explore)."""
    text = os.environ.get("CAIRN_FUZZ_SEED")
    if text:
        return int(text)
    return CI_SEED if os.environ.get("CI") else random.SystemRandom().randrange(1 << 32)


def fuzz_rounds(default: int) -> int:
    """How many rounds a campaign runs: CAIRN_FUZZ_ROUNDS, else `default` (sized for the suite)."""
    return int(os.environ.get("CAIRN_FUZZ_ROUNDS", str(default)))
