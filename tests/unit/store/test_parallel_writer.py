"""ParallelTreeWriter (several files written at once by a pool, each file in order by one thread) lays
down exactly the tree TreeWriter does, keeps its safety rules, and never reports a file whose
write failed as restored."""

from __future__ import annotations

import os
import random
import stat

import pytest
from cairn.fsio import writer as writer_mod
from cairn.fsio.records import Data, EntryMeta, Failed, Hole
from cairn.fsio.writer import ParallelTreeWriter, TreeWriter

MIB = 1 << 20


def stream(seed: int = 7) -> list:
    rnd = random.Random(seed)
    recs: list = [EntryMeta(path=b"d", kind="dir", mode=0o750, mtime_ns=1_000_000_000),
                  EntryMeta(path=b"d/ro", kind="dir", mode=0o500, mtime_ns=2_000_000_000)]
    for i in range(12):  # many small and middle files, one Data record or several
        size = rnd.choice([0, 1, 4096, 100_000, 3 * MIB + 17])
        body = rnd.randbytes(size)
        recs.append(EntryMeta(path=b"d/f%d" % i, kind="file", mode=0o640 | (i % 2) * 0o4, size=size,
                              mtime_ns=3_000_000_000 + i))
        recs += [Data(body[o:o + 256 * 1024]) for o in range(0, size, 256 * 1024)]
    recs.append(EntryMeta(path=b"d/ro/inner", kind="file", mode=0o400, size=5, mtime_ns=4_000_000_000))
    recs.append(Data(b"inner"))
    big = rnd.randbytes(24 * MIB)  # one large file in many ranges
    recs.append(EntryMeta(path=b"big", kind="file", mode=0o600, size=len(big), mtime_ns=5_000_000_000))
    recs += [Data(big[o:o + MIB]) for o in range(0, len(big), MIB)]
    # sparse: zero blocks become holes, a Hole record skips, and a trailing hole
    sparse = rnd.randbytes(128 * 1024) + bytes(4 * MIB) + rnd.randbytes(64 * 1024)
    recs.append(EntryMeta(path=b"sparse", kind="file", mode=0o644, size=len(sparse) + 8 * MIB + 2 * MIB,
                          sparse=True, mtime_ns=6_000_000_000))
    recs += [Data(sparse), Hole(8 * MIB), Data(b"tail")]
    recs.append(EntryMeta(path=b"hl", kind="hardlink", link_to=b"big"))
    recs.append(EntryMeta(path=b"ln", kind="symlink", target=b"d/f1", mtime_ns=7_000_000_000))
    return recs


def run(cls, target, records, **kw):
    w = cls(str(target), **kw)
    for r in records:
        w.apply(r)
    return w.finish()


def snapshot(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            item = {"mode": st.st_mode, "mtime": st.st_mtime_ns, "size": st.st_size, "nlink": st.st_nlink}
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    item["data"] = f.read()
                item["blocks"] = st.st_blocks
            elif stat.S_ISLNK(st.st_mode):
                item["target"] = os.readlink(p)
            out[rel] = item
    return out


def test_the_parallel_writer_lays_down_the_same_tree(tmp_path) -> None:
    recs = stream()
    a = run(TreeWriter, tmp_path / "serial", recs)
    b = run(ParallelTreeWriter, tmp_path / "parallel", recs, workers=4, max_pending=4 * MIB)
    assert not a.errors and not b.errors
    assert (a.files, a.dirs, a.links, a.bytes) == (b.files, b.dirs, b.links, b.bytes)
    sa, sb = snapshot(tmp_path / "serial"), snapshot(tmp_path / "parallel")
    assert sa.keys() == sb.keys() and len(sa) > 15
    for rel in sa:
        assert sa[rel] == sb[rel], rel
    st = os.stat(tmp_path / "parallel" / "sparse")
    assert st.st_blocks * 512 < 1 * MIB  # holes stayed holes (4 MiB of zeros, 8 + 2 MiB skipped)
    assert os.stat(tmp_path / "parallel" / "hl").st_ino == os.stat(tmp_path / "parallel" / "big").st_ino
    assert stat.S_IMODE(os.stat(tmp_path / "parallel" / "d" / "ro").st_mode) == 0o500


def test_a_failed_write_removes_the_file_and_is_never_counted(tmp_path, monkeypatch) -> None:
    real = writer_mod._write_all

    def failing(fd, view, off):
        if off == 5 * MIB and os.readlink(f"/proc/self/fd/{fd}").endswith("/big"):
            raise OSError(28, "No space left on device")
        return real(fd, view, off)

    monkeypatch.setattr(writer_mod, "_write_all", failing)
    recs = stream()
    st = run(ParallelTreeWriter, tmp_path / "t", recs, workers=3, max_pending=2 * MIB)
    assert st.errors[:1] == ["unable to restore 'big': write failed: No space left on device"]
    assert not (tmp_path / "t" / "big").exists()
    # the hardlink to the failed file is refused, not left pointing at partial content
    assert not (tmp_path / "t" / "hl").exists()
    assert "unable to restore 'hl': not linked: the file it is a hard link of, 'big', was not restored" in st.errors
    files = [r for r in recs if isinstance(r, EntryMeta) and r.kind == "file"]
    assert st.files == len(files) - 1
    assert (tmp_path / "t" / "d" / "f3").exists()
    given: dict[bytes, int] = {}
    cur = b""
    for r in recs:
        if isinstance(r, EntryMeta):
            cur = r.path if r.kind == "file" else b""
        elif isinstance(r, Data) and cur:
            given[cur] = given.get(cur, 0) + len(r.data)
    assert st.bytes == sum(n for p, n in given.items() if p != b"big")  # big's written part not counted


@pytest.mark.parametrize("kind", [TreeWriter, ParallelTreeWriter])
def test_bytes_count_only_files_restored_whole(tmp_path, kind) -> None:
    recs = [EntryMeta(path=b"a", kind="file", size=2 * MIB), Data(bytes(MIB) + b"x" * 10), Failed("chunk 'ab12' lost"),
            EntryMeta(path=b"b", kind="file", size=3), Data(b"bbb")]
    st = run(kind, tmp_path / "t", recs)
    assert st.files == 1 and st.bytes == 3


def test_a_failed_record_removes_the_file(tmp_path) -> None:
    recs = [EntryMeta(path=b"a", kind="file", size=2 * MIB), Data(bytes(MIB) + b"x" * 10), Failed("chunk 'ab12' lost"),
            EntryMeta(path=b"b", kind="file", size=1), Data(b"b")]
    st = run(ParallelTreeWriter, tmp_path / "t", recs)
    assert st.files == 1 and st.errors == ["unable to restore 'a': chunk 'ab12' lost"]
    assert os.listdir(tmp_path / "t") == ["b"]


def test_abort_removes_every_file_not_completed(tmp_path) -> None:
    w = ParallelTreeWriter(str(tmp_path / "t"), workers=2)
    for r in [EntryMeta(path=b"done", kind="file", size=1), Data(b"x"),
              EntryMeta(path=b"half", kind="file", size=4 * MIB), Data(bytes(MIB))]:
        w.apply(r)
    w.abort()  # the stream broke off in the middle of 'half'
    assert os.listdir(tmp_path / "t") == ["done"]
    assert w.stats.files == 1


def test_writing_through_a_restored_symlink_is_still_refused(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    recs = [EntryMeta(path=b"esc", kind="symlink", target=str(outside).encode()),
            EntryMeta(path=b"esc/evil", kind="file", size=5), Data(b"pwned")]
    st = run(ParallelTreeWriter, tmp_path / "t", recs)
    assert os.listdir(outside) == [] and st.files == 0
    assert any("refusing to write through 'esc'" in e for e in st.errors)


@pytest.mark.parametrize("workers", [1, 2])
def test_memory_bound_does_not_deadlock_with_few_workers(tmp_path, workers: int) -> None:
    recs = [EntryMeta(path=b"x", kind="file", size=8 * MIB)] + [Data(bytes([i]) * MIB) for i in range(8)]
    st = run(ParallelTreeWriter, tmp_path / "t", recs, workers=workers, max_pending=MIB)
    assert st.files == 1 and (tmp_path / "t" / "x").read_bytes() == b"".join(bytes([i]) * MIB for i in range(8))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("workers", [1, 3])
def test_small_files_waiting_in_a_group_never_block_the_stream(tmp_path, workers: int) -> None:
    """Complete small files wait to go to the pool in groups; their bytes count against
    max_pending, so a stream that reaches the bound hands the group over instead of waiting."""
    rnd = random.Random(3)
    recs, want = [], {}
    for i in range(200):
        body = rnd.randbytes(rnd.randrange(20_000, 120_000))
        want[f"f{i:03d}"] = body
        recs += [EntryMeta(path=b"f%03d" % i, kind="file", size=len(body)), Data(body)]
    recs.append(EntryMeta(path=b"hl", kind="hardlink", link_to=b"f199"))  # its source still in a group
    st = run(ParallelTreeWriter, tmp_path / "t", recs, workers=workers, max_pending=MIB)
    assert not st.errors and st.files == 200 and st.links == 1
    for name, body in want.items():
        assert (tmp_path / "t" / name).read_bytes() == body
    assert os.stat(tmp_path / "t" / "hl").st_ino == os.stat(tmp_path / "t" / "f199").st_ino


@pytest.mark.parametrize("kind", [TreeWriter, ParallelTreeWriter])
def test_extended_attributes_it_may_not_set_are_counted_not_dropped_silently(tmp_path, kind, monkeypatch) -> None:
    """A restore by a process without the privilege (not root): trusted./security. attributes
    are refused by the kernel; each is counted for the report (the client warns), user.* ones
    are set, and the entries are restored."""
    real = os.setxattr

    def refusing(target, name, value, *args, **kw):
        if not (name if isinstance(name, bytes) else name.encode()).startswith(b"user."):
            raise PermissionError(1, "Operation not permitted")
        return real(target, name, value, *args, **kw)

    monkeypatch.setattr(os, "setxattr", refusing)
    recs = [EntryMeta(path=b"d", kind="dir", mode=0o40755, xattrs={b"trusted.a": b"1"}),
            EntryMeta(path=b"d/f", kind="file", size=3, xattrs={b"trusted.b": b"2", b"user.c": b"3",
                                                                  b"security.d": b"4"}),
            Data(b"fff")]
    st = run(kind, tmp_path / "t", recs)
    assert st.errors == [] and st.files == 1 and st.xattrs_skipped == 3
    assert os.getxattr(tmp_path / "t" / "d" / "f", b"user.c") == b"3"
