"""PostgreSQL benchmark: Cairn next to pg_basebackup and pgBackRest on one pgbench database.

    .venv/bin/python bench/postgres.py [--scale 50] [--load-seconds 30] [--keep]

One PostgreSQL 15 server (tests/pgserver.py, run by the bench) with a pgbench database of the
given scale archives every WAL segment to both Cairn (`cairn wal-push`, through a real cairnd)
and pgBackRest (`archive-push`, a stanza in a temporary directory, local repo1-path). Then:

  (a) full: Cairn full set, pg_basebackup (plain, -X none), pgBackRest full;
  (b) after `pgbench -T load-seconds`: Cairn incremental vs pgBackRest incremental (time and
      bytes stored), and what the changed data directory costs under content-defined chunks
      (the repository's FastCDC parameters) against fixed-size, page-aligned chunks of
      8 KiB, 64 KiB and 1 MiB for the relation files (new bytes before compression);
  (c) restore-db + recovery to the set's consistent point vs pgBackRest restore (type
      immediate), both until the server has promoted; split into writing the data directory
      and recovery, best of --restore-rounds rounds that alternate which tool goes first.

Needs root (the server runs as the postgres OS user). Prints a table with ratios, and writes
the figures as JSON next to this file (out/postgres.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import blake3
import zstandard
from pyfastcdc.cy import FastCDC

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "pg_daemon"))

import common  # noqa: E402, F401 - byte-compiles Cairn's modules, as an installed Cairn has them
from pgserver import PG_USER, chown_postgres  # noqa: E402
from pgstack import ArchivingServer, Stack, make_pg_dir  # noqa: E402

MB = 1_000_000
RELATION_DIRS = ("base", "global", "pg_tblspc")


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def run(argv: list[str], *, as_postgres: bool = False, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if as_postgres:
        argv = ["runuser", "-u", PG_USER, "--", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, cwd="/tmp", **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


# -- chunking measurement ------------------------------------------------------------------------


def chunk_sets(pgdata: Path, fixed_sizes: tuple[int, ...],
               before: dict[str, dict[bytes, int]] | None = None) -> dict[str, dict[bytes, int]]:
    """For each scheme, chunk hash -> length over the relation files of a data directory.

    With `before`, each chunk not in it is also compressed (zstd level 1, as the repository
    stores chunks) and its compressed size is summed under the key b"zstd" of the scheme.
    """
    cdc = FastCDC(avg_size=1 << 20, min_size=256 << 10, max_size=4 << 20, seed=0)
    zc = zstandard.ZstdCompressor(level=1)
    out: dict[str, dict[bytes, int]] = {"cdc-1MiB": {}, **{f"fixed-{n // 1024}KiB": {} for n in fixed_sizes}}

    def add(scheme: str, piece: memoryview) -> None:
        h = blake3.blake3(piece).digest()
        table = out[scheme]
        if before is not None and h not in before[scheme] and h not in table:
            table[b"zstd"] = table.get(b"zstd", 0) + min(len(zc.compress(piece)), len(piece))
        table[h] = len(piece)
    for top in RELATION_DIRS:
        for dirpath, _dirs, files in os.walk(pgdata / top):
            for name in files:
                try:
                    data = (Path(dirpath) / name).read_bytes()
                except OSError:
                    continue
                view = memoryview(data)
                for c in cdc.cut_buf(view):
                    add("cdc-1MiB", view[c.offset:c.offset + c.length])
                for n in fixed_sizes:
                    for off in range(0, len(data), n):
                        add(f"fixed-{n // 1024}KiB", view[off:off + n])
    return out


def new_bytes(before: dict[str, dict[bytes, int]], after: dict[str, dict[bytes, int]]) -> dict[str, dict]:
    res = {}
    for scheme, chunks in after.items():
        old = before[scheme]
        stored = chunks.pop(b"zstd", 0)
        fresh = [n for h, n in chunks.items() if h not in old]
        res[scheme] = {"new_bytes": sum(fresh), "new_chunks": len(fresh), "chunks": len(chunks),
                       "total_bytes": sum(chunks.values()), "new_bytes_zstd": stored}
    return res


# -- pgBackRest ----------------------------------------------------------------------------------


class PgBackRest:
    def __init__(self, root: Path, pg: ArchivingServer) -> None:
        self.root = root
        for d in ("repo", "log", "lock", "spool"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.conf = root / "pgbackrest.conf"
        self.conf.write_text("\n".join([
            "[global]", f"repo1-path={root / 'repo'}", f"log-path={root / 'log'}", f"lock-path={root / 'lock'}",
            f"spool-path={root / 'spool'}", "repo1-retention-full=9", "start-fast=y", "process-max=2",
            "compress-type=zst", "compress-level=1", "log-level-console=warn", "log-level-file=off", "",
            "[bench]", f"pg1-path={pg.pgdata}", f"pg1-port={pg.port}", f"pg1-socket-path={pg.sockdir}",
            f"pg1-user={PG_USER}", ""]))
        chown_postgres(root)

    def cmd(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.conf}", "--stanza=bench", *args]

    def archive_command(self) -> str:
        return " ".join(self.cmd("archive-push", "%p"))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return run(self.cmd(*args), as_postgres=True)

    def last_backup_bytes(self) -> int:
        info = json.loads(self.run("--output=json", "info").stdout)
        backup = info[0]["backup"][-1]
        return int(backup["info"]["repository"]["delta"])


# -- the run -------------------------------------------------------------------------------------


def recover(pgdata: Path) -> tuple[float, str]:
    """Start a server on a restored data directory; seconds until it has promoted, and its
    pgbench_history row count. The server is stopped and removed again."""
    srv = ArchivingServer(pgdata=pgdata)
    try:
        t0 = time.perf_counter()
        srv.start(timeout=300)
        srv.wait_promoted(timeout=300)
        elapsed = time.perf_counter() - t0
        return elapsed, srv.psql("SELECT count(*) FROM pgbench_history")
    finally:
        srv.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--load-seconds", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--restore-rounds", type=int, default=2, help="rounds of (c), alternating the order")
    args = ap.parse_args(argv)
    root = make_pg_dir("cairn-pgbench-")
    (root / "files").mkdir()
    stack = Stack(root, {"db": {"paths": [str(root / "files")], "database": "appdb"}})
    br = PgBackRest(root / "pgbackrest", stack.pg)
    stack.pg.settings.update({
        "archive_command": f"{stack.pg.settings['archive_command']} && {br.archive_command()}",
        "shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
    })
    fig: dict[str, dict] = {}
    try:
        stack.start()
        br.run("stanza-create")
        pgb = [stack.pg.bin("pgbench"), "-h", str(stack.pg.sockdir), "-p", str(stack.pg.port), "-U", PG_USER]
        t, _ = timed(run, [*pgb, "-i", "-s", str(args.scale), "-q", "postgres"])
        stack.psql("CHECKPOINT")
        stack.wait_archived(timeout=600)
        db_bytes = int(stack.psql("SELECT pg_database_size('postgres')"))
        print(f"pgbench -i -s {args.scale}: {t:.1f}s, database {db_bytes / MB:.0f} MB", flush=True)
        fig["setup"] = {"scale": args.scale, "database_bytes": db_bytes, "init_s": t}

        # (a) full
        t_cairn, s_full = timed(stack.backup, "db", "full")
        base = root / "basebackup"
        t_pgbb, _ = timed(run, [stack.pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast",
                                "-h", str(stack.pg.sockdir), "-p", str(stack.pg.port), "-U", PG_USER])
        pgbb_bytes = dir_size(base)
        shutil.rmtree(base)
        t_br, _ = timed(br.run, "--type=full", "backup")
        fig["full"] = {"cairn_s": t_cairn, "cairn_bytes": s_full["stats"]["bytes_added"],
                       "pg_basebackup_s": t_pgbb, "pg_basebackup_bytes": pgbb_bytes,
                       "pgbackrest_s": t_br, "pgbackrest_bytes": br.last_backup_bytes()}
        print("full:", json.dumps(fig["full"]), flush=True)

        # (b) incremental after load, and the chunking figures on the same before/after pair
        before = chunk_sets(stack.pg.pgdata, (8192, 65536, 1 << 20))
        run([*pgb, "-T", str(args.load_seconds), "-c", "2", "-j", "2", "postgres"])
        stack.psql("CHECKPOINT")
        stack.wait_archived(timeout=600)
        after = chunk_sets(stack.pg.pgdata, (8192, 65536, 1 << 20), before)
        fig["chunking"] = new_bytes(before, after)
        del before, after
        t_cairn_i, s_inc = timed(stack.backup, "db", "incremental")
        t_br_i, _ = timed(br.run, "--type=incr", "backup")
        fig["incremental"] = {"cairn_s": t_cairn_i, "cairn_bytes": s_inc["stats"]["bytes_added"],
                              "pgbackrest_s": t_br_i, "pgbackrest_bytes": br.last_backup_bytes()}
        print("incremental:", json.dumps(fig["incremental"]), flush=True)
        print("chunking:", json.dumps(fig["chunking"]), flush=True)

        # (c) restores to the consistent point, until the server has promoted; each tool's time
        # is split into writing the data directory and the server's start, recovery and promotion.
        # Rounds alternate the order (Cairn first, then pgBackRest first); the best round counts.
        def cairn_restore(target: Path) -> tuple[float, float, str]:
            t_write, _ = timed(stack.ok, "restore-db", s_inc["id"], "--database", "appdb", "--target", str(target),
                               timeout=600)
            return (t_write, *recover(target))

        def pgbr_restore(target: Path) -> tuple[float, float, str]:
            target.mkdir(mode=0o700)
            chown_postgres(target)
            restore_cmd = " ".join(br.cmd(f"--pg1-path={target}", "archive-get", "%f", '"%p"'))
            t_write, _ = timed(br.run, f"--pg1-path={target}", "--type=immediate", "--target-action=promote",
                               f"--recovery-option=restore_command={restore_cmd}", "restore")
            return (t_write, *recover(target))

        best: dict[str, tuple[float, float, str]] = {}
        for rnd in range(args.restore_rounds):
            order = (("cairn", cairn_restore), ("pgbackrest", pgbr_restore))
            for tool, fn in order if rnd % 2 == 0 else order[::-1]:
                run(["sync"])
                holder = make_pg_dir(f"cairn-{tool}-restore-")
                try:
                    result = fn(holder / "data")
                finally:
                    shutil.rmtree(holder, ignore_errors=True)
                print(f"restore round {rnd} {tool}: write {result[0]:.2f}s, recovery {result[1]:.2f}s", flush=True)
                if tool not in best or sum(result[:2]) < sum(best[tool][:2]):
                    best[tool] = result
        (cw, cr, rows_cairn), (bw, brc, rows_br) = best["cairn"], best["pgbackrest"]
        fig["restore"] = {"cairn_s": cw + cr, "cairn_write_s": cw, "cairn_recovery_s": cr,
                          "pgbackrest_s": bw + brc, "pgbackrest_write_s": bw, "pgbackrest_recovery_s": brc,
                          "rounds": args.restore_rounds, "rows_cairn": rows_cairn, "rows_pgbackrest": rows_br}
        print("restore:", json.dumps(fig["restore"]), flush=True)
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    (BENCH / "out").mkdir(exist_ok=True)
    (BENCH / "out" / "postgres.json").write_text(json.dumps(fig, indent=1))
    print_table(fig)
    return 0


def print_table(fig: dict[str, dict]) -> None:
    f, i, r, c = fig["full"], fig["incremental"], fig["restore"], fig["chunking"]
    rows = [
        ("full set", "Cairn", f["cairn_s"], f["cairn_bytes"], 1.0),
        ("", "pg_basebackup", f["pg_basebackup_s"], f["pg_basebackup_bytes"], f["pg_basebackup_s"] / f["cairn_s"]),
        ("", "pgBackRest", f["pgbackrest_s"], f["pgbackrest_bytes"], f["pgbackrest_s"] / f["cairn_s"]),
        ("incremental", "Cairn", i["cairn_s"], i["cairn_bytes"], 1.0),
        ("", "pgBackRest", i["pgbackrest_s"], i["pgbackrest_bytes"], i["pgbackrest_s"] / i["cairn_s"]),
        ("restore+recovery", "Cairn", r["cairn_s"], 0, 1.0),
        ("", "pgBackRest", r["pgbackrest_s"], 0, r["pgbackrest_s"] / r["cairn_s"]),
    ]
    print(f"\n{'step':<18}{'tool':<15}{'seconds':>9}{'MB stored':>11}{'time / Cairn':>14}")
    for step, tool, s, b, ratio in rows:
        print(f"{step:<18}{tool:<15}{s:>9.1f}{(b / MB if b else 0):>11.1f}{ratio:>14.2f}")
    print(f"incremental bytes: Cairn / pgBackRest = {i['cairn_bytes'] / max(1, i['pgbackrest_bytes']):.2f}")
    print(f"restore split (write data directory + recovery until promoted): "
          f"Cairn {r['cairn_write_s']:.2f} + {r['cairn_recovery_s']:.2f} s, "
          f"pgBackRest {r['pgbackrest_write_s']:.2f} + {r['pgbackrest_recovery_s']:.2f} s")
    print(f"\n{'chunking (relation files)':<26}{'new MB':>9}{'new MB zstd':>13}{'new chunks':>12}{'chunks':>10}")
    for scheme, v in c.items():
        print(f"{scheme:<26}{v['new_bytes'] / MB:>9.1f}{v['new_bytes_zstd'] / MB:>13.1f}{v['new_chunks']:>12}"
              f"{v['chunks']:>10}")


if __name__ == "__main__":
    sys.exit(main())
