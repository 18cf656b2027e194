"""Issue 3 benchmark: a backup with nothing changed, and listing sets, warm cairnd vs restic.

  python bench/nochange.py [--corpus DIR] [--runs 5] [--workdir DIR]

On the standard corpus (bench/out/corpus, built by the shared build_corpus.py; see
bench/backup_restore.py), a real cairnd takes a full set, then one no-change set to warm up.
Then, per run, the end-to-end time of `cairn backup` (the client process; default level
incremental) and `cairn sets`, next to restic's no-change `restic backup` (with its parent
snapshot) and `restic snapshots` on the same corpus, in the same run. Medians are reported,
plus the daemon's answer alone (the same calls over an open gRPC channel, without the start-up
of the client process).

Target (issue 3): the warm daemon answers both at least 5x faster than restic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_WORKDIR, tree_bytes  # noqa: E402
from bench.journal_incremental import CairnDaemon, Restic  # noqa: E402

TARGET_SPEEDUP = 5.0


def rpc_times(socket: str, runs: int) -> dict[str, float]:
    """Median seconds of the daemon's answer alone (Backup to its set, ListSets) on a warm channel,
    i.e. the end-to-end time without the client process start-up."""
    import grpc
    from cairn.proto.cairn.v1 import cairn_pb2 as pb
    from cairn.proto.cairn.v1 import cairn_pb2_grpc as pbg

    times: dict[str, list[float]] = {"backup": [], "sets": []}
    with grpc.insecure_channel("unix:" + socket) as channel:
        stub = pbg.CairnStub(channel)
        stub.Status(pb.StatusRequest())
        for _ in range(runs):
            t0 = time.perf_counter()
            for _event in stub.Backup(pb.BackupRequest(level="incremental")):
                pass
            times["backup"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            stub.ListSets(pb.ListSetsRequest())
            times["sets"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_WORKDIR / "corpus")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "nochange")
    args = ap.parse_args()
    corpus = args.corpus.resolve()
    if not corpus.is_dir():
        raise SystemExit(f"no corpus at {corpus}: run bench/backup_restore.py first (it builds it)")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    files, size = tree_bytes(corpus)
    print(f"corpus {corpus}: {files} files, {size / 1e6:.0f} MB", flush=True)
    daemon = CairnDaemon(work, "corpus", corpus)
    restic = Restic(work, "corpus")
    times: dict[str, list[float]] = {k: [] for k in ("cairn backup", "restic backup", "cairn sets", "restic snapshots")}
    try:
        daemon.start()
        m, _ = daemon.backup("full", "cairn-full")
        print(f"cairn full {m.seconds:.1f}s", flush=True)
        m = restic.run("backup", "--quiet", str(corpus), name="restic-full")
        print(f"restic full {m.seconds:.1f}s", flush=True)
        daemon.backup("incremental", "cairn-warm")  # the first set after a start walks (gap unknown)
        for i in range(args.runs):
            m, s = daemon.backup("incremental", f"cairn-nochange{i}")
            assert s["stats"]["added"] + s["stats"]["modified"] + s["stats"]["deleted"] == 0, s["stats"]
            times["cairn backup"].append(m.seconds)
            m = restic.run("backup", "--quiet", str(corpus), name=f"restic-nochange{i}")
            times["restic backup"].append(m.seconds)
            times["cairn sets"].append(daemon.cli("sets", name=f"cairn-sets{i}").seconds)
            times["restic snapshots"].append(restic.run("snapshots", name=f"restic-snapshots{i}").seconds)
            print(f"run {i}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
        rpc = rpc_times(daemon.socket, args.runs)
    finally:
        daemon.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(f"nothing changed, {files} files / {size / 1e6:.0f} MB, median of {args.runs} runs")
    rows = [("backup (no change)", med["cairn backup"], med["restic backup"], rpc["backup"]),
            ("list sets / snapshots", med["cairn sets"], med["restic snapshots"], rpc["sets"])]
    print(f"{'operation':<22} {'cairn':>8} {'restic':>8} {'ratio':>7}   {'daemon answer only':>18} {'ratio':>7}")
    for name, c, r, d in rows:
        print(f"{name:<22} {c:>7.3f}s {r:>7.3f}s {r / c:>6.1f}x   {d:>17.3f}s {r / d:>6.1f}x")
    met = all(r / c >= TARGET_SPEEDUP for _, c, r, _ in rows)
    print(f"target: >= {TARGET_SPEEDUP:.0f}x restic on both: {'met' if met else 'NOT met'}")
    (work / "results.json").write_text(json.dumps({"files": files, "bytes": size, "runs": times, "median": med,
                                                  "daemon_answer": rpc}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
