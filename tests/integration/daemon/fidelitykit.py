"""The restore-fidelity campaign's kit: seeded trees of every kind of entry a set records, their
mutations between sets, damage to a restored copy, and a snapshot of a tree that says exactly
what a restore must give back.

What always holds: every tree is made, changed and read through descriptors of its directories
(never a whole path), so paths longer than PATH_MAX work; a snapshot holds, per path (bytes,
relative; b"." for the root), the kind, permission bits (setuid, setgid and sticky included),
owner, mtime in nanoseconds (symlinks and directories too), every extended attribute (user.*,
security.capability, the POSIX ACLs in system.posix_acl_*), a file's content hash and size, a
symlink's target, a device's numbers, and the set of paths that share each inode. A file the
source holds sparse (less than half its length allocated) must come back so (docs/restore.md:
holes stay holes). Compared as `cp -a` would keep a tree, atime and ctime aside.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import struct
from collections.abc import Iterator

OWNERS = (0, 4242, 65534, 123456)  # 4242 and 123456 have no name on the host
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
_NOID = 0xFFFFFFFF
_FIXED = (b".", b"a", b"b", b"c", b"e2")  # directories that later steps add entries to


def acl(mode: int, user: int, group: int) -> bytes:
    """A POSIX ACL as the kernel stores it in system.posix_acl_*, naming one more user and group."""
    entries = [(_ACL_USER_OBJ, (mode >> 6) & 7, _NOID), (_ACL_USER, 6, user), (_ACL_GROUP_OBJ, (mode >> 3) & 7, _NOID),
               (_ACL_GROUP, 4, group), (_ACL_MASK, 6, _NOID), (_ACL_OTHER, mode & 7, _NOID)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def capability() -> bytes:
    """security.capability for cap_net_raw=ep (VFS_CAP_REVISION_2 with the effective flag)."""
    return struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


@contextlib.contextmanager
def opendir(root: bytes, rel: bytes) -> Iterator[int]:
    """A descriptor of directory `rel` below `root`, reached one component at a time."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in [p for p in rel.split(b"/") if p and p != b"."]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def _split(rel: bytes) -> tuple[bytes, bytes]:
    head, _, name = rel.rpartition(b"/")
    return head or b".", name


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


@contextlib.contextmanager
def _path_fd(pfd: int, name: bytes) -> Iterator[str]:
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=pfd)
    try:
        yield _proc(fd)
    finally:
        os.close(fd)


# ---- snapshots ----


def snapshot(root: str | bytes) -> dict[bytes, dict]:
    """Every path below `root` (and b"." for the root itself) -> what a restore must reproduce."""
    root = os.fsencode(root)
    out: dict[bytes, dict] = {}
    inodes: dict[int, list[bytes]] = {}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parent = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            out[b"."] = _entry(parent, os.path.basename(root.rstrip(b"/")), inodes, b".")
        finally:
            os.close(parent)
        _walk(fd, b"", out, inodes)
    finally:
        os.close(fd)
    for paths in inodes.values():
        if len(paths) > 1:
            for p in paths:
                out[p]["links"] = tuple(sorted(paths))
    for e in out.values():
        e.pop("ino", None)
    return out


def _walk(dfd: int, prefix: bytes, out: dict, inodes: dict) -> None:
    for name in sorted(os.listdir(dfd)):
        name = os.fsencode(name)
        rel = prefix + name
        e = out[rel] = _entry(dfd, name, inodes, rel)
        if e["kind"] == "dir":
            cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                _walk(cfd, rel + b"/", out, inodes)
            finally:
                os.close(cfd)


def _entry(pfd: int, name: bytes, inodes: dict, rel: bytes) -> dict:
    st = os.lstat(name, dir_fd=pfd)
    m = st.st_mode
    kind = ("dir" if stat.S_ISDIR(m) else "file" if stat.S_ISREG(m) else "symlink" if stat.S_ISLNK(m)
            else "fifo" if stat.S_ISFIFO(m) else "chardev" if stat.S_ISCHR(m) else "blockdev" if stat.S_ISBLK(m)
            else "other")
    e: dict = {"kind": kind, "mode": stat.S_IMODE(m), "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns}
    with _path_fd(pfd, name) as p:
        e["xattrs"] = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
    if kind == "file":
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=pfd)
        try:
            h = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
        finally:
            os.close(fd)
        e["size"], e["sha"] = st.st_size, h.hexdigest()
        e["sparse"] = st.st_size > 256 * 1024 and st.st_blocks * 512 < st.st_size // 2
        inodes.setdefault(st.st_ino, []).append(rel)
    elif kind == "symlink":
        e["target"] = os.readlink(name, dir_fd=pfd)
    elif kind in ("chardev", "blockdev"):
        e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return e


def subset(snap: dict[bytes, dict], top: bytes) -> dict[bytes, dict]:
    """The part of `snap` at and below `top`, as a restore of that path gives it: hard links
    to paths outside it are not links there."""
    out = {}
    for p, e in snap.items():
        if p == top or p.startswith(top + b"/"):
            e = dict(e)
            links = tuple(q for q in e.pop("links", ()) if q == top or q.startswith(top + b"/"))
            if len(links) > 1:
                e["links"] = links
            out[p] = e
    return out


def differences(want: dict[bytes, dict], got: dict[bytes, dict], limit: int = 25) -> list[str]:
    """What `got` lacks, has too many of, or holds otherwise than `want`, one line each."""
    out = []
    for p in sorted(set(want) | set(got)):
        w, g = want.get(p), got.get(p)
        if w is None:
            out.append(f"{_show(p)}: not in the set, restored as {g['kind']}")
        elif g is None:
            out.append(f"{_show(p)}: {w['kind']} missing")
        else:
            keys = sorted(k for k in set(w) | set(g) if w.get(k) != g.get(k))
            if keys:
                out.append(f"{_show(p)}: " + "; ".join(f"{k} {w.get(k)!r} -> {g.get(k)!r}" for k in keys))
        if len(out) >= limit:
            out.append("...")
            break
    return out


def _show(p: bytes) -> str:
    text = repr(p)
    return text if len(text) < 120 else text[:60] + "..." + text[-50:]


# ---- making and changing trees ----


class Builder:
    """Makes and changes a seeded tree below `root`, each step through its directories' descriptors."""

    def __init__(self, root: str | bytes, rng: random.Random) -> None:
        self.root = os.fsencode(root)
        self.rng = rng
        self.n = 0

    def _name(self) -> bytes:
        self.n += 1
        r = self.rng.random()
        if r < 0.08:
            return b"bad\xff\xfe-%d" % self.n  # not UTF-8
        if r < 0.14:
            return b"new\nline-%d" % self.n
        if r < 0.18:
            tail = b"-%d" % self.n
            return b"L" * (255 - len(tail)) + tail  # the longest name ext4 allows
        return b"e%d" % self.n

    def _meta(self, pfd: int, name: bytes, kind: str) -> None:
        """Owner, then mode, then xattrs (a chown drops setuid and file capabilities), then mtime."""
        rng = self.rng
        uid, gid = rng.choice(OWNERS), rng.choice(OWNERS)
        os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if kind == "symlink":
            if rng.random() < 0.2:  # user.* cannot be set on a link; trusted.* can
                with _path_fd(pfd, name) as p:
                    os.setxattr(p, "trusted.link", rng.randbytes(20))
            os.utime(name, ns=(self._time(), self._time()), dir_fd=pfd, follow_symlinks=False)
            return
        if kind == "dir":
            mode = rng.choice((0o755, 0o750, 0o2775, 0o1777, 0o700, 0o3755))
        else:
            mode = rng.choice((0o644, 0o600, 0o4755, 0o2711, 0o6755, 0o400, 0o000, 0o1644, 0o777))
        os.chmod(name, mode, dir_fd=pfd, follow_symlinks=False)
        with _path_fd(pfd, name) as p:
            if kind in ("file", "dir") and rng.random() < 0.4:  # user.* on files and dirs; ext4: 4 KiB
                os.setxattr(p, b"user.k%d" % rng.randrange(3), rng.randbytes(rng.choice((0, 1, 40, 300, 1000))))
            if kind in ("file", "dir") and rng.random() < 0.25:
                os.setxattr(p, "system.posix_acl_access", acl(mode, rng.choice(OWNERS[1:]), rng.choice(OWNERS[1:])))
            if kind == "dir" and rng.random() < 0.2:
                os.setxattr(p, "system.posix_acl_default", acl(0o750, 4242, 123456))
            if kind == "file" and rng.random() < 0.2:
                os.setxattr(p, "security.capability", capability())
            if rng.random() < 0.1:
                os.setxattr(p, "trusted.t", b"root only")
        os.utime(name, ns=(self._time(), self._time()), dir_fd=pfd, follow_symlinks=False)

    def _time(self) -> int:
        r = self.rng.random()
        if r < 0.05:
            return self.rng.randrange(-2_000_000_000 * 10**9, 0)  # before 1970
        if r < 0.08:
            return self.rng.choice((0, 1, 999_999_999, 4_102_444_800 * 10**9 + 1))  # the epoch, 2100
        return self.rng.randrange(10**18, 1_800_000_000 * 10**9)  # nanoseconds that are not zero

    def _content(self) -> bytes:
        size = self.rng.choice((0, 0, 1, 100, 4095, 4096, 65537, 300_000, 1_100_000))
        if size > 100_000:  # repeats of a few random blocks: dedup and compression both get work
            blocks = [self.rng.randbytes(4096) for _ in range(4)]
            return b"".join(self.rng.choice(blocks) for _ in range(size // 4096 + 1))[:size]
        return self.rng.randbytes(size)

    def file(self, pfd: int, name: bytes, *, sparse: bool = False) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd)
        try:
            if sparse:  # holes before, between and after data, one of them 1 MiB
                os.pwrite(fd, self.rng.randbytes(5000), (1 << 20) + 4096)
                os.pwrite(fd, self.rng.randbytes(70000), 2 << 20)
                os.ftruncate(fd, (4 << 20) + self.rng.randrange(4096))
            else:
                os.write(fd, self._content())
        finally:
            os.close(fd)
        self._meta(pfd, name, "file")

    def big(self, pfd: int) -> None:
        """A file of 17 MiB (a restore written by the daemon feeds it as a lane beside the
        entries after it), setuid with a capability: both must outlive its writes."""
        blocks = [self.rng.randbytes(4096) for _ in range(8)]
        fd = os.open(b"big", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=pfd)
        try:
            for _ in range(17 * 16):
                os.write(fd, b"".join(self.rng.choice(blocks) for _ in range(16)))
        finally:
            os.close(fd)
        os.chown(b"big", 4242, 123456, dir_fd=pfd)
        os.chmod(b"big", 0o4750, dir_fd=pfd)
        with _path_fd(pfd, b"big") as p:
            os.setxattr(p, "security.capability", capability())
            os.setxattr(p, "system.posix_acl_access", acl(0o750, 4242, 65534))
        os.utime(b"big", ns=(self._time(), self._time()), dir_fd=pfd)

    def symlink(self, pfd: int, name: bytes) -> None:
        target = self.rng.choice((b"../e1", b"/etc/passwd", b"nowhere/at/all", b".", b"..", b"t\xff\xfe",
                                  b"e2/../e3", b"/" + b"x" * 300, b"y/" * 2047))  # the longest: 4,094 bytes
        os.symlink(target, name, dir_fd=pfd)
        self._meta(pfd, name, "symlink")

    def special(self, pfd: int, name: bytes) -> None:
        kind = self.rng.choice(("fifo", "chardev", "blockdev"))
        if kind == "fifo":
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            fmt = stat.S_IFCHR if kind == "chardev" else stat.S_IFBLK
            os.mknod(name, fmt | 0o600, os.makedev(self.rng.choice((1, 7, 250)), self.rng.randrange(256)), dir_fd=pfd)
        self._meta(pfd, name, kind)

    def populate(self, rel: bytes, depth: int, count: int) -> None:
        """`count` entries of every kind in directory `rel`, subdirectories `depth` levels down."""
        with opendir(self.root, rel) as pfd:
            made = []
            for _ in range(count):
                name = self._name()
                r = self.rng.random()
                if r < 0.45:
                    self.file(pfd, name, sparse=self.rng.random() < 0.06)
                elif r < 0.6:
                    self.symlink(pfd, name)
                elif r < 0.68:
                    self.special(pfd, name)
                elif r < 0.78 and made:
                    os.link(self.rng.choice(made), name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
                elif depth > 0:
                    os.mkdir(name, dir_fd=pfd)
                    self.populate(rel + b"/" + name, depth - 1, max(2, count // 2))
                    self._meta(pfd, name, "dir")
                    continue
                else:
                    continue
                st = os.lstat(name, dir_fd=pfd)
                if stat.S_ISREG(st.st_mode):
                    made.append(name)

    def files(self) -> list[bytes]:
        return [p for p, e in snapshot(self.root).items() if e["kind"] == "file"]

    def build(self) -> None:
        """The first tree: every kind, hard links across directories, a path over PATH_MAX."""
        for top in (b"a", b"b", b"c"):
            with opendir(self.root, b".") as fd:
                os.mkdir(top, dir_fd=fd)
            self.populate(top, 2, 10)
        with opendir(self.root, b".") as fd:
            self.file(fd, b"e1")
            os.mkdir(b"e2", dir_fd=fd)
            self.file(fd, b"sparse", sparse=True)
            self.file(fd, b"empty")
            self.big(fd)
            os.link(b"big", b"big-link", src_dir_fd=fd, dst_dir_fd=fd)
        self.link_across(4)
        deep = b"deep"
        with opendir(self.root, b".") as fd:
            os.mkdir(deep, dir_fd=fd)
        for i in range(20):  # 20 names of 240 bytes: a path of 4,800 bytes
            with opendir(self.root, deep) as fd:
                name = b"%02d" % i + b"d" * 238
                os.mkdir(name, dir_fd=fd)
            deep += b"/" + name
        with opendir(self.root, deep) as fd, opendir(self.root, b"e2") as e2, opendir(self.root, b".") as top:
            self.file(fd, b"bottom")
            self.symlink(fd, b"link")
            os.link(b"bottom", b"from-deep", src_dir_fd=fd, dst_dir_fd=e2)  # a link whose first path is deep
            os.link(b"e1", b"to-root", src_dir_fd=top, dst_dir_fd=fd)
        self.settle_dirs()

    def link_across(self, count: int) -> None:
        """Hard links to existing files from other directories."""
        files = [p for p in self.files() if not p.startswith(b"deep")]
        for _ in range(min(count, len(files))):
            src = self.rng.choice(files)
            dst_dir = self.rng.choice((b"a", b"b", b"c", b"e2"))
            with opendir(self.root, _split(src)[0]) as sfd, opendir(self.root, dst_dir) as dfd:
                os.link(_split(src)[1], self._name(), src_dir_fd=sfd, dst_dir_fd=dfd)

    def mutate(self) -> None:
        """Change content, metadata, kinds (file <-> directory, symlink <-> file), links; add and remove."""
        rng = self.rng
        snap = snapshot(self.root)
        paths = [p for p in snap if p not in _FIXED and not p.startswith(b"deep")]
        rng.shuffle(paths)
        gone: list[bytes] = []
        for p in paths[: max(6, len(paths) // 4)]:
            if any(p.startswith(g + b"/") or p == g for g in gone):
                continue
            kind = snap[p]["kind"]
            head, name = _split(p)
            with opendir(self.root, head) as pfd:
                r = rng.random()
                if kind == "file" and r < 0.35:  # new content, or the same length and mtime written in place
                    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=pfd)
                    try:
                        os.pwrite(fd, rng.randbytes(rng.randrange(1, 5000)), rng.randrange(0, 1 + snap[p]["size"]))
                    finally:
                        os.close(fd)
                    os.utime(name, ns=(self._time(), self._time()), dir_fd=pfd)
                elif kind == "file" and r < 0.5:  # a file becomes a directory
                    os.unlink(name, dir_fd=pfd)
                    os.mkdir(name, dir_fd=pfd)
                    self.populate(p, 1, 3)
                    self._meta(pfd, name, "dir")
                elif kind == "dir" and r < 0.4:  # a directory becomes a file
                    _rmtree(pfd, name)
                    gone.append(p)
                    self.file(pfd, name)
                elif kind == "symlink" and r < 0.4:
                    os.unlink(name, dir_fd=pfd)
                    self.file(pfd, name)
                elif kind in ("file", "fifo", "chardev", "blockdev") and r < 0.65:
                    os.unlink(name, dir_fd=pfd)
                    self.symlink(pfd, name)
                elif r < 0.8 and kind != "dir":
                    os.unlink(name, dir_fd=pfd)
                    gone.append(p)
                else:
                    self._meta(pfd, name, kind)  # owner, mode, xattrs, mtime
        self.populate(rng.choice((b"a", b"b", b"c")), 1, 4)
        self.link_across(2)
        self.settle_dirs()

    def settle_dirs(self) -> None:
        """Every directory's mtime set anew, deepest first (making its entries changed them)."""
        dirs = [p for p, e in snapshot(self.root).items() if e["kind"] == "dir"]
        for p in sorted(dirs, key=lambda p: -p.count(b"/")):
            head, name = _split(p)
            with opendir(self.root, head) as pfd:
                os.utime(name, ns=(self._time(), self._time()), dir_fd=pfd, follow_symlinks=False)
        with opendir(self.root, b".") as fd:
            os.chown(fd, self.rng.choice(OWNERS), self.rng.choice(OWNERS))
            os.chmod(fd, self.rng.choice((0o2750, 0o1777, 0o700, 0o755)))
            os.setxattr(fd, b"user.root", self.rng.randbytes(8))
            if self.rng.random() < 0.5:
                os.setxattr(_proc(fd), "system.posix_acl_default", acl(0o750, 4242, 123456))
            os.utime(fd, ns=(self._time(), self._time()))


def _rmtree(pfd: int, name: bytes) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
    try:
        for child in os.listdir(fd):
            child = os.fsencode(child)
            if stat.S_ISDIR(os.lstat(child, dir_fd=fd).st_mode):
                _rmtree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


def chown_tree(root: str | bytes, uid: int, gid: int) -> None:
    """Every entry below `root`, and `root`, given to uid:gid (links themselves, not what they name)."""
    root = os.fsencode(root)

    def walk(dfd: int) -> None:
        for name in [os.fsencode(n) for n in os.listdir(dfd)]:
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode):
                cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    walk(cfd)
                finally:
                    os.close(cfd)

    with opendir(root, b".") as fd:
        os.chown(fd, uid, gid)
        walk(fd)


def as_restored_by(snap: dict[bytes, dict], uid: int, gid: int) -> dict[bytes, dict]:
    """What a restore by a client that is not root (uid:gid) gives of `snap`: its own owner on
    every entry, the xattrs it may set (user.* and the POSIX ACLs; docs/restore.md), and no
    device nodes (mknod needs privilege: each is an error of the restore)."""
    out = {}
    for p, e in snap.items():
        if e["kind"] in ("chardev", "blockdev"):
            continue
        xattrs = {k: v for k, v in e["xattrs"].items() if k.startswith(("user.", "system.posix_acl_"))}
        out[p] = dict(e, uid=uid, gid=gid, xattrs=xattrs)
    return out


def visible_to_users(snap: dict[bytes, dict]) -> dict[bytes, dict]:
    """`snap` without the trusted.* xattrs, which a process that is not root neither sees nor removes."""
    return {p: dict(e, xattrs={k: v for k, v in e["xattrs"].items() if not k.startswith("trusted.")})
            for p, e in snap.items()}


def damage(root: str | bytes, rng: random.Random) -> None:
    """Hurt a restored copy as an accident would: kinds swapped (file <-> directory, symlink <->
    file, a device for a fifo), content changed in place at the same length and mtime, modes,
    owners and xattrs changed, a hard link broken into a copy, a sparse file filled, extras added."""
    root = os.fsencode(root)
    snap = snapshot(root)
    paths = [p for p in snap if p != b"." and not p.startswith(b"deep")]
    rng.shuffle(paths)
    gone: list[bytes] = []
    for p in paths[: max(8, len(paths) // 3)]:
        if any(p.startswith(g + b"/") or p == g for g in gone):
            continue
        e = snap[p]
        head, name = _split(p)
        with opendir(root, head) as pfd:
            r = rng.random()
            if e["kind"] == "file" and r < 0.3 and e["size"]:
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=pfd)
                try:
                    os.pwrite(fd, b"\x01" * min(e["size"], 100), rng.randrange(e["size"]))
                finally:
                    os.close(fd)
                os.utime(name, ns=(e["mtime"], e["mtime"]), dir_fd=pfd)
            elif e["kind"] == "file" and r < 0.45:  # a file becomes a directory with a file in it
                os.unlink(name, dir_fd=pfd)
                os.mkdir(name, dir_fd=pfd)
                with opendir(root, p) as cfd:
                    fd = os.open(b"inside", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=cfd)
                    os.close(fd)
            elif e["kind"] == "dir" and r < 0.35:
                _rmtree(pfd, name)
                gone.append(p)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=pfd)
                os.write(fd, b"was a directory")
                os.close(fd)
            elif e["kind"] == "symlink" and r < 0.5:
                os.unlink(name, dir_fd=pfd)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=pfd)
                os.close(fd)
            elif e["kind"] in ("fifo", "chardev", "blockdev") and r < 0.5:
                os.unlink(name, dir_fd=pfd)
                if e["kind"] == "fifo":
                    os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(1, 3), dir_fd=pfd)
                else:
                    os.mkfifo(name, 0o600, dir_fd=pfd)
            elif e["kind"] == "file" and "links" in e and r < 0.6:  # the link broken: a copy in its place
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=pfd)
                data = os.read(fd, e["size"] + 1)
                os.close(fd)
                os.unlink(name, dir_fd=pfd)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=pfd)
                for off in range(0, len(data), 65536):  # holes kept (a delta leaves right content as it is)
                    if data[off:off + 65536].count(0) != len(data[off:off + 65536]):
                        os.pwrite(fd, data[off:off + 65536], off)
                os.ftruncate(fd, len(data))
                os.close(fd)
            elif e["kind"] == "file" and e.get("sparse"):
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=pfd)
                os.pwrite(fd, b"\x02" * e["size"], 0)
                os.close(fd)
            elif e["kind"] != "symlink":
                os.chown(name, 1, 1, dir_fd=pfd, follow_symlinks=False)
                os.chmod(name, 0o755, dir_fd=pfd, follow_symlinks=False)
                with _path_fd(pfd, name) as proc:
                    for x in e["xattrs"]:
                        with contextlib.suppress(OSError):
                            os.removexattr(proc, x)
                    extra = "user.extra" if e["kind"] in ("file", "dir") else "trusted.extra"
                    os.setxattr(proc, extra, b"not the set's")
                os.utime(name, ns=(5, 5), dir_fd=pfd, follow_symlinks=False)
    with opendir(root, b".") as fd:
        os.mkdir(b"extra-dir", dir_fd=fd)
        os.symlink(b"/", b"extra-link", dir_fd=fd)
