"""Issue 4 benchmark: an incremental set after a few edits, Cairn (daemon + change journal) vs restic.

  python bench/journal_incremental.py [--sizes 20000,200000] [--edits 10] [--runs 3] [--workdir DIR]

For each size, a tree of that many small files (100 files per directory) is made once and
kept. Cairn: a real cairnd watches it, `cairn backup --level full`, then per run: `--edits`
files are changed and the end-to-end time of `cairn backup --level incremental` (the client
process, from start to the printed set) is measured next to `restic backup` of the same tree
(restic picks its parent snapshot itself), in the same run, on the same edits. The daemon's
memory while it watches the tree (VmRSS and VmHWM from /proc) is reported too.

Target (issue 4): Cairn >= 20x faster than restic at 200,000 files, and Cairn's time about the
same at both sizes. inotify's max_user_watches must allow one watch per directory; this script
only reads that limit, it never changes system settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_WORKDIR, Measured, run_measured  # noqa: E402

BIN = Path(sys.executable).parent
CAIRND = str(BIN / "cairnd")
CAIRN = str(BIN / "cairn")
FILES_PER_DIR = 100
TARGET_SPEEDUP = 20.0


# ---- trees ----


def make_tree(root: Path, files: int, seed: int = 1) -> None:
    """`files` small files (40..400 bytes), FILES_PER_DIR per directory; made once, then kept."""
    stamp = root.with_suffix(".stamp")
    if stamp.exists() and stamp.read_text() == str(files) and root.is_dir():
        return
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i // FILES_PER_DIR:05d}"
        if i % FILES_PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i % FILES_PER_DIR:03d}.txt").write_bytes(rng.randbytes(rng.randrange(40, 400)))
    stamp.write_text(str(files))


def edit(root: Path, files: int, count: int, rng: random.Random) -> list[str]:
    """Append to `count` random files of the tree; return their paths."""
    paths = []
    for i in rng.sample(range(files), count):
        p = root / f"d{i // FILES_PER_DIR:05d}" / f"f{i % FILES_PER_DIR:03d}.txt"
        with open(p, "ab") as f:
            f.write(f"edit {time.time_ns()}\n".encode())
        paths.append(str(p))
    return paths


def watch_limit() -> int | None:
    try:
        return int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return None


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


# ---- cairnd ----


class CairnDaemon:
    """A real cairnd on its own repository, config and state, driven with the real client."""

    def __init__(self, work: Path, name: str, source: Path) -> None:
        self.work = work
        self.socket = str(work / f"{name}.sock")
        self.config = work / f"{name}.toml"
        self.logdir = work / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        repo, state = work / f"{name}-repo", work / f"{name}-state"
        for p in (repo, state):
            if p.exists():
                shutil.rmtree(p)
        self.config.write_text(
            f'[repository]\npath = "{repo}"\n\n[daemon]\nsocket = "{self.socket}"\nstate_dir = "{state}"\n\n'
            f'[[source]]\nname = "bench"\npaths = ["{source}"]\n'
        )
        self.name = name
        self.proc: subprocess.Popen | None = None
        subprocess.run([CAIRND, "--config", str(self.config), "--init", "--no-encryption"], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self, timeout: float = 300) -> float:
        """Start cairnd and wait until it answers; return the seconds it took."""
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        t0 = time.perf_counter()
        with open(self.logdir / f"{self.name}-cairnd.log", "wb") as err:
            self.proc = subprocess.Popen([CAIRND, "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cairnd exited ({self.proc.returncode}); see {self.logdir}")
            r = subprocess.run([CAIRN, "--socket", self.socket, "status"], capture_output=True)
            if r.returncode == 0:
                return time.perf_counter() - t0
            if time.monotonic() > deadline:
                raise RuntimeError("cairnd did not answer in time")
            time.sleep(0.1)

    def cli(self, *args: str, name: str) -> Measured:
        return run_measured([CAIRN, "--socket", self.socket, *args], logdir=self.logdir, name=name).check()

    def backup(self, level: str, name: str) -> tuple[Measured, dict]:
        m = self.cli("--json", "backup", "--level", level, name=name)
        return m, json.loads(m.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


# ---- restic ----


class Restic:
    def __init__(self, work: Path, name: str) -> None:
        self.repo = work / f"{name}-restic"
        self.logdir = work / "logs"
        self.env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "restic-cache")}
        if self.repo.exists():
            shutil.rmtree(self.repo)
        self.run("init", name=f"{name}-restic-init")

    def run(self, *args: str, name: str) -> Measured:
        return run_measured(["restic", "-r", str(self.repo), *args], env=self.env, logdir=self.logdir,
                            name=name).check()


# ---- the benchmark ----


def bench_size(work: Path, files: int, edits: int, runs: int) -> dict:
    tree = work / f"tree-{files}"
    t0 = time.perf_counter()
    make_tree(tree, files)
    print(f"[{files}] tree ready ({time.perf_counter() - t0:.0f}s)", flush=True)
    dirs = -(-files // FILES_PER_DIR)
    limit = watch_limit()
    if limit is not None and limit < dirs + 16:
        raise SystemExit(f"fs.inotify.max_user_watches is {limit}: too low to watch {dirs} directories")
    name = f"n{files}"
    daemon = CairnDaemon(work, name, tree)
    restic = Restic(work, name)
    rng = random.Random(files)
    result: dict = {"files": files, "dirs": dirs, "runs": []}
    try:
        result["cairnd_start_s"] = daemon.start()
        m, s = daemon.backup("full", f"{name}-cairn-full")
        result["cairn_full_s"] = m.seconds
        print(f"[{files}] cairn full {m.seconds:.1f}s ({s['stats']['files']} files)", flush=True)
        m = restic.run("backup", "--quiet", str(tree), name=f"{name}-restic-full")
        result["restic_full_s"] = m.seconds
        print(f"[{files}] restic full {m.seconds:.1f}s", flush=True)
        for i in range(runs):
            edit(tree, files, edits, rng)
            cm, s = daemon.backup("incremental", f"{name}-cairn-inc{i}")
            rm = restic.run("backup", "--quiet", str(tree), name=f"{name}-restic-inc{i}")
            run = {"cairn_s": cm.seconds, "restic_s": rm.seconds, "changes": s["extra"].get("changes"),
                   "modified": s["stats"]["modified"], "bytes_read": s["stats"]["bytes_read"]}
            result["runs"].append(run)
            print(f"[{files}] run {i}: cairn {cm.seconds:.3f}s ({run['changes']}, {run['modified']} modified) "
                  f"restic {rm.seconds:.3f}s", flush=True)
        result["daemon_memory"] = memory(daemon.proc.pid)
    finally:
        daemon.stop()
    result["cairn_s"] = statistics.median(r["cairn_s"] for r in result["runs"])
    result["restic_s"] = statistics.median(r["restic_s"] for r in result["runs"])
    result["ratio"] = result["restic_s"] / result["cairn_s"]
    return result


def report(results: list[dict], edits: int) -> None:
    print()
    print(f"incremental after {edits} edits, end to end (median of runs)")
    header = ("files", "dirs", "cairn inc", "restic inc", "ratio", "journal", "cairn full", "restic full",
              "cairnd RSS", "cairnd HWM")
    rows = []
    for r in results:
        mem = r.get("daemon_memory", {})
        rows.append((f"{r['files']:,}", f"{r['dirs']:,}", f"{r['cairn_s']:.3f}s", f"{r['restic_s']:.3f}s",
                     f"{r['ratio']:.1f}x", "yes" if all(x["changes"] == "journal" for x in r["runs"]) else "no",
                     f"{r['cairn_full_s']:.1f}s", f"{r['restic_full_s']:.1f}s",
                     f"{mem.get('VmRSS', 0) / 2**20:.0f} MiB", f"{mem.get('VmHWM', 0) / 2**20:.0f} MiB"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(c.rjust(widths[i]) for i, c in enumerate(row)))
    big = max(results, key=lambda r: r["files"])
    print(f"target: >= {TARGET_SPEEDUP:.0f}x restic at {big['files']:,} files: "
          f"{'met' if big['ratio'] >= TARGET_SPEEDUP else 'NOT met'} ({big['ratio']:.1f}x)")
    if len(results) > 1:
        small = min(results, key=lambda r: r["files"])
        print(f"cairn incremental {small['files']:,} -> {big['files']:,} files: "
              f"{small['cairn_s']:.3f}s -> {big['cairn_s']:.3f}s ({big['cairn_s'] / small['cairn_s']:.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "journal")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip())
    results = [bench_size(work, int(n), args.edits, args.runs) for n in args.sizes.split(",")]
    report(results, args.edits)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
