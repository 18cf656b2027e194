"""File restores through cairnd and the cairn client, side by side in one run:

  (a) delta restore of a ~1 GB tree with 1% of it damaged, against a full restore of the same
      tree into an empty directory (target: the delta restore >= 10x faster); then the same
      again with --quick (files whose size and mtime match are not read). The full restore is
      also timed with --stream (written by the client, as before the daemon wrote it);
  (b) a full restore of the standard corpus against `cp -a` of the same tree (target: Cairn's
      restore takes at most 1/0.9 of cp's time, i.e. runs at >= 0.9 of its speed).

    .venv/bin/python bench/restore_tree.py [--tree-mib 1024] [--damage 0.01] [--workdir DIR]
                                           [--corpus-script PATH] [--skip-corpus] [--rounds N]
                                           [--fresh-fs] [--delta-rounds N]

A real cairnd (its own plaintext repository, Unix socket) serves both; every restore is `cairn
restore`. A full restore into an empty directory is written by the daemon on this host (no data
crosses gRPC); so are the delta restores (the daemon reads the target and writes what differs). The
corpus is the one bench/backup_restore.py uses (built once into the work directory). `sync`
runs before each timed step, and outputs stay until the end (deleting thousands of files right
before a step slows ext4's next creations). (a) runs --delta-rounds times (default 3: each a full restore into
a new directory, damage, `--delta`, damage, `--delta --quick`) and compares medians; (b) alternates `cp -a`
and the restore --rounds times (default 3) and compares medians; the load average is printed.
With --fresh-fs (root) every output goes to a new ext4 file system made for the run (see
bench/common.py fresh_fs). Figures go to <workdir>/restore_tree.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from bench.common import DEFAULT_CORPUS_SCRIPT, DEFAULT_WORKDIR, build_corpus, compare_trees, fresh_fs, process_cpu  # noqa: E402

BIN = Path(sys.executable).parent
CAIRN, CAIRND = str(BIN / "cairn"), str(BIN / "cairnd")
MB = 1_000_000


class Daemon:
    def __init__(self, work: Path, source: Path) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-", dir="/tmp"))
        self.sock = str(self.run_dir / "cairnd.sock")
        env = dict(os.environ, CAIRN_HOME=str(self.run_dir / "home"))
        self.log = open(self.run_dir / "cairnd.log", "wb")  # noqa: SIM115 - closed in stop()
        if not (work / "repo").exists():  # cairnd serves only an initialised repository
            subprocess.run([CAIRND, "--repo", str(work / "repo"), "--init", "--no-encryption"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen([CAIRND, "--repo", str(work / "repo"), "--source", str(source),
                                      "--socket", self.sock], stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        end = time.monotonic() + 60
        while self.cli("status").returncode != 0:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit(f"cairnd did not start: {(self.run_dir / 'cairnd.log').read_text()}")
            time.sleep(0.2)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CAIRN, "--socket", self.sock, *args], capture_output=True, text=True)

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        if r.returncode != 0:
            raise RuntimeError(f"cairn {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def timed(self, *args: str) -> tuple[float, str]:
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        out = self.ok(*args)
        return time.perf_counter() - t0, out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


def make_tree(root: Path, total: int, rng: random.Random) -> list[Path]:
    """Files of 1-8 MiB of incompressible bytes in 16 directories, about `total` bytes."""
    files, made = [], 0
    while made < total:
        size = rng.randrange(1, 9) << 20
        p = root / f"d{len(files) % 16:02d}" / f"f{len(files):05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files.append(p)
        made += size
    return files


def damage(files: list[Path], fraction: float, rng: random.Random) -> int:
    """Overwrite 1 MiB ranges of random files until `fraction` of the bytes changed; return bytes."""
    total = sum(p.stat().st_size for p in files)
    done = 0
    while done < total * fraction:
        p = rng.choice(files)
        size = p.stat().st_size
        off = rng.randrange(0, size - (1 << 20) + 1)
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(os.urandom(1 << 20))
        done += 1 << 20
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree-mib", type=int, default=1024)
    ap.add_argument("--damage", type=float, default=0.01)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--corpus-script", type=Path, default=DEFAULT_CORPUS_SCRIPT)
    ap.add_argument("--skip-corpus", action="store_true")
    ap.add_argument("--delta-rounds", type=int, default=3,
                    help="rounds of (a): a full restore, damage, --delta, damage, --delta --quick (0: skip (a))")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (b): cp -a and the restore, alternated")
    ap.add_argument("--fresh-fs", action="store_true", help="write every output to a new ext4 file system (root)")
    args = ap.parse_args(argv)
    work = args.workdir / "restore_tree"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        dest = work
        if args.fresh_fs:
            size = (args.tree_mib << 20) * (1 + args.delta_rounds) + (2 * args.rounds << 30)
            dest = stack.enter_context(fresh_fs(args.workdir.resolve(), size))
        return run(args, work, dest)


def run(args: argparse.Namespace, work: Path, dest: Path) -> int:
    """The two parts; `work` holds repositories and sources, `dest` every restored tree."""
    fig: dict[str, dict] = {"load": {"loadavg_start": os.getloadavg()}}
    rng = random.Random(12)

    # (a) delta restore of a damaged tree vs a full restore, --delta-rounds times
    if args.delta_rounds > 0:  # 0: (b) only
        src = work / "tree"
        files = make_tree(src, args.tree_mib << 20, rng)
        d = Daemon(work / "a", src)
        try:
            s = json.loads(d.ok("--json", "backup", "--level", "full"))
            # the same full restore streamed to the client and written there (how it ran before)
            streamed_s, _ = d.timed("restore", s["id"], "--target", str(dest / "full-streamed"), "--stream")
            runs: list[dict] = []
            problems: list[str] = []
            for r in range(args.delta_rounds):
                target = dest / f"full-{r}"
                full_s, _ = d.timed("restore", s["id"], "--target", str(target))
                restored = sorted(target.rglob("*.bin"))
                damaged = damage(restored, args.damage, rng)
                delta_s, out = d.timed("--json", "restore", s["id"], "--target", str(target), "--delta")
                report = json.loads(out)
                problems += compare_trees(src, target)
                # the same damage again, mended with the quick check (size and mtime) instead of reading
                damage(restored, args.damage, rng)
                quick_s, out = d.timed("--json", "restore", s["id"], "--target", str(target), "--delta", "--quick")
                quick = json.loads(out)
                problems += compare_trees(src, target)
                runs.append({"full_restore_s": full_s, "damaged_bytes": damaged, "delta_restore_s": delta_s,
                             "bytes_written": report["bytes_written"], "written_by": report.get("written_by"),
                             "quick_delta_restore_s": quick_s, "quick_bytes_written": quick["bytes_written"],
                             "speedup": full_s / delta_s, "quick_speedup": full_s / quick_s,
                             "loadavg": os.getloadavg()[0]})
                print(f"delta round {r + 1}: full {full_s:.3f} s, --delta {delta_s:.3f} s ({full_s / delta_s:.1f}x), "
                      f"--delta --quick {quick_s:.3f} s ({full_s / quick_s:.1f}x), load {os.getloadavg()[0]:.1f}",
                      flush=True)
            med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
            fig["delta"] = {"tree_bytes": sum(p.stat().st_size for p in files), "files": len(files),
                            "full_streamed_restore_s": streamed_s, "rounds": runs,
                            "full_restore_median_s": med("full_restore_s"), "delta_median_s": med("delta_restore_s"),
                            "quick_median_s": med("quick_delta_restore_s"),
                            "speedup_of_medians": med("full_restore_s") / med("delta_restore_s"),
                            "quick_speedup_of_medians": med("full_restore_s") / med("quick_delta_restore_s"),
                            "tree_equal_after": not problems, "loadavg": os.getloadavg()}
            print("delta:", json.dumps({k: v for k, v in fig["delta"].items() if k != "rounds"}), flush=True)
        finally:
            d.stop()

    # (b) the standard corpus: cairn restore vs cp -a
    if not args.skip_corpus:
        corpus = args.workdir / "corpus"
        if not corpus.is_dir():
            build_corpus(args.corpus_script, corpus)
        d = Daemon(work / "b", corpus)
        try:
            s = json.loads(d.ok("--json", "backup", "--level", "full"))
            cps, cairns, cp_cpu, cairnd_cpu = [], [], [], []
            for r in range(args.rounds):
                subprocess.run(["sync"], check=True)
                c0, t0 = _children_cpu(), time.perf_counter()
                subprocess.run(["cp", "-a", str(corpus), str(dest / f"cp-{r}")], check=True)
                cps.append(time.perf_counter() - t0)
                cp_cpu.append(_children_cpu() - c0)
                c0 = process_cpu(d.proc.pid)
                cairns.append(d.timed("restore", s["id"], "--target", str(dest / f"cairn-{r}"))[0])
                cairnd_cpu.append(process_cpu(d.proc.pid) - c0)
                print(f"corpus round {r + 1}: cp -a {cps[-1]:.2f} s (CPU {cp_cpu[-1]:.2f} s), cairn restore "
                      f"{cairns[-1]:.2f} s (cairnd CPU {cairnd_cpu[-1]:.2f} s) (load {os.getloadavg()[0]:.1f})",
                      flush=True)
            problems = compare_trees(corpus, dest / "cairn-0")
            size = sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file() and not f.is_symlink())
            cp_s, cairn_s = statistics.median(cps), statistics.median(cairns)
            fig["corpus"] = {"bytes": size, "cp_a_s": cps, "cairn_restore_s": cairns, "cp_a_median_s": cp_s,
                             "cairn_restore_median_s": cairn_s, "fraction_of_cp": cp_s / cairn_s,
                             "cp_a_cpu_median_s": statistics.median(cp_cpu),
                             "cairnd_cpu_median_s": statistics.median(cairnd_cpu),
                             "tree_equal": not problems, "loadavg": os.getloadavg()}
            print("corpus:", json.dumps(fig["corpus"]), flush=True)
        finally:
            d.stop()
    fig["load"]["loadavg_end"] = os.getloadavg()
    (args.workdir / "restore_tree.json").write_text(json.dumps(fig, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
