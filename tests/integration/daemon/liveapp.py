"""A live application for the daemon tests: a content-repository-like writer process that runs
while the real cairnd backs its data tree up, and the checks of what a set of it promises.

The writer (`python liveapp.py run ROOT CONTROL SEED`) keeps doing what such applications do:
blobs written to a temporary name, fsynced and renamed into a tree fanned out by their hash,
blobs deleted, an index file rewritten in place (page by page), a log appended and rotated
(rename and a new file, or copy and truncate), a hard-linked file rewritten through one of its
names, a sparse file written at offsets, xattrs set, names with a newline and bytes that are not
UTF-8, a deep chain of directories. Every file it writes carries a header with its own checksum
(`LIVEAPP <seq> <length> <sha256 of the body>`), so a torn copy is told from a state the file
really had; every log line carries its own. Each operation is appended to CONTROL/oplog
(wall-clock time, operation, path).

SIGUSR1 pauses it between two operations (it then writes CONTROL/paused), SIGUSR2 resumes it,
SIGTERM ends it. `python liveapp.py freeze CONTROL` and `thaw CONTROL` are the freeze and thaw
hooks of a cold window: freeze pauses the writer, waits until it says so, and records the tree
as it stands (CONTROL/frozen-<n>.pickle); thaw resumes it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import signal
import stat
import sys
import time

HEADER = b"LIVEAPP"
PAGE = 4096


def _body(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def content(seq: int, body: bytes) -> bytes:
    """A self-checking file: a header naming its sequence number, length and digest, then the body."""
    return b"%s %d %d %s\n" % (HEADER, seq, len(body), hashlib.sha256(body).hexdigest().encode()) + body


def valid_content(data: bytes) -> bool:
    """True when `data` is a whole file as the writer wrote it (never a torn mix of two)."""
    head, nl, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not nl or len(parts) != 4 or parts[0] != HEADER:
        return False
    return int(parts[2]) == len(body) and hashlib.sha256(body).hexdigest().encode() == parts[3]


def index_content(seq: int) -> bytes:
    """The index of one generation: 1 MiB, rewritten in place page by page."""
    return content(seq, (b"%08d" % seq) * ((1 << 20) // 8 - 16))


def valid_index(data: bytes) -> bool:
    """The index as it stands at some moment: whole, or in the middle of its rewrite in place
    (the pages written so far of one generation, the rest of the one before)."""
    parts = data.partition(b"\n")[0].split(b" ")
    if len(parts) != 4 or parts[0] != HEADER or not parts[1].isdigit():
        return False
    new = index_content(int(parts[1]))
    if data == new:
        return True
    old = index_content(int(parts[1]) - 1)
    cut = next((i for i in range(min(len(data), len(new))) if data[i] != new[i]), 0) // PAGE * PAGE
    return data[:cut] == new[:cut] and data[cut:] == old[cut:len(data)] and len(data) in (len(new), len(old))


DB_PAGES = 1024


def db_page(page: int, gen: int) -> bytes:
    """One page of the database file: its number and the generation that wrote it, repeated."""
    head = b"PAGE %06d GEN %09d " % (page, gen)
    return (head * (PAGE // len(head) + 1))[:PAGE]


def db_gens(data: bytes) -> list[int] | None:
    """The generation of each page of a database file, None when a page is torn."""
    gens = []
    for page in range(len(data) // PAGE):
        block = data[page * PAGE:(page + 1) * PAGE]
        gen = int(block[16:25]) if block[:5] == b"PAGE " and block[5:11].isdigit() and block[16:25].isdigit() else -1
        if gen < 0 or block != db_page(page, gen):
            return None
        gens.append(gen)
    return gens if len(data) == DB_PAGES * PAGE else None


def valid_db(data: bytes, writes: list[tuple[int, int]]) -> bool:
    """True when `data` is the database file as it stood at one instant: with G the newest
    generation in it, every page holds the last write to it up to G (`writes`: (page, gen) in
    the order written)."""
    gens = db_gens(data)
    if gens is None:
        return False
    newest = max(gens)
    want = [0] * DB_PAGES
    for page, gen in writes:
        if gen <= newest:
            want[page] = gen
    return gens == want


def valid_part(data: bytes) -> bool:
    """A file as it stands while one write() is putting it down: a prefix of a whole one."""
    head, nl, body = data.partition(b"\n")
    parts = head.split(b" ")
    return not data or valid_content(data) or (
        bool(nl) and len(parts) == 4 and parts[0] == HEADER and len(body) < int(parts[2]))


def log_line(gen: int, n: int) -> bytes:
    text = b"gen %d line %d " % (gen, n)
    return text + hashlib.sha256(text).hexdigest()[:16].encode() + b"\n"


def valid_log(data: bytes) -> bool:
    """A log as it stands at some moment: whole lines, each with its checksum, and at most the
    start of one more (a line being written, or a copy of the log being written)."""
    lines = data.split(b"\n")[:-1]  # what follows the last newline is a line not written whole yet
    for line in lines:
        text, _, digest = line.rpartition(b" ")
        if hashlib.sha256(text + b" ").hexdigest()[:16].encode() != digest:
            return False
    return True


class Writer:
    def __init__(self, root: str, control: str, seed: int, skip: tuple[str, ...] = ()) -> None:
        self.skip = skip
        self.root = root
        self.control = control
        self.rng = random.Random(seed)
        self.seq = 0
        self.blobs: list[str] = []
        self.log_gen = 0
        self.db_gen = 0
        self.index_gen = 1000  # its own generations (of one width): a torn index is one generation and the one before
        self.log_n = 0
        self.oplog = open(os.path.join(control, "oplog"), "a", buffering=1, encoding="utf-8", errors="surrogateescape")
        self.paused = False
        self.stop = False

    def note(self, op: str, path: str) -> None:
        self.oplog.write(f"{time.time():.6f} {op} {path!r}\n")

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def setup(self) -> None:
        for d in ("blobs", "tmp", "logs", "links", "odd", "meta"):
            os.makedirs(self.p(d), exist_ok=True)
        deep = self.p("deep")
        for _ in range(60):
            deep = os.path.join(deep, "level")
        os.makedirs(deep, exist_ok=True)
        with open(self.p("index.dat"), "wb") as f:
            f.write(index_content(self.index_gen))
        with open(self.p("logs/app.log"), "wb"):
            pass
        with open(self.p("db.dat"), "wb") as f:
            f.write(b"".join(db_page(page, 0) for page in range(DB_PAGES)))
        with open(self.p("links/shared"), "wb") as f:
            f.write(content(0, b"shared"))
        if not os.path.exists(self.p("links/shared-2")):
            os.link(self.p("links/shared"), self.p("links/shared-2"))
        with open(self.p("sparse.img"), "wb") as f:
            f.truncate(8 << 20)
        for _ in range(20):
            self.put_blob()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def put_blob(self) -> None:
        data = content(self.next_seq(), _body(self.rng, self.rng.choice((100, 3000, 20000, 200000))))
        h = hashlib.sha256(data).hexdigest()
        tmp = self.p(f"tmp/.up-{self.seq}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.note("upload", os.path.relpath(tmp, self.root))
        final = f"blobs/{h[:2]}/{h[2:4]}/{h}"
        os.makedirs(os.path.dirname(self.p(final)), exist_ok=True)
        os.rename(tmp, self.p(final))
        self.blobs.append(final)
        self.note("put", final)

    def delete_blob(self) -> None:
        if len(self.blobs) > 5:
            rel = self.blobs.pop(self.rng.randrange(len(self.blobs)))
            os.unlink(self.p(rel))
            self.note("delete", rel)

    def rewrite_index(self) -> None:
        self.index_gen += 1
        data = index_content(self.index_gen)
        with open(self.p("index.dat"), "r+b") as f:
            for off in range(0, len(data), PAGE):
                f.write(data[off:off + PAGE])
            f.truncate(len(data))
        self.note("index", "index.dat")

    def write_db(self) -> None:
        """A database's own file: a few pages rewritten in place, each by one write."""
        fd = os.open(self.p("db.dat"), os.O_WRONLY)
        try:
            for _ in range(self.rng.randrange(1, 5)):
                self.db_gen += 1
                page = self.rng.randrange(DB_PAGES)
                os.pwrite(fd, db_page(page, self.db_gen), page * PAGE)
                self.note("dbpage", f"{page}:{self.db_gen}")
        finally:
            os.close(fd)

    def append_log(self) -> None:
        with open(self.p("logs/app.log"), "ab") as f:
            for _ in range(self.rng.randrange(1, 20)):
                f.write(log_line(self.log_gen, self.log_n))
                self.log_n += 1
        self.note("append", "logs/app.log")

    def rotate_log(self) -> None:
        log = self.p("logs/app.log")
        self.log_gen += 1
        self.log_n = 0
        if self.rng.random() < 0.5:
            os.replace(log, self.p("logs/app.log.1"))
            open(log, "wb").close()
            self.note("rotate", "logs/app.log")
            self.note("rotate", "logs/app.log.1")
        else:  # copytruncate
            with open(log, "rb") as src, open(self.p("logs/app.log.2"), "wb") as dst:
                dst.write(src.read())
            os.truncate(log, 0)
            self.note("copytruncate", "logs/app.log")
            self.note("copytruncate", "logs/app.log.2")

    def rewrite_shared(self) -> None:
        rel = "links/shared" + self.rng.choice(("", "-2"))
        with open(self.p(rel), "r+b") as f:
            data = content(self.next_seq(), _body(self.rng, 500))
            f.write(data)
            f.truncate(len(data))
        self.note("shared", rel)

    def write_sparse(self) -> None:
        with open(self.p("sparse.img"), "r+b") as f:
            f.seek(self.rng.randrange(0, 8 << 20, PAGE))
            f.write(b"S" * PAGE)
        self.note("sparse", "sparse.img")

    def set_xattr(self) -> None:
        if self.blobs:
            rel = self.rng.choice(self.blobs)
            os.setxattr(self.p(rel), "user.liveapp.seq", b"%d" % self.next_seq())
            self.note("xattr", rel)

    def odd_name(self) -> None:
        name = self.rng.choice((b"new\nline", b"\xff\xfe-latin", b"tab\there", b"back\\slash"))
        rel = os.path.join(b"odd", name + b"-%d" % (self.seq % 4))
        with open(os.path.join(os.fsencode(self.root), rel), "wb") as f:
            f.write(content(self.next_seq(), b"odd"))
        self.note("odd", os.fsdecode(rel))

    def deep_file(self) -> None:
        rel = os.path.join("deep", *["level"] * 60, f"f{self.seq % 3}")
        with open(self.p(rel), "wb") as f:
            f.write(content(self.next_seq(), b"deep"))
        self.note("deep", rel)

    def put_bundle(self) -> None:
        """A directory of files made under a temporary name and renamed into place whole."""
        seq = self.next_seq()
        tmp = self.p(f"tmp/bundle-{seq}")
        os.makedirs(os.path.join(tmp, "parts"))
        for i in range(3):
            with open(os.path.join(tmp, "parts", f"p{i}"), "wb") as f:
                f.write(content(seq, _body(self.rng, 1000)))
            self.note("part", f"tmp/bundle-{seq}/parts/p{i}")
        os.makedirs(self.p("bundles"), exist_ok=True)
        os.rename(tmp, self.p(f"bundles/b{seq}"))
        self.note("bundle", f"bundles/b{seq}")

    def drop_bundle(self) -> None:
        """A bundle moved aside and removed, or replaced by a file of its name, or the other way round."""
        names = sorted(os.listdir(self.p("bundles"))) if os.path.isdir(self.p("bundles")) else []
        if not names:
            return
        rel = f"bundles/{self.rng.choice(names)}"
        if os.path.isdir(self.p(rel)):
            os.rename(self.p(rel), self.p(f"tmp/trash-{self.next_seq()}"))
            for dirpath, dirs, files in os.walk(self.p(f"tmp/trash-{self.seq}"), topdown=False):
                for name in files:
                    os.unlink(os.path.join(dirpath, name))
                for name in dirs:
                    os.rmdir(os.path.join(dirpath, name))
            os.rmdir(self.p(f"tmp/trash-{self.seq}"))
            if self.rng.random() < 0.5:
                with open(self.p(rel), "wb") as f:
                    f.write(content(self.next_seq(), b"a file where a directory was"))
            self.note("drop", rel)
        else:
            os.unlink(self.p(rel))
            os.makedirs(self.p(rel))
            with open(self.p(rel + "/again"), "wb") as f:
                f.write(content(self.next_seq(), b"a directory where a file was"))
            self.note("redir", rel + "/again")

    def step(self) -> None:
        ops = [(self.put_blob, 10), (self.delete_blob, 3), (self.rewrite_index, 6), (self.append_log, 10),
               (self.rotate_log, 1), (self.rewrite_shared, 2), (self.write_sparse, 2), (self.set_xattr, 2),
               (self.odd_name, 1), (self.deep_file, 1), (self.write_db, 12),
               (self.put_bundle, 3), (self.drop_bundle, 2)]
        ops = [(f, w) for f, w in ops if f.__name__ not in self.skip]
        fn = self.rng.choices([f for f, _ in ops], [w for _, w in ops])[0]
        fn()

    def run(self) -> None:
        signal.signal(signal.SIGUSR1, self._pause)
        signal.signal(signal.SIGUSR2, self._resume)
        signal.signal(signal.SIGTERM, self._stop)
        self.setup()
        with open(os.path.join(self.control, "pid"), "w") as f:
            f.write(str(os.getpid()))
        while not self.stop:
            if self.paused:
                self._park()
                continue
            self.step()
            time.sleep(0.002)
        print(self.seq)

    def _park(self) -> None:
        marker = os.path.join(self.control, "paused")
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(self.seq))
        time.sleep(0.005)

    def _pause(self, *_: object) -> None:
        self.paused = True

    def _resume(self, *_: object) -> None:
        marker = os.path.join(self.control, "paused")
        if os.path.exists(marker):
            os.unlink(marker)
        self.paused = False

    def _stop(self, *_: object) -> None:
        self.stop = True


# ---- the tree as a restore must reproduce it ----


def tree_state(root: str) -> dict[str, tuple]:
    """Per path (str, surrogate-escaped): kind, mode, owner, mtime, size, content digest or
    target, xattrs, and for a file with several names the other names of the tree."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            xattrs = tuple(sorted((n, os.getxattr(full, n, follow_symlinks=False))
                                  for n in os.listxattr(full, follow_symlinks=False)))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, digest, xattrs)
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
    for names in inodes.values():
        for rel in names:
            out[rel] += (tuple(sorted(names)),)
    return out


def differences(want: dict[str, tuple], got: dict[str, tuple]) -> list[str]:
    """What differs between two tree states, a few of each kind."""
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    differ = [f"{p!r}: want {want[p]} got {got[p]}" for p in sorted(set(got) & set(want)) if got[p] != want[p]][:5]
    if not (missing or extra or differ):
        return []
    return [f"missing {missing}", f"extra {extra}", *differ]


def _hook(control: str, phase: str) -> None:
    with open(os.path.join(control, "pid")) as f:
        pid = int(f.read())
    marker = os.path.join(control, "paused")
    if phase == "freeze":
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while not os.path.exists(marker):
            if time.monotonic() > deadline:
                sys.exit("the writer did not pause")
            time.sleep(0.005)
        with open(os.path.join(control, "root")) as f:
            root = f.read()
        n = len([f for f in os.listdir(control) if f.startswith("frozen-")])
        with open(os.path.join(control, "being-frozen"), "wb") as f:
            pickle.dump((time.time(), os.environ.get("CAIRN_SOURCE"), tree_state(root)), f)
        os.rename(os.path.join(control, "being-frozen"), os.path.join(control, f"frozen-{n}.pickle"))
    else:
        os.kill(pid, signal.SIGUSR2)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        root, control = sys.argv[2], sys.argv[3]
        with open(os.path.join(control, "root"), "w") as f:
            f.write(root)
        Writer(root, control, int(sys.argv[4]), tuple(sys.argv[5:])).run()
    else:
        _hook(sys.argv[2], sys.argv[1])
