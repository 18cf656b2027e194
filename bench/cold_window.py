"""Cold window benchmark: how long the application stays stopped for a full and an incremental set.

    .venv/bin/python bench/cold_window.py [--sizes 20000,200000] [--edits 20] [--runs 3] [--workdir DIR]

For each size, a tree of that many small files (100 per directory) is made once and kept. One
PostgreSQL 15 server (tests/pgserver.py, run by the bench; pgbench scale 1) archives through
`cairn wal-push` into a real cairnd, whose source is the tree with `database = "appdb"`, the
change journal on, and a cold quiesce window whose freeze and thaw hooks are `true` (an
application that stops at once). Per size: `cairn backup --level full`, then per run `--edits`
files changed and `cairn backup --level incremental`; the window's duration is read from what
each set records (`extra.window.window_s`: window opened -> thaw finished; `held_s`: frozen ->
thaw began). Next to it, the peer: the time `restic backup` of the same tree takes after the
same edits (what an application stopped around a restic run would be down for; skipped when
restic is not installed).

Targets (issue 8): the incremental's window at most a quarter of the full's at 20,000 files,
and growing less than 1.5x from 20,000 to 200,000 files. Needs root (the server runs as the
postgres OS user). Figures go to <workdir>/cold_window.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "pg_daemon"))

from pgstack import Stack, make_pg_dir  # noqa: E402

from bench.common import DEFAULT_WORKDIR, run_measured  # noqa: E402
from bench.journal_incremental import FILES_PER_DIR, edit, make_tree  # noqa: E402

INC_TO_FULL_TARGET = 0.25
GROWTH_TARGET = 1.5


def restic_time(work: Path, tree: Path, name: str) -> float | None:
    """Seconds of one `restic backup` of `tree` into a repository kept per tree (None: no restic)."""
    if shutil.which("restic") is None:
        return None
    repo = work / f"restic-{name}"
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    if not repo.exists():
        run_measured(["restic", "-r", str(repo), "init"], env=env, logdir=work / "logs", name=f"{name}-init").check()
    m = run_measured(["restic", "-r", str(repo), "backup", "--quiet", str(tree)], env=env, logdir=work / "logs",
                     name=f"{name}-restic").check()
    return m.seconds


def bench_size(work: Path, files: int, edits: int, runs: int) -> dict:
    tree = work / f"tree-{files}"
    t0 = time.perf_counter()
    make_tree(tree, files)
    print(f"[{files}] tree ready ({time.perf_counter() - t0:.0f}s)", flush=True)
    root = make_pg_dir("cairn-bench-window-")
    stack = Stack(root, {"app": {"paths": [str(tree)], "database": "appdb", "watch": True,
                                 "quiesce": {"mode": "cold", "freeze": ["true"], "thaw": ["true"],
                                             "max_window": "1h"}}})
    rng = random.Random(files)
    result: dict = {"files": files, "dirs": -(-files // FILES_PER_DIR), "runs": []}
    try:
        stack.start()
        bench = ["-h", str(stack.pg.sockdir), "-p", str(stack.pg.port), "-U", "postgres", "postgres"]
        subprocess.run([stack.pg.bin("pgbench"), "-i", "-s", "1", "-q", *bench], check=True, capture_output=True)
        restic_time(work, tree, f"n{files}")  # the peer's full, so its runs below are incremental
        full = stack.backup("app", "full")
        w = full["extra"]["window"]
        result["full"] = {"window_s": w["window_s"], "held_s": w["held_s"],
                          "wal_wait_s": full["extra"]["capture"].get("wal_wait_s"),
                          "files": full["stats"]["files"], "capture": full["extra"]["capture"]}
        print(f"[{files}] full: window {w['window_s']:.3f}s (held {w['held_s']:.3f}s)", flush=True)
        for i in range(runs):
            edit(tree, files, edits, rng)
            s = stack.backup("app", "incremental")
            w = s["extra"]["window"]
            peer = restic_time(work, tree, f"n{files}")
            run = {"window_s": w["window_s"], "held_s": w["held_s"], "changes": s["extra"].get("changes"),
                   "modified": s["stats"]["modified"], "wal_wait_s": s["extra"]["capture"].get("wal_wait_s"),
                   "restic_s": peer, "capture": s["extra"]["capture"]}
            result["runs"].append(run)
            print(f"[{files}] incremental {i}: window {w['window_s']:.3f}s ({run['changes']}, "
                  f"{run['modified']} modified; WAL wait after the thaw {run['wal_wait_s']:.3f}s)"
                  + (f"; restic {peer:.3f}s" if peer is not None else ""), flush=True)
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)
    result["inc_window_s"] = statistics.median(r["window_s"] for r in result["runs"])
    peers = [r["restic_s"] for r in result["runs"] if r["restic_s"] is not None]
    result["restic_s"] = statistics.median(peers) if peers else None
    return result


def report(results: list[dict], edits: int) -> None:
    print()
    print(f"cold window (open -> thawed), full and incremental after {edits} edits (median of runs)")
    header = ("files", "full window", "inc window", "inc/full", "journal", "restic inc", "restic/inc")
    rows = []
    for r in results:
        ratio = r["inc_window_s"] / r["full"]["window_s"]
        rows.append((f"{r['files']:,}", f"{r['full']['window_s']:.3f}s", f"{r['inc_window_s']:.3f}s",
                     f"{ratio:.3f}", "yes" if all(x["changes"] == "journal" for x in r["runs"]) else "no",
                     f"{r['restic_s']:.3f}s" if r["restic_s"] is not None else "-",
                     f"{r['restic_s'] / r['inc_window_s']:.1f}x" if r["restic_s"] is not None else "-"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(c.rjust(widths[i]) for i, c in enumerate(row)))
    small = min(results, key=lambda r: r["files"])
    ratio = small["inc_window_s"] / small["full"]["window_s"]
    print(f"target: incremental window <= {INC_TO_FULL_TARGET} of the full's at {small['files']:,} files: "
          f"{'met' if ratio <= INC_TO_FULL_TARGET else 'NOT met'} ({ratio:.3f})")
    if len(results) > 1:
        big = max(results, key=lambda r: r["files"])
        growth = big["inc_window_s"] / small["inc_window_s"]
        print(f"target: incremental window grows < {GROWTH_TARGET}x from {small['files']:,} to {big['files']:,} "
              f"files: {'met' if growth < GROWTH_TARGET else 'NOT met'} ({growth:.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "cold_window")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = [bench_size(work, int(n), args.edits, args.runs) for n in args.sizes.split(",")]
    report(results, args.edits)
    (work / "cold_window.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
