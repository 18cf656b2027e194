"""The local backend on disk: the system calls of a durable put, private permissions, and
removal of temp files that interrupted writes left (never one of a write in progress)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import HOST_TAG, TEMP_MAX_AGE, LocalBackend
from storekit import backup, make_tree


def local(root) -> LocalBackend:
    """A LocalBackend on a directory that holds a repository (its config object): the backend
    makes no repository out of a bare directory (test_local_makes_no_repository_of_a_bare_directory)."""
    b = LocalBackend(str(root))
    b.put("config", "config", b"cfg")
    return b

PACK = "ab" + "cd" * 31


def _strace(tmp_path, code: str) -> list[str]:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (the CI installs it)")
    out = tmp_path / "trace"
    proc = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-o", str(out),
         "-e", "trace=mkdir,mkdirat,openat,write,fsync,fdatasync,rename,renameat,renameat2",
         sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return out.read_text().splitlines()


def _index_of(lines: list[str], pattern: str, start: int = 0) -> int:
    rx = re.compile(pattern)
    for i in range(start, len(lines)):
        if rx.search(lines[i]):
            return i
    raise AssertionError(f"no system call matching {pattern!r} after line {start}:\n" + "\n".join(lines[start:]))


def test_put_writes_fsyncs_renames_and_fsyncs_the_directory_in_order(tmp_path):
    root = str(tmp_path / "repo")
    local(root)  # a repository directory: the backend makes its packs/ directory beside the config
    lines = _strace(tmp_path, f"from cairn.store.storage.backend import LocalBackend\n"
                              f"LocalBackend({root!r}).put('packs', {PACK!r}, b'x' * 100000)\n")
    lines = [ln for ln in lines if root in ln]
    packs, sub = re.escape(f"{root}/packs"), re.escape(f"{root}/packs/ab")
    tmp = sub + r"/\.tmp-" + PACK
    made = _index_of(lines, rf'mkdir(at)?\(.*"{sub}", 0700\)')
    synced_parent = _index_of(lines, rf"fsync\(\d+<{packs}>\)", made)
    opened = _index_of(lines, rf'openat\(.*"{tmp}[^"]*", [^)]*O_CREAT[^)]*, 0600\)', synced_parent)
    wrote = _index_of(lines, rf"write\(\d+<{tmp}[^>]*>", opened)
    synced = _index_of(lines, rf"fsync\(\d+<{tmp}[^>]*>\)", wrote)
    renamed = _index_of(lines, rf'rename(at2?)?\(.*"{tmp}[^"]*",.*"{sub}/{PACK}"', synced)
    _index_of(lines, rf"fsync\(\d+<{sub}>\)", renamed)


def test_repository_directories_and_files_are_private(tmp_path, src, rng):
    make_tree(str(src), rng, files=4)
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    backup(repo, src)
    repo.put_wal("000000010000000000000001", b"w" * 5000)
    seen = 0
    for d, _dirs, files in os.walk(tmp_path / "repo"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == 0o600, f
            seen += 1
    assert seen >= 5


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _temp(d, name: str, *, age: float = 0.0) -> str:
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(b"partial")
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def test_sweep_removes_only_temp_files_of_gone_or_old_writers(tmp_path):
    b = local(tmp_path / "repo")
    b.put("sets", "s1", b"1")
    b.put("packs", PACK, b"2")
    sets, packs = tmp_path / "repo" / "sets", tmp_path / "repo" / "packs" / "ab"
    me, dead = os.getpid(), _dead_pid()
    keep = [
        _temp(packs, f".tmp-{PACK}-{me}-{HOST_TAG}-00000001"),  # a write in progress here
        _temp(sets, f".tmp-s2-{dead}-0badc0de-00000002"),  # another host's writer: only age tells
        _temp(sets, ".tmp-s3-0123456789ab"),  # older naming, fresh
    ]
    gone = [
        _temp(packs, f".tmp-{PACK}-{dead}-{HOST_TAG}-00000003"),  # its writer died
        _temp(sets, f".tmp-s4-{me}-{HOST_TAG}-00000004", age=TEMP_MAX_AGE + 60),  # not written for long
        _temp(sets, ".tmp-s5-0123456789ab", age=TEMP_MAX_AGE + 60),
    ]
    assert b.sweep_temp() == len(gone)
    assert all(os.path.exists(p) for p in keep)
    assert not any(os.path.exists(p) for p in gone)
    assert list(b.list("sets")) == ["s1"] and b.get("packs", PACK) == b"2"


def test_temp_file_of_a_killed_write_is_removed_at_open_and_by_prune(tmp_path):
    root = str(tmp_path / "repo")
    Repository.open_local(root, create=True).close()
    code = (f"import os\nfrom cairn.store.storage.backend import LocalBackend\n"
            f"os.rename = lambda a, b: os.kill(os.getpid(), 9)\n"
            f"LocalBackend({root!r}).put('packs', {PACK!r}, b'x' * 1000)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    left = [n for n in os.listdir(os.path.join(root, "packs", "ab")) if n.startswith(".tmp-")]
    assert len(left) == 1
    Repository.open_local(root, read_only=True).close()
    assert os.listdir(os.path.join(root, "packs", "ab")) == left  # a read-only open changes nothing
    Repository.open_local(root).close()
    assert os.listdir(os.path.join(root, "packs", "ab")) == []
    old = _temp(os.path.join(root, "sets"), ".tmp-s-0123456789ab", age=TEMP_MAX_AGE + 60)
    repo = Repository(LocalBackend(root), Repository.open_local(root, read_only=True).config)
    repo.prune(PrunePolicy())
    assert not os.path.exists(old)


def test_a_pack_replaced_or_deleted_by_hand_is_read_as_it_is_now(tmp_path):
    """Ranged reads keep pack descriptors open; one must not outlive its file at the path (an
    operator putting a good copy over a damaged pack, or deleting one, is seen at once)."""
    from cairn.store.errors import NotFoundError
    b = local(tmp_path)
    name = PACK
    b.put("packs", name, b"damaged!" * 4)
    assert b.get_range("packs", name, 0, 8) == b"damaged!"  # the descriptor is now kept
    path = tmp_path / "packs" / name[:2] / name
    good = tmp_path / "good"
    good.write_bytes(b"good one" * 4)
    os.rename(good, path)
    assert b.get_range("packs", name, 0, 8) == b"good one"
    os.unlink(path)
    with pytest.raises(NotFoundError):
        b.get_range("packs", name, 0, 8)
    b.put("packs", name, b"back in!" * 4)
    assert b.get_range("packs", name, 8, 8) == b"back in!"
    b.close()


def test_a_directory_where_an_object_belongs_is_named_with_the_way_out(tmp_path, src, rng):
    """Someone made a directory inside index/: prune stops (it cannot know what a listed index
    file names) and says what is in the way and what to do, not only 'Is a directory'."""
    from cairn.store.errors import BackendError

    repo = Repository.init_local(str(tmp_path / "repo"))
    make_tree(str(src), rng, files=3)
    backup(repo, str(src))
    os.makedirs(tmp_path / "repo" / "index" / "stray")
    with pytest.raises(BackendError) as e:
        Repository.open_local(str(tmp_path / "repo")).prune(PrunePolicy())
    assert "a directory is where an object belongs" in str(e.value) and "move it out" in e.value.hint
