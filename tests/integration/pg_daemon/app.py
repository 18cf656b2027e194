"""An eXo-like application for the consistent-set tests: a data folder plus SQL databases, and a
shutdown that flushes index commits and values while it is being stopped.

    app.py run ROOT PIDFILE DSN...    loop: write ROOT/data/<bucket>/dNNNNNN.bin, then INSERT a
                                      row (path, sha256) naming it into `files` of one database
                                      (round robin over the DSNs). On SIGTERM (the freeze hook
                                      stops it) it flushes: segment files into the next of
                                      the shard directories ROOT/index/shard-<g % 3>/, a rewritten
                                      ROOT/index/segments.gen, new files under ROOT/values/<k>/
                                      — every one with its row in every database — deletes the
                                      oldest data file and its row, and only then exits.
    app.py start ROOT PIDFILE DSN...  start `run` in the background (a thaw hook)
    app.py stop PIDFILE               SIGTERM the application and wait until it is gone (a freeze hook)
    app.py snapshot ROOT OUTDIR DSN...  write OUTDIR/snap-<n>.json: every file under ROOT
                                      (path -> sha256) and every row of each database, n counting
                                      up from 1 (a freeze hook that runs after `stop`)

While it runs, every committed row names a file completely written before the row was
inserted; once stopped, rows and files match one to one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

import psycopg2
from detached import launch
from detached import stop as stop_detached

SHARDS = 3
SCHEMA = "CREATE TABLE IF NOT EXISTS files (path text PRIMARY KEY, sha256 text NOT NULL, n bigint NOT NULL)"


def _write(root: str, rel: str, data: bytes) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.replace(path + ".part", path)
    return hashlib.sha256(data).hexdigest()


def run(root: str, pidfile: str, *dsns: str) -> int:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conns = []
    for dsn in dsns:
        c = psycopg2.connect(dsn)
        c.autocommit = True
        c.cursor().execute(SCHEMA)
        conns.append(c)
    for i in range(SHARDS):  # the index shards exist from the start
        os.makedirs(os.path.join(root, "index", f"shard-{i}"), exist_ok=True)
    cur0 = conns[0].cursor()
    cur0.execute("SELECT coalesce(max(n), 0) FROM files")
    n = max([cur0.fetchone()[0]] + [_max_n(c) for c in conns[1:]])
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    while not stop:
        n += 1
        rel = f"data/b{n % 7}/d{n:06d}.bin"
        digest = _write(root, rel, os.urandom(2048 + (n * 7919) % 20000))
        conns[n % len(conns)].cursor().execute("INSERT INTO files (path, sha256, n) VALUES (%s, %s, %s)",
                                               (rel, digest, n))
        time.sleep(0.005)
    _flush(root, conns, n)
    for c in conns:
        c.close()
    os.unlink(pidfile)
    return 0


def _max_n(conn) -> int:
    cur = conn.cursor()
    cur.execute("SELECT coalesce(max(n), 0) FROM files")
    return int(cur.fetchone()[0])


def _flush(root: str, conns: list, n: int) -> None:
    """What the application does while it is being stopped (see the module docstring)."""
    k = n  # unique per flush: n only grows
    gen_path = os.path.join(root, "index", "segments.gen")
    try:
        with open(gen_path) as f:
            generation = int(f.read().split()[1]) + 1
    except (FileNotFoundError, IndexError, ValueError):
        generation = 1
    # Each flush commits into the next shard: a directory that existed, untouched, since the
    # flush three generations ago (so only a walk after the freeze finds what changed in it).
    shard = f"index/shard-{generation % SHARDS}"
    for i, c in enumerate(conns):
        cur = c.cursor()
        rows = []
        for j in range(3):
            rel = f"{shard}/g{generation:04d}-db{i}-seg{j}.idx"
            rows.append((rel, _write(root, rel, os.urandom(1500 + j * 100)), k))
        rel = f"values/{k:06d}/db{i}.val"
        rows.append((rel, _write(root, rel, f"value of {k} in db{i}\n".encode()), k))
        cur.executemany("INSERT INTO files (path, sha256, n) VALUES (%s, %s, %s)", rows)
    gen = "index/segments.gen"
    digest = _write(root, gen, f"generation {generation}\n".encode())
    cur = conns[0].cursor()
    cur.execute("INSERT INTO files (path, sha256, n) VALUES (%s, %s, %s) "
                "ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, n = excluded.n", (gen, digest, k))
    # the oldest data file goes, with its row
    for c in conns:
        cur = c.cursor()
        cur.execute("SELECT path FROM files WHERE path LIKE 'data/%%' ORDER BY n LIMIT 1")
        row = cur.fetchone()
        if row is not None:
            os.unlink(os.path.join(root, row[0]))
            cur.execute("DELETE FROM files WHERE path = %s", (row[0],))


def start(root: str, pidfile: str, *dsns: str) -> int:
    return launch([sys.executable, os.path.abspath(__file__), "run", root, pidfile, *dsns], pidfile, "application")


def stop(pidfile: str) -> int:
    return stop_detached(pidfile, "application")  # (removed by the application after its flush)


def tree(root: str) -> dict[str, str]:
    """Every regular file under root: relative path -> sha256."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def rows_of(dsn: str) -> dict[str, str]:
    c = psycopg2.connect(dsn)
    try:
        cur = c.cursor()
        cur.execute("SELECT path, sha256 FROM files ORDER BY path")
        return dict(cur.fetchall())
    finally:
        c.close()


def snapshot(root: str, outdir: str, *dsns: str) -> int:
    os.makedirs(outdir, exist_ok=True)
    n = 1 + sum(1 for f in os.listdir(outdir) if f.startswith("snap-"))
    data = {"files": tree(root), "rows": [rows_of(d) for d in dsns]}
    with open(os.path.join(outdir, f".snap-{n}.tmp"), "w") as f:
        json.dump(data, f)
    os.replace(os.path.join(outdir, f".snap-{n}.tmp"), os.path.join(outdir, f"snap-{n}.json"))
    return 0


def indexer(directory: str, dsn: str, pidfile: str) -> int:
    """Keep DIRECTORY/snapshot.txt at the newest row number of `files` (an index backup that
    must never be newer than the database it indexes); SIGTERM ends it."""
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    c = psycopg2.connect(dsn)
    c.autocommit = True
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    while not stop:
        n = _max_n(c)
        _write(directory, "snapshot.txt", f"{n}\n".encode())
        time.sleep(0.005)
    c.close()
    os.unlink(pidfile)
    return 0


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    sys.exit({"run": run, "start": start, "stop": stop, "snapshot": snapshot, "indexer": indexer}[cmd](*rest))
