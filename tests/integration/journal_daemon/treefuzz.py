"""A seeded generator of random file-system operations on a tree (for the journal fuzz test).

Every operation picks its targets from the tree as it is now, so a sequence is reproducible
from the seed alone: same seed, same starting tree, same operations. Each call returns a short
description for the failure message.
"""

from __future__ import annotations

import os
import random
import shutil


class TreeFuzzer:
    def __init__(self, root: str, outside: str, rng: random.Random) -> None:
        self.root = root
        self.outside = outside  # a scratch directory next to the tree (for moves in and out)
        self.rng = rng
        self.counter = 0

    # -- picking --------------------------------------------------------------------------------
    def _entries(self) -> tuple[list[str], list[str], list[str]]:
        """(directories including the root, regular files, symlinks), sorted."""
        dirs, files, links = [self.root], [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    links.append(p)
                elif os.path.isdir(p):
                    dirs.append(p)
                else:
                    files.append(p)
        return sorted(dirs), sorted(files), sorted(links)

    def _name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _data(self) -> bytes:
        n = self.rng.choice((0, 1, 17, 300, 4096, 70000))
        return self.rng.randbytes(n)

    def populate(self, dirs: int = 4, files: int = 12) -> None:
        for _ in range(dirs):
            self.mkdir()
        for _ in range(files):
            self.create()

    # -- operations -------------------------------------------------------------------------------
    def step(self) -> str:
        ops = [(self.create, 10), (self.write, 8), (self.append, 6), (self.truncate, 4), (self.rename_file, 6),
               (self.rename_dir, 3), (self.delete, 5), (self.mkdir, 4), (self.mkdir_with_content, 3),
               (self.rmdir, 2), (self.chmod, 4), (self.chown, 2), (self.touch, 3), (self.symlink, 4),
               (self.hardlink, 2), (self.move_in, 2), (self.move_out, 1)]
        fns, weights = zip(*ops, strict=True)
        return self.rng.choices(fns, weights)[0]()

    def create(self) -> str:
        dirs, _, _ = self._entries()
        p = os.path.join(self.rng.choice(dirs), self._name("f"))
        with open(p, "wb") as f:
            f.write(self._data())
        return f"create {p}"

    def _file(self) -> str | None:
        _, files, _ = self._entries()
        return self.rng.choice(files) if files else None

    def write(self) -> str:
        p = self._file()
        if p is None:
            return self.create()
        with open(p, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(self.rng.randrange(size + 1))
            f.write(self.rng.randbytes(self.rng.randrange(1, 200)))
        return f"write {p}"

    def append(self) -> str:
        p = self._file()
        if p is None:
            return self.create()
        with open(p, "ab") as f:
            f.write(self._data() or b"+")
        return f"append {p}"

    def truncate(self) -> str:
        p = self._file()
        if p is None:
            return self.create()
        size = os.path.getsize(p)
        os.truncate(p, self.rng.randrange(size + 1) if size else 0)
        return f"truncate {p}"

    def rename_file(self) -> str:
        p = self._file()
        if p is None:
            return self.create()
        dirs, files, _ = self._entries()
        if files and self.rng.random() < 0.3:
            dest = self.rng.choice(files)  # replace an existing file
        else:
            dest = os.path.join(self.rng.choice(dirs), self._name("r"))
        os.rename(p, dest)
        return f"rename {p} -> {dest}"

    def rename_dir(self) -> str:
        dirs, _, _ = self._entries()
        movable = [d for d in dirs if d != self.root]
        if not movable:
            return self.mkdir()
        d = self.rng.choice(movable)
        parents = [x for x in dirs if x != d and not x.startswith(d + "/")]
        dest = os.path.join(self.rng.choice(parents), self._name("D"))
        os.rename(d, dest)
        return f"rename dir {d} -> {dest}"

    def delete(self) -> str:
        _, files, links = self._entries()
        if not files and not links:
            return self.create()
        p = self.rng.choice(files + links)
        os.unlink(p)
        return f"delete {p}"

    def mkdir(self) -> str:
        dirs, _, _ = self._entries()
        p = os.path.join(self.rng.choice(dirs), self._name("d"))
        os.mkdir(p)
        return f"mkdir {p}"

    def mkdir_with_content(self) -> str:
        """mkdir -p a/b and files in them at once: content that may predate the watch."""
        dirs, _, _ = self._entries()
        top = os.path.join(self.rng.choice(dirs), self._name("n"))
        deep = os.path.join(top, self._name("m"))
        os.makedirs(deep)
        for d in (top, deep):
            with open(os.path.join(d, self._name("f")), "wb") as f:
                f.write(self._data())
        return f"mkdir with content {top}"

    def rmdir(self) -> str:
        dirs, _, _ = self._entries()
        movable = [d for d in dirs if d != self.root]
        if not movable:
            return self.mkdir()
        d = self.rng.choice(movable)
        shutil.rmtree(d)
        return f"rmtree {d}"

    def chmod(self) -> str:
        dirs, files, _ = self._entries()
        if self.rng.random() < 0.3:
            p = self.rng.choice(dirs)
            mode = self.rng.choice((0o700, 0o755, 0o750))
        else:
            if not files:
                return self.create()
            p = self.rng.choice(files)
            mode = self.rng.choice((0o600, 0o644, 0o640, 0o755))
        os.chmod(p, mode)
        return f"chmod {oct(mode)} {p}"

    def chown(self) -> str:
        dirs, files, _ = self._entries()
        p = self.rng.choice(files + dirs[1:]) if files or dirs[1:] else self.root
        uid, gid = self.rng.choice((0, 1000, 65534)), self.rng.choice((0, 1000, 65534))
        os.chown(p, uid, gid)
        return f"chown {uid}:{gid} {p}"

    def touch(self) -> str:
        p = self._file()
        if p is None:
            return self.create()
        t = self.rng.randrange(1_000_000_000, 1_700_000_000) * 1_000_000_000 + self.rng.randrange(10**9)
        os.utime(p, ns=(t, t))
        return f"touch mtime {p}"

    def symlink(self) -> str:
        dirs, _, links = self._entries()
        target = self.rng.choice(("../x", "nowhere", "f1", "/etc/hostname", self._name("t")))
        if links and self.rng.random() < 0.4:
            p = self.rng.choice(links)  # retarget
            tmp = p + ".tmp"
            os.symlink(target, tmp)
            os.rename(tmp, p)
            return f"retarget {p} -> {target}"
        p = os.path.join(self.rng.choice(dirs), self._name("l"))
        os.symlink(target, p)
        return f"symlink {p} -> {target}"

    def hardlink(self) -> str:
        p = self._file()
        if p is None:
            return self.create()
        dirs, _, _ = self._entries()
        dest = os.path.join(self.rng.choice(dirs), self._name("h"))
        os.link(p, dest)
        return f"hardlink {p} -> {dest}"

    def move_in(self) -> str:
        """A directory made elsewhere, with content, moved into the tree (never watched before)."""
        src = os.path.join(self.outside, self._name("o"))
        os.makedirs(os.path.join(src, "sub"))
        for d in (src, os.path.join(src, "sub")):
            with open(os.path.join(d, self._name("f")), "wb") as f:
                f.write(self._data())
        dirs, _, _ = self._entries()
        dest = os.path.join(self.rng.choice(dirs), os.path.basename(src))
        os.rename(src, dest)
        return f"move in {dest}"

    def move_out(self) -> str:
        dirs, files, _ = self._entries()
        choices = [d for d in dirs if d != self.root] + files
        if not choices:
            return self.create()
        p = self.rng.choice(choices)
        dest = os.path.join(self.outside, self._name("gone"))
        os.rename(p, dest)
        return f"move out {p}"
