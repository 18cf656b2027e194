"""SIGKILL of cairnd at random points of a cold set of one application with two PostgreSQL 15
clusters (archiving through `cairn wal-push`), a MariaDB database (`mariadb-dump`) and a file
tree, all written by one process the whole time (multiapp.py: every row names a file it wrote
before the row). The kill lands while the daemon holds a session on a cluster (preflight, base
backup), inside the freeze window, during the MariaDB dump, or after the thaw (the wait for
WAL), or after a random delay.

After every kill: the restarted daemon thaws the window the killed one left open before it
serves (the application runs again), no dump tool and no base backup of the killed daemon is
left, and the next set (full, differential or incremental) is `ok`. Then sets are restored as an
operator would (`cairn restore SET --target DIR --databases`, a server started on each restored
data directory, the dump restored with `restore-db --target-dsn`): in each, rows and files match
one to one. And one set restored with `--target-time T` between two of the application's
transactions brings both clusters to T together: the rows of both are exactly the application's
PostgreSQL rows up to one point of its sequence.

CAIRN_DBSETS_SEED picks the levels, kill points and delays (printed on failure),
CAIRN_DBSETS_ROUNDS how many kills (3 by default).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mariadbserver import MariaDbServer, mariadb_available
from pgstack import CAIRN, ArchivingServer, PgServer, Stack, make_pg_dir

SEED = int(os.environ.get("CAIRN_DBSETS_SEED", str(random.SystemRandom().randrange(1 << 30))))
ROUNDS = int(os.environ.get("CAIRN_DBSETS_ROUNDS", "3"))
PY = sys.executable
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiapp.py")
CLUSTERS = {"appdb": "shop", "ledgerdb": "ledger"}  # [[database]] -> the database the application writes
DUMP = "chat"
POINTS = ("session", "frozen", "dumping", "thawed", "delay")


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what} (CAIRN_DBSETS_SEED={SEED})"
        time.sleep(0.02)


class App:
    """The stack and the application's pid file, with the checks the campaign makes."""

    def __init__(self, stack: Stack, ledger: ArchivingServer, maria: MariaDbServer, pidfile: str) -> None:
        self.stack, self.ledger, self.maria, self.pidfile = stack, ledger, maria, pidfile

    def running(self) -> bool:
        try:
            pid = int(Path(self.pidfile).read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        return True

    def servers(self) -> dict[str, PgServer]:
        return {"appdb": self.stack.pg, "ledgerdb": self.ledger}

    def cairn_sessions(self) -> int:
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
               "AND application_name = 'cairn'")
        return sum(int(srv.psql(sql)) for srv in self.servers().values())

    def dump_tools(self) -> list[int]:
        """Pids of mariadb-dump processes reading this test's server."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"mariadb-dump") and f"--socket={self.maria.socket}".encode() in argv:
                found.append(int(entry))
        return found

    def rows(self, n: int) -> None:
        """Wait until shop holds more than `n` rows."""
        wait_until(f"more than {n} rows in shop",
                   lambda: int(self.stack.pg.psql("SELECT count(*) FROM files", dbname="shop") or 0) > n)

    def archived(self) -> None:
        for srv in self.servers().values():
            seg = srv.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
            srv.psql("SELECT pg_switch_wal()")
            wait_until(f"segment {seg} archived", lambda srv=srv, seg=seg: srv.psql(  # type: ignore[misc]
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] >= seg)


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    reason = mariadb_available()
    if reason:
        pytest.skip(reason)
    root = make_pg_dir("cairn-dbkill-")
    (root / "app").mkdir()
    maria = MariaDbServer()
    st = Stack(root, {})
    ledger = st.archiving_server()
    margs = maria.client_args()
    st.databases["ledgerdb"] = {"dsn": ledger.dsn, "pgdata": str(ledger.pgdata)}
    st.databases[DUMP] = {"kind": "command", "restore": ["mariadb", *margs, "{target}"],
                          "dump": ["mariadb-dump", *margs, "--single-transaction", DUMP], "timeout": "120s"}
    conf = root / "app.json"
    conf.write_text(json.dumps({"root": str(root / "app"), "maria": {"args": margs, "dbs": [DUMP]},
                                "pg": [st.pg.dsn_for(dbname="shop"), ledger.dsn_for(dbname="ledger")]}))
    pid = str(root / "app.pid")
    st.sources["app"] = {"paths": [str(root / "app")], "database": [*CLUSTERS, DUMP], "watch": True,
                         "quiesce": {"mode": "cold", "freeze": [PY, APP, "stop", pid],
                                     "thaw": [PY, APP, "start", str(conf), pid], "timeout": "30s"}}
    st.write_config()
    try:
        maria.start()
        maria.sql(f"CREATE DATABASE {DUMP}")
        # a table the application does not touch, so that the dump takes a moment
        maria.sql("CREATE TABLE pad (id int PRIMARY KEY, v varchar(200)) ENGINE=InnoDB; "
                  "INSERT INTO pad SELECT seq, repeat('p', 200) FROM seq_1_to_100000", DUMP)
        st.start()
        ledger.start()
        st.psql("CREATE DATABASE shop")
        ledger.psql("CREATE DATABASE ledger")
        subprocess.run([PY, APP, "start", str(conf), pid], check=True, timeout=60)
        yield App(st, ledger, maria, pid)
    finally:
        subprocess.run([PY, APP, "stop", pid], check=False, timeout=60)
        try:
            st.close()
        finally:
            maria.cleanup()
            subprocess.run(["rm", "-rf", str(root)], check=False)


def kill_at(app: App, point: str, client: subprocess.Popen[str], rng: random.Random) -> bool:
    """Wait for `point` of the running set, then SIGKILL the daemon; False if the set ended first."""
    conds: dict[str, Callable[[], bool]] = {
        "session": lambda: app.cairn_sessions() > 0,
        "frozen": lambda: not app.running(),
        "dumping": lambda: bool(app.dump_tools()),
        "thawed": lambda: app.running() and seen_frozen[0],
    }
    seen_frozen = [False]
    if point == "delay":
        end = time.monotonic() + rng.uniform(0.05, 3.0)
        while time.monotonic() < end and client.poll() is None:
            time.sleep(0.01)
    else:
        while True:
            if client.poll() is not None:
                return False
            if not app.running():
                seen_frozen[0] = True
            if conds[point]():
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
    if client.poll() is not None:
        return False
    app.stack.kill_daemon()
    return True


def restored(app: App, set_id: str, *extra: str) -> tuple[Path, dict[str, list[tuple[str, str, str]]]]:
    """Restore the set (`extra`: target options); (its files, database -> rows (n, path, sha256))."""
    stack = app.stack
    holder = make_pg_dir("cairn-dbkill-target-")
    stack.holders.append(holder)
    target = holder / "app"
    stack.ok("restore", set_id, "--target", str(target), "--databases", *extra, timeout=300)
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for cluster, db in CLUSTERS.items():
        srv = ArchivingServer(pgdata=holder / f"app-db-{cluster}")
        stack.restored.append(srv)
        srv.start(timeout=120)
        srv.wait_promoted()
        text = srv.psql("SELECT n || ' ' || path || ' ' || sha256 FROM files ORDER BY n", dbname=db)
        rows[db] = [tuple(line.split(" ")) for line in text.splitlines() if line]  # type: ignore[misc]
        srv.stop()
    if not extra:
        name = f"{DUMP}_{set_id[:8]}"
        app.maria.sql(f"CREATE DATABASE {name}")
        stack.ok("restore-db", set_id, "--database", DUMP, "--target-dsn", name)
        text = app.maria.sql("SELECT n, path, sha256 FROM files ORDER BY n", name)
        rows[DUMP] = [tuple(line.split("\t")) for line in text.splitlines() if line]  # type: ignore[misc]
    return target, rows


def one_to_one(files: Path, rows: dict[str, list[tuple[str, str, str]]]) -> list[str]:
    """What breaks "every row finds its file with its content, every file is named by a row"."""
    bad = []
    named = set()
    for db, triples in rows.items():
        for _, path, digest in triples:
            named.add(path)
            f = files / path
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
                bad.append(f"{db}: row names {path}, not in the set as named")
    on_disk = {str(p.relative_to(files)) for p in (files / "data").rglob("*") if p.is_file()}
    bad += [f"file {p} is named by no row" for p in sorted(on_disk - named)]
    return bad


@pytest.mark.campaign
def test_cold_sets_of_several_databases_killed_at_random_points(app: App) -> None:
    rng = random.Random(SEED)
    print(f"CAIRN_DBSETS_SEED={SEED}")
    stack = app.stack
    app.rows(30)
    good = [stack.backup("app", "full")]
    assert good[0]["status"] == "ok", (SEED, good[0]["extra"]["window"])
    for trial in range(ROUNDS):
        point, level = rng.choice(POINTS), rng.choice(["full", "differential", "incremental"])
        what = f"trial {trial} (kill at {point}, {level}; CAIRN_DBSETS_SEED={SEED})"
        app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
        client = subprocess.Popen([CAIRN, "--socket", stack.sock, "--json", "backup", "--source", "app",
                                   "--level", level], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = kill_at(app, point, client, rng)
        print(what, "killed" if killed else "ended before the kill")
        out, err = client.communicate(timeout=120)
        assert "Traceback" not in err, (what, err)
        if not killed:  # the set ended before the point: it must be a good one
            assert client.returncode == 0, (what, err)
            good.append(json.loads(out))
            continue
        stack.start_daemon()
        # the restarted daemon thawed the window before it served: the application runs again
        assert app.running(), (what, stack.daemon.log() if stack.daemon else "")
        wait_until("the killed daemon's dump tool to be gone", lambda: not app.dump_tools(), 30)
        wait_until("PostgreSQL to leave the killed daemon's backup", lambda: app.cairn_sessions() == 0, 30)
        log = stack.daemon.log() if stack.daemon else ""
        assert "Traceback" not in log, (what, log)
        s = stack.backup("app", rng.choice(["full", "differential", "incremental"]))
        assert s["status"] == "ok", (what, s["extra"]["window"])
        assert app.running(), what
        good.append(s)

    report = json.loads(stack.cli("--json", "verify", "--read-data", timeout=300).stdout)
    assert report["ok"] and not report["errors"], (SEED, report)

    for s in [good[0], *rng.sample(good[1:], min(2, len(good) - 1))]:
        files, rows = restored(app, s["id"])
        assert all(rows.values()), (SEED, s["id"], {db: len(r) for db, r in rows.items()})
        assert one_to_one(files, rows) == [], (SEED, s["id"], s["level"])

    # a point in time between two transactions of the application, after the last set
    last = good[-1]
    app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
    t = stack.pg.psql("SELECT clock_timestamp()")
    app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
    app.archived()
    _, rows = restored(app, last["id"], "--target-time", t)
    ns = sorted(int(n) for triples in rows.values() for n, _, _ in triples)
    # the application writes n = 1, 2, 3, ... round robin over shop, ledger, chat: n % 3 == 2 is chat's
    upto = ns[-1]
    want = [n for n in range(1, upto + 1) if n % 3 != 2]
    assert ns == want, (SEED, t, sorted(set(want) - set(ns))[:10], sorted(set(ns) - set(want))[:10])
    after = int(stack.pg.psql(f"SELECT count(*) FROM files WHERE n <= {upto}", dbname="shop"))
    assert after == len([n for n in want if n % 3 == 0]), (SEED, t)  # nothing of the cluster was left out
