"""An application for the consistent-set tests: writes content files and rows that name them.

    writer.py run DSN DIR TABLE PIDFILE     loop: write DIR/fNNNNNN.bin (tmp + rename), then
                                            INSERT (name, sha256) into TABLE; SIGTERM ends the
                                            loop after the current file's row is committed
    writer.py start DSN DIR TABLE PIDFILE   start `run` in the background (a thaw hook)
    writer.py stop PIDFILE                  SIGTERM the writer and wait until it is gone (a freeze hook)

So while it runs, every committed row names a file that was completely written before the row
was inserted; once stopped, rows and files match one to one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

import psycopg2
from detached import launch
from detached import stop as stop_detached


def run(dsn: str, directory: str, table: str, pidfile: str) -> int:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"SELECT coalesce(max(n), 0) FROM {table}")
    n = cur.fetchone()[0]
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    while not stop:
        n += 1
        name = f"f{n:06d}.bin"
        data = os.urandom(4096 + (n * 7919) % 60000)
        path = os.path.join(directory, name)
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
        cur.execute(f"INSERT INTO {table} (n, name, sha256) VALUES (%s, %s, %s)",
                    (n, name, hashlib.sha256(data).hexdigest()))
        time.sleep(0.003)
    conn.close()
    os.unlink(pidfile)
    return 0


def start(dsn: str, directory: str, table: str, pidfile: str) -> int:
    return launch([sys.executable, os.path.abspath(__file__), "run", dsn, directory, table, pidfile], pidfile,
                  "writer", timeout=20)


def stop(pidfile: str) -> int:
    return stop_detached(pidfile, "writer", timeout=20)  # (removed by the writer after its last row)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    sys.exit({"run": run, "start": start, "stop": stop}[cmd](*rest))
