"""Benchmark helpers: measured child processes, the corpus, tree digests and sizes, and a fresh
file system for restore targets.

Every tool (Cairn included) runs as a child process, and its wall time and peak resident
memory come from the same place: `os.wait4` on that child (ru_maxrss, which covers the child
and any descendants it waited for). Nothing here imports Cairn.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
DEFAULT_CORPUS_SCRIPT = PROJECT_ROOT.parent / "shared" / "bench" / "build_corpus.py"
DEFAULT_WORKDIR = BENCH_DIR / "out"
MB = 1_000_000
SOURCE_PACKAGES = ("cairn_pkg", "client", "daemon", "fsio", "proto", "store")


def byte_compile_sources() -> None:
    """Byte-compile Cairn's modules in this checkout, as an installed Cairn's are (`make install`
    compiles them). A checkout run with PYTHONDONTWRITEBYTECODE set would otherwise compile every
    module it imports at every start of `cairn` and `cairnd`: 20 ms more per `cairn status`."""
    import compileall

    for pkg in SOURCE_PACKAGES:
        compileall.compile_dir(str(PROJECT_ROOT / pkg), quiet=1)


byte_compile_sources()  # every benchmark imports this module before it starts a tool


@dataclass
class Measured:
    """One finished child process: wall seconds, peak RSS in bytes, exit code, output tails."""

    cmd: list[str]
    seconds: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system seconds of the child (and of whatever a caller adds)

    def check(self) -> Measured:
        if self.returncode != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-15:]
            raise RuntimeError(f"command failed ({self.returncode}): {' '.join(self.cmd)}\n" + "\n".join(tail))
        return self


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 logdir: Path | None = None, name: str = "run") -> Measured:
    """Run `cmd` to completion; time it and read its peak RSS through wait4."""
    logdir = logdir or Path(os.environ.get("TMPDIR", "/tmp"))
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logdir / f"{name}.stdout", logdir / f"{name}.stderr"
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(cmd=cmd, seconds=seconds, peak_rss=usage.ru_maxrss * 1024, returncode=proc.returncode,
                    stdout=out_path.read_text(errors="replace"), stderr=err_path.read_text(errors="replace"),
                    cpu=usage.ru_utime + usage.ru_stime)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far; 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_corpus(script: Path, out: Path, *, big_mib: int | None = None) -> None:
    """Build the corpus with the shared script (same Python, so the same stdlib copy)."""
    if not script.is_file():
        raise SystemExit(f"corpus script not found: {script} (pass --corpus-script)")
    cmd = [sys.executable, str(script), str(out)]
    if big_mib is not None:
        cmd += ["--big-mib", str(big_mib)]
    subprocess.run(cmd, check=True)


def walk_files(root: Path):
    """Yield (relative path, lstat) for every entry under root, sorted, root excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            yield os.path.relpath(p, root), os.lstat(p)


def tree_bytes(root: Path) -> tuple[int, int]:
    """(number of regular files, total bytes of regular files) under root."""
    files = size = 0
    for _, st in walk_files(root):
        if stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
    return files, size


def warm(root: Path) -> None:
    """Read every file once so that each tool starts from the same (warm) page cache."""
    buf = bytearray(4 << 20)
    for rel, st in walk_files(root):
        if stat.S_ISREG(st.st_mode):
            with open(root / rel, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def tree_digest(root: Path) -> dict[str, tuple]:
    """Per entry: kind, mode, size, mtime_ns, content sha256 (files) or link target."""
    out: dict[str, tuple] = {}
    for rel, st in walk_files(root):
        p = root / rel
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb", buffering=0) as f:
                while chunk := f.read(4 << 20):
                    h.update(chunk)
            out[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, h.hexdigest())
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("other", st.st_mode)
    return out


def compare_trees(a: Path, b: Path) -> list[str]:
    """Differences between two trees (content, mode, file mtime); empty when equal."""
    da, db = tree_digest(a), tree_digest(b)
    problems = [f"missing in restore: {p}" for p in sorted(set(da) - set(db))]
    problems += [f"extra in restore: {p}" for p in sorted(set(db) - set(da))]
    problems += [f"differs: {p}" for p in sorted(set(da) & set(db)) if da[p] != db[p]]
    return problems


def dir_size(root: Path) -> int:
    """Allocated-independent size: sum of st_size of regular files under root."""
    return tree_bytes(root)[1]


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


@contextlib.contextmanager
def fresh_fs(work: Path, size_bytes: int) -> Iterator[Path]:
    """A new ext4 file system (an image file under `work`, loop-mounted) for restore targets;
    unmounted and deleted afterwards.

    Why: ext4 avoids reusing an inode deleted in the last minutes, and its search for one
    (`recently_deleted`, which reads inode table blocks) took 35% of a restore's time in a
    profile taken shortly after an earlier run's trees were removed. On a new file system no
    tool pays for another's clean-up. Needs root, mkfs.ext4 and loop devices."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        raise SystemExit("--fresh-fs needs root and mkfs.ext4")
    image, mnt = work / "restore-fs.img", work / "restore-fs"
    with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)  # an earlier run's
    image.unlink(missing_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(max(size_bytes, 1 << 30))
    # inode tables and journal written now: left lazy, a kernel thread writes them during the first
    # minutes of the run, and every tool restored slower then (cp -a 2.4 s against 0.7 s later)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)
