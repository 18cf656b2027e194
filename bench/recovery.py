"""Recovery benchmark: Cairn's restore-db + recovery against pgBackRest's restore + recovery, side
by side in one run, to the set's own point and to a point in time >= --wal-gb of WAL later.

    .venv/bin/python bench/recovery.py [--scale 50] [--wal-gb 1.0] [--load-seconds 30] [--rounds 3] [--keep]

One PostgreSQL 15 server (tests/pgserver.py) with a pgbench database archives every WAL segment
to both Cairn (`cairn wal-push` into a real cairnd) and pgBackRest (`archive-push`). A Cairn
full set and a pgBackRest full backup are taken one after the other; then, after
--load-seconds of pgbench, an incremental of each (the restores use these: Cairn's relation
chunks are then mostly deltas against the full set). Then:

  (a) restore to the backup's consistent point: `cairn restore-db` vs `pgbackrest restore
      --type=immediate`, then a server started on each result until it has promoted;
  (b) bulk inserts write >= --wal-gb of WAL, archived by both; the LSN at the end is the target.
      `cairn restore-db --target-lsn` (wal-fetch with its prefetch spool) vs `pgbackrest restore
      --type=lsn` with archive-get in asynchronous mode (archive-async, its spool), each until
      the server has replayed to the target and promoted; the rows are compared;
  (c) delta restores of a damaged copy: each tool first restores its backup into a directory,
      then --damage of the relation bytes is overwritten with random bytes (the same files and
      ranges for both), then `cairn restore-db --delta` vs `pgbackrest restore --delta` (which
      reads every file, as Cairn's does) is timed, and a server started on the result must give
      the same rows as after (a). --skip-pitr leaves (b) out.

Each tool's time is split into writing the data directory and recovery (server start until
promotion). The CPU seconds of the write phase are given too (the client or pgbackrest and the
processes it starts, plus cairnd): on a shared machine they vary less than wall time. `sync`
runs before each restore; (a) and (b) run --rounds times each, the first tool alternating, and
give medians (the machine may be shared: the load average is printed). Needs root.
Figures go to out/recovery.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for where in (BENCH, BENCH.parent / "tests", BENCH.parent / "tests" / "integration" / "pg_daemon"):
    sys.path.insert(0, str(where))
from pgstack import ArchivingServer, Stack, make_pg_dir  # noqa: E402
from postgres import PgBackRest, run, timed  # noqa: E402

MB = 1_000_000


def recover(pgdata: Path, count_sql: str) -> tuple[float, str, float]:
    """Start a server on a restored data directory; seconds until promoted, count_sql's answer,
    and the machine's busy CPU seconds meanwhile (the server, the restore_command and whatever
    fetches WAL for it: wal-fetch's prefetcher and cairnd, or pgbackrest's async archive-get)."""
    srv = ArchivingServer(pgdata=pgdata)
    try:
        cpu0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        srv.start(timeout=900)
        srv.wait_promoted(timeout=900)
        elapsed = time.perf_counter() - t0
        return elapsed, srv.psql(count_sql), busy_cpu_seconds() - cpu0
    finally:
        srv.cleanup()


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(daemon_pid: int) -> float:
    """User + system CPU seconds of the finished child processes of this script (the cairn
    client, pgbackrest and the processes it starts) plus, when given, the running cairnd."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    if daemon_pid:
        try:
            fields = Path(f"/proc/{daemon_pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--wal-gb", type=float, default=1.0)
    ap.add_argument("--load-seconds", type=int, default=30,
                    help="pgbench load before an incremental backup that the restores use (0: restore the full)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (a), (b) and (c), the first tool alternating")
    ap.add_argument("--damage", type=float, default=0.01, help="(c): fraction of the relation bytes damaged")
    ap.add_argument("--skip-pitr", action="store_true", help="leave (b) out")
    args = ap.parse_args(argv)
    root = make_pg_dir("cairn-recovery-")
    (root / "files").mkdir()
    stack = Stack(root, {"db": {"paths": [str(root / "files")], "database": "appdb"}})
    br = PgBackRest(root / "pgbackrest", stack.pg)
    stack.pg.settings.update({
        "archive_command": f"{stack.pg.settings['archive_command']} && {br.archive_command()}",
        "shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
    })
    fig: dict[str, dict] = {"load": {"loadavg_start": os.getloadavg()}}
    try:
        stack.start()
        br.run("stanza-create")
        pgb = [stack.pg.bin("pgbench"), "-h", str(stack.pg.sockdir), "-p", str(stack.pg.port), "-U", "postgres"]
        t, _ = timed(run, [*pgb, "-i", "-s", str(args.scale), "-q", "postgres"])
        stack.psql("CHECKPOINT")
        stack.wait_archived(timeout=900)
        db_bytes = int(stack.psql("SELECT pg_database_size('postgres')"))
        print(f"pgbench -i -s {args.scale}: {t:.1f}s, database {db_bytes / MB:.0f} MB", flush=True)
        t_c, s_full = timed(stack.backup, "db", "full")
        t_b, _ = timed(br.run, "--type=full", "backup")
        fig["setup"] = {"scale": args.scale, "database_bytes": db_bytes, "cairn_full_s": t_c, "pgbackrest_full_s": t_b}
        if args.load_seconds:  # restore an incremental: most of Cairn's relation chunks are then deltas
            run([*pgb, "-T", str(args.load_seconds), "-c", "2", "-j", "2", "postgres"])
            stack.psql("CHECKPOINT")
            stack.wait_archived(timeout=900)
            t_c, s_full = timed(stack.backup, "db", "incremental")
            t_b, _ = timed(br.run, "--type=incr", "backup")
            fig["setup"].update(load_seconds=args.load_seconds, cairn_incremental_s=t_c, pgbackrest_incr_s=t_b)
        print("setup:", json.dumps(fig["setup"]), flush=True)

        def cairn(target: Path, *extra: str) -> float:
            return timed(stack.ok, "restore-db", s_full["id"], "--database", "appdb", "--target", str(target),
                         *extra, timeout=900)[0]

        def pgbr(target: Path, *extra: str) -> float:
            target.mkdir(mode=0o700)
            run(["chown", "postgres:postgres", str(target)])
            get = " ".join(br.cmd(f"--pg1-path={target}", "--archive-async", "archive-get", "%f", '"%p"'))
            return timed(br.run, f"--pg1-path={target}", "--target-action=promote",
                         f"--recovery-option=restore_command={get}", *extra, "restore")[0]

        def side_by_side(name: str, count_sql: str, cairn_args: tuple[str, ...], br_args: tuple[str, ...],
                         rounds: int = 1) -> None:
            """Each tool restores and recovers `rounds` times, the first tool alternating; the
            figures are medians. Data directories are removed only after the last round (ext4
            makes the next file creations slower right after many deletions)."""
            out: dict[str, float | str] = {}
            runs: dict[str, list[dict]] = {"cairn": [], "pgbackrest": []}
            holders: list[Path] = []
            tools = [("cairn", cairn, cairn_args), ("pgbackrest", pgbr, br_args)]
            try:
                for r in range(rounds):
                    for tool, fn, extra in (tools if r % 2 == 0 else tools[::-1]):
                        run(["sync"])
                        holder = make_pg_dir(f"cairn-{tool}-{name}-")
                        holders.append(holder)
                        cpu0 = cpu_seconds(stack.daemon.proc.pid if stack.daemon else 0)
                        write = fn(holder / "data", *extra)
                        write_cpu = cpu_seconds(stack.daemon.proc.pid if stack.daemon else 0) - cpu0
                        recovery, rows, recovery_cpu = recover(holder / "data", count_sql)
                        runs[tool].append({"write_s": write, "recovery_s": recovery, "rows": rows,
                                           "write_cpu_s": write_cpu, "recovery_busy_cpu_s": recovery_cpu})
                        print(f"{name} {tool}: write {write:.2f}s ({write_cpu:.2f} CPU s), recovery {recovery:.2f}s "
                              f"({recovery_cpu:.2f} busy CPU s on the machine), "
                              f"rows {rows}, load {os.getloadavg()[0]:.1f}", flush=True)
            finally:
                for holder in holders:
                    shutil.rmtree(holder, ignore_errors=True)
            for tool, rs in runs.items():
                med = lambda k, rs=rs: statistics.median(x[k] for x in rs)  # noqa: E731
                out.update({f"{tool}_write_s": med("write_s"), f"{tool}_recovery_s": med("recovery_s"),
                            f"{tool}_s": statistics.median(x["write_s"] + x["recovery_s"] for x in rs),
                            f"{tool}_rows": rs[-1]["rows"], f"{tool}_write_cpu_s": med("write_cpu_s"),
                            f"{tool}_recovery_busy_cpu_s": med("recovery_busy_cpu_s"),
                            f"{tool}_runs": rs})
            out["ratio_cairn_over_pgbackrest"] = out["cairn_s"] / out["pgbackrest_s"]
            out["write_cpu_ratio"] = out["cairn_write_cpu_s"] / max(out["pgbackrest_write_cpu_s"], 1e-9)
            out["loadavg"] = os.getloadavg()
            fig[name] = out

        # (a) the backup's own point
        side_by_side("own_point", "SELECT count(*) FROM pgbench_history", (), ("--type=immediate",),
                     rounds=args.rounds)

        # (c) delta restores of a damaged copy, against a full restore's write
        delta_rounds(stack, fig, cairn, pgbr, s_full["id"], br, "SELECT count(*) FROM pgbench_history",
                     args.rounds, args.damage)
        if args.skip_pitr:
            return 0

        # (b) >= wal-gb of WAL, then a point-in-time recovery to its end
        stack.psql("CREATE TABLE wal_fill (id bigint, pad text)")
        start = stack.psql("SELECT pg_current_wal_lsn()")
        goal = int(args.wal_gb * 1e9)
        n = 0
        t0 = time.perf_counter()
        while int(stack.psql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}')")) < goal:
            stack.psql("INSERT INTO wal_fill SELECT g, repeat(md5(g::text), 8) "
                       f"FROM generate_series({n}, {n + 199999}) g")
            n += 200000
        target = stack.psql("SELECT pg_current_wal_lsn()")
        wal_bytes = int(stack.psql(f"SELECT pg_wal_lsn_diff('{target}', '{start}')"))
        stack.psql("SELECT pg_switch_wal()")
        stack.wait_archived(timeout=1800)
        print(f"wrote {wal_bytes / MB:.0f} MB of WAL ({n} rows) in {time.perf_counter() - t0:.0f}s, "
              f"archived by both; target LSN {target}", flush=True)
        fig["wal"] = {"bytes": wal_bytes, "rows": n, "target_lsn": target}
        side_by_side("pitr", "SELECT count(*) FROM wal_fill", ("--target-lsn", target),
                     ("--type=lsn", f"--target={target}"), rounds=args.rounds)
    finally:
        stack.close()
        fig["load"]["loadavg_end"] = os.getloadavg()
        (BENCH / "out").mkdir(exist_ok=True)
        (BENCH / "out" / "recovery.json").write_text(json.dumps(fig, indent=2))
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    print(json.dumps(fig, indent=2))
    return 0


def damage_plan(pgdata: Path, fraction: float, seed: int) -> list[tuple[str, int, int]]:
    """(relative path, offset, length) ranges of relation files under base/ totalling `fraction`
    of their bytes, in 64 KiB pieces, chosen at random but the same for the same files and seed."""
    rng = random.Random(seed)
    files = sorted((str(p.relative_to(pgdata)), p.stat().st_size) for p in (pgdata / "base").rglob("*")
                   if p.is_file() and p.name.split(".")[0].isdigit() and p.stat().st_size >= 1 << 20)
    total = sum(size for _, size in files)
    out, left = [], int(total * fraction)
    while left > 0 and files:
        rel, size = rng.choice(files)
        length = min(64 << 10, left)
        out.append((rel, rng.randrange(0, size - length), length))
        left -= length
    return out


def apply_damage(pgdata: Path, plan: list[tuple[str, int, int]], seed: int) -> int:
    rng = random.Random(seed)
    for rel, offset, length in plan:
        with open(pgdata / rel, "r+b") as f:
            f.seek(offset)
            f.write(rng.randbytes(length))
    return sum(length for _, _, length in plan)


def delta_rounds(stack: Stack, fig: dict, cairn: Any, pgbr: Any, set_id: str, br: Any, count_sql: str,
                 rounds: int, fraction: float) -> None:
    """(c): see the module docstring. Each round: both tools restore fresh copies (not timed; the
    full write is (a)'s), the copies get the same damage, the deltas are timed (first tool
    alternating), a server recovers each."""
    runs: dict[str, list[dict]] = {"cairn": [], "pgbackrest": []}
    holders: list[Path] = []
    try:
        for r in range(rounds):
            copies = {}
            for tool, fn, extra in (("cairn", cairn, ()), ("pgbackrest", pgbr, ("--type=immediate",))):
                holder = make_pg_dir(f"cairn-delta-{tool}-")
                holders.append(holder)
                fn(holder / "data", *extra)
                copies[tool] = holder / "data"
            plan = damage_plan(copies["cairn"], fraction, seed=r)
            damaged = {tool: apply_damage(d, plan, seed=r) for tool, d in copies.items()}
            order = ["cairn", "pgbackrest"] if r % 2 == 0 else ["pgbackrest", "cairn"]
            for tool in order:
                run(["sync"])
                if tool == "cairn":
                    t, out = timed(stack.ok, "--json", "restore-db", set_id, "--database", "appdb", "--target",
                                   str(copies[tool]), "--delta", timeout=900)
                    written = json.loads(out)["bytes_written"]
                else:
                    get = " ".join(br.cmd(f"--pg1-path={copies[tool]}", "--archive-async", "archive-get", "%f",
                                          '"%p"'))
                    t, _ = timed(br.run, f"--pg1-path={copies[tool]}", "--target-action=promote",
                                 f"--recovery-option=restore_command={get}", "--type=immediate", "--delta", "restore")
                    written = None
                recovery, rows, _ = recover(copies[tool], count_sql)
                runs[tool].append({"delta_s": t, "damaged_bytes": damaged[tool], "bytes_written": written,
                                   "recovery_s": recovery, "rows": rows})
                print(f"delta {tool}: {t:.2f}s for {damaged[tool] / MB:.1f} MB damaged"
                      + (f" ({written / MB:.1f} MB written)" if written is not None else "")
                      + f", recovery {recovery:.2f}s, rows {rows}, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for holder in holders:
            shutil.rmtree(holder, ignore_errors=True)
    out: dict[str, Any] = {"damage_fraction": fraction}
    for tool, rs in runs.items():
        out[f"{tool}_delta_s"] = statistics.median(x["delta_s"] for x in rs)
        out[f"{tool}_rows"] = [x["rows"] for x in rs]
        out[f"{tool}_runs"] = rs
    own = fig.get("own_point") or {}
    if own.get("cairn_write_s"):
        out["cairn_full_write_s"] = own["cairn_write_s"]
        out["cairn_speedup_over_full"] = own["cairn_write_s"] / out["cairn_delta_s"]
    out["ratio_cairn_over_pgbackrest"] = out["cairn_delta_s"] / out["pgbackrest_delta_s"]
    fig["delta"] = out
    print("delta:", json.dumps({k: v for k, v in out.items() if not k.endswith("_runs")}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
