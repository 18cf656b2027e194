"""An application with several databases for the end-to-end tests: files and rows that name them,
spread over PostgreSQL databases and MariaDB databases at once.

    multiapp.py run CONF PIDFILE     loop: write ROOT/data/b<n % 5>/f<n>.bin (tmp + rename), then
                                     INSERT (n, path, sha256) into table `files` of one database
                                     (round robin over every database of CONF); SIGTERM ends the
                                     loop after the current row, and the application exits once
                                     every row it sent is committed
    multiapp.py start CONF PIDFILE   start `run` in the background unless it runs (a thaw hook)
    multiapp.py stop PIDFILE         SIGTERM the application and wait until it is gone (a freeze hook)

CONF is a JSON file: {"root": DIR, "pg": [DSN, ...], "maria": {"args": [client options], "dbs":
[name, ...]}}. MariaDB rows go through one `mariadb` client per database fed on its stdin (no
MariaDB driver is needed). While it runs, every committed row names a file completely written
before the row; once stopped, rows and files match one to one. Files are never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import psycopg2
from detached import launch
from detached import stop as stop_detached

PG_TABLE = "CREATE TABLE IF NOT EXISTS files (n bigint PRIMARY KEY, path text NOT NULL, sha256 text NOT NULL)"
MARIA_TABLE = ("CREATE TABLE IF NOT EXISTS files (n bigint PRIMARY KEY, path varchar(200) NOT NULL, "
               "sha256 char(64) NOT NULL) ENGINE=InnoDB;")


def run(conf_path: str, pidfile: str) -> int:
    conf = json.load(open(conf_path))
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    targets: list[tuple[str, object]] = []
    n = 0
    for dsn in conf["pg"]:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(PG_TABLE)
        cur.execute("SELECT coalesce(max(n), 0) FROM files")
        n = max(n, int(cur.fetchone()[0]))
        targets.append(("pg", conn))
    maria = conf.get("maria") or {"args": [], "dbs": []}
    clients: list[subprocess.Popen] = []
    for db in maria["dbs"]:
        out = subprocess.run(["mariadb", *maria["args"], "--batch", "--skip-column-names", db, "-e",
                              MARIA_TABLE + "SELECT coalesce(max(n), 0) FROM files"],
                             capture_output=True, text=True, check=True)
        n = max(n, int(out.stdout.strip() or 0))
        client = subprocess.Popen(["mariadb", *maria["args"], db], stdin=subprocess.PIPE, text=True)
        clients.append(client)
        targets.append(("maria", client))
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    while not stop:
        n += 1
        rel = f"data/b{n % 5}/f{n:07d}.bin"
        data = os.urandom(1024 + (n * 7919) % 8000)
        path = os.path.join(conf["root"], rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
        digest = hashlib.sha256(data).hexdigest()
        kind, target = targets[n % len(targets)]
        if kind == "pg":
            target.cursor().execute("INSERT INTO files VALUES (%s, %s, %s)", (n, rel, digest))  # type: ignore[attr-defined]
        else:
            target.stdin.write(f"INSERT INTO files VALUES ({n}, '{rel}', '{digest}');\n")  # type: ignore[attr-defined]
            target.stdin.flush()  # type: ignore[attr-defined]
        time.sleep(0.004)
    for client in clients:  # every row sent is committed once its client has read it all
        client.stdin.close()
        client.wait(60)
    for kind, target in targets:
        if kind == "pg":
            target.close()  # type: ignore[attr-defined]
    os.unlink(pidfile)
    return 0


def start(conf_path: str, pidfile: str) -> int:
    if os.path.exists(pidfile):
        return 0
    return launch([sys.executable, os.path.abspath(__file__), "run", conf_path, pidfile], pidfile,
                  "the application", stderr=pidfile + ".err")


def stop(pidfile: str) -> int:
    return stop_detached(pidfile, "application")  # (removed by the application after its last commit)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    sys.exit({"run": run, "start": start, "stop": stop}[cmd](*rest))
