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

Hot sets of the same application (source `live`, no window: the application never stops) are
killed the same way, the application writing while the daemon is down; the next sets (mostly
incremental) must hold, for every row of every database, the file it names with its content.

And a database server killed (SIGKILL) inside the window, then started again: either
PostgreSQL cluster while the application is frozen, or MariaDB during its dump. The set fails
with one line or, when the kill came after its copy of that server, is `ok`; the application
runs again after the set, and the next set is `ok` and restores one to one.

A scheduled full of the cold source killed inside its window (the daemon's clock moved to the
schedule's time) is caught up by the next start, and restores one to one.

CAIRN_DBSETS_SEED picks the levels, kill points and delays (printed on failure),
CAIRN_DBSETS_ROUNDS how many kills (3 by default).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mariadbserver import MariaDbServer, mariadb_available
from pgstack import CAIRN, CAIRND, ArchivingServer, PgServer, Stack, make_pg_dir

SEED = int(os.environ.get("CAIRN_DBSETS_SEED", str(random.SystemRandom().randrange(1 << 30))))
ROUNDS = int(os.environ.get("CAIRN_DBSETS_ROUNDS", "3"))
PY = sys.executable
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiapp.py")
CLOCKED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon", "clocked_cairnd.py")
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
    # the application starts once its servers answer (a server killed inside the window is back)
    ready = " && ".join(f"until {st.pg.bin('pg_isready')} -q -h {srv.sockdir} -p {srv.port}; do sleep 0.1; done"
                        for srv in (st.pg, ledger))
    ready += f" && until mariadb-admin {' '.join(margs)} ping >/dev/null 2>&1; do sleep 0.1; done"
    thaw = ["sh", "-c", f'{ready} && exec "$0" "$@"', PY, APP, "start", str(conf), pid]
    st.sources["app"] = {"paths": [str(root / "app")], "database": [*CLUSTERS, DUMP], "watch": True,
                         "quiesce": {"mode": "cold", "freeze": [PY, APP, "stop", pid], "thaw": thaw,
                                     "timeout": "30s"}}
    st.sources["live"] = {"paths": [str(root / "app")], "database": [*CLUSTERS, DUMP], "watch": True,
                          "quiesce": {"mode": "hot"}}
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


def kill_at(app: App, point: str, client: subprocess.Popen[str], rng: random.Random, term: bool = False) -> bool:
    """Wait for `point` of the running set, then SIGKILL (`term`: SIGTERM, and wait for the daemon
    to exit) the daemon; False if the set ended first."""
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
    if term:
        assert app.stack.daemon is not None
        status, _ = app.stack.daemon.terminate(60)
        assert status == 0, app.stack.daemon.log()[-3000:]
    else:
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
        name = f"{DUMP}_{holder.name.replace('-', '_')}"
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
        term = rng.random() < 0.3
        what = f"trial {trial} ({'SIGTERM' if term else 'SIGKILL'} at {point}, {level}; CAIRN_DBSETS_SEED={SEED})"
        app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
        client = subprocess.Popen([CAIRN, "--socket", stack.sock, "--json", "backup", "--source", "app",
                                   "--level", level], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = kill_at(app, point, client, rng, term)
        print(what, "killed" if killed else "ended before the kill")
        out, err = client.communicate(timeout=120)
        assert "Traceback" not in err, (what, err)
        if not killed:  # the set ended before the point: it must be a good one
            assert client.returncode == 0, (what, err)
            good.append(json.loads(out))
            continue
        if term:  # a daemon that stops thaws what it froze and ends its dumps and backups itself
            assert app.running(), (what, stack.daemon.log()[-3000:] if stack.daemon else "")
            assert not app.dump_tools(), what
            assert app.cairn_sessions() == 0, what
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

    # a point in time inside the last set's window, after every copy: the application was
    # stopped, so every commit up to it is exactly what the set holds at its own point
    last = good[-1]
    window = last["extra"]["window"]
    thaw_start = datetime.fromisoformat(window["started"]).timestamp() + window["freeze_s"] + window["held_s"]
    stopped = max(d["stopped"] for d in last["extra"]["databases"] if d["name"] in CLUSTERS)
    inside = datetime.fromtimestamp((stopped + thaw_start) / 2, UTC).isoformat()
    app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 10)
    app.archived()
    _, own = restored(app, last["id"])
    _, at = restored(app, last["id"], "--target-time", inside)
    assert at == {db: own[db] for db in at}, (SEED, inside, stopped, thaw_start, {db: len(r) for db, r in at.items()},
                                              {db: len(r) for db, r in own.items()})

    # a point in time between two transactions of the application, after the last set
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


def kill_server(app: App, which: str) -> None:
    if which == "maria":
        proc = app.maria._proc  # noqa: SLF001 (the test owns the server)
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        app.maria.start()
    else:
        srv = app.servers()[which]
        srv.kill()
        end = time.monotonic() + 60
        while True:  # a backend the kill missed holds the shared memory until it sees its postmaster gone
            try:
                srv.start(timeout=120)
                return
            except RuntimeError:
                assert time.monotonic() < end, f"{which} did not start again (CAIRN_DBSETS_SEED={SEED})"
                time.sleep(0.2)


@pytest.mark.campaign
def test_a_database_server_killed_inside_the_window(app: App) -> None:
    rng = random.Random(SEED + 1)
    print(f"CAIRN_DBSETS_SEED={SEED}")
    stack = app.stack
    app.rows(30)
    for trial, which in enumerate(rng.sample(["appdb", "ledgerdb", "maria"], 3)):
        what = f"server trial {trial} (kill {which}; CAIRN_DBSETS_SEED={SEED})"
        app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
        client = subprocess.Popen([CAIRN, "--socket", stack.sock, "--json", "backup", "--source", "app",
                                   "--level", rng.choice(["full", "incremental"])],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        def point(which: str = which, client: subprocess.Popen[str] = client) -> bool:
            reached = bool(app.dump_tools()) if which == "maria" else not app.running()
            return reached or client.poll() is not None

        wait_until(f"the point to kill {which}", point)
        killed = client.poll() is None
        if killed:
            time.sleep(rng.uniform(0, 0.1))
            kill_server(app, which)
        out, err = client.communicate(timeout=180)
        print(what, "killed" if killed else "ended before the kill", client.returncode, err.strip())
        assert "Traceback" not in err, (what, err)
        if client.returncode != 0:
            assert len(err.strip().splitlines()) == 1, (what, err)
        else:
            assert json.loads(out)["status"] == "ok", (what, out)
        assert app.running(), (what, stack.daemon.log() if stack.daemon else "")
        wait_until("no dump tool", lambda: not app.dump_tools(), 30)
        s = stack.backup("app", rng.choice(["full", "differential", "incremental"]))
        assert s["status"] == "ok", (what, s["extra"]["window"])
        if trial < 2 and ROUNDS <= 3:
            continue  # (the sets of the first trials are restored in longer runs only)
        files, rows = restored(app, s["id"])
        assert all(rows.values()), (what, {db: len(r) for db, r in rows.items()})
        assert one_to_one(files, rows) == [], (what, s["id"])


def rows_without_their_file(files: Path, rows: dict[str, list[tuple[str, str, str]]]) -> list[str]:
    bad = []
    for db, triples in rows.items():
        for _, path, digest in triples:
            f = files / path
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
                bad.append(f"{db}: row names {path}, not in the set as named")
    return bad


@pytest.mark.campaign
def test_hot_sets_of_several_databases_killed_at_random_points(app: App) -> None:
    rng = random.Random(SEED + 2)
    print(f"CAIRN_DBSETS_SEED={SEED}")
    stack = app.stack
    app.rows(30)
    good = [stack.backup("live", "full")]
    after_kill = []
    for trial in range(ROUNDS):
        point = rng.choice(["session", "dumping", "delay"])
        what = f"hot trial {trial} (kill at {point}; CAIRN_DBSETS_SEED={SEED})"
        app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
        client = subprocess.Popen([CAIRN, "--socket", stack.sock, "--json", "backup", "--source", "live",
                                   "--level", rng.choice(["full", "incremental", "incremental"])],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = kill_at(app, point, client, rng)
        out, err = client.communicate(timeout=120)
        print(what, "killed" if killed else "ended before the kill")
        assert "Traceback" not in err, (what, err)
        if not killed:
            assert client.returncode == 0, (what, err)
            good.append(json.loads(out))
            continue
        app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 10)  # written while down
        stack.start_daemon()
        wait_until("the killed daemon's dump tool to be gone", lambda: not app.dump_tools(), 30)
        s = stack.backup("live", rng.choice(["incremental", "incremental", "differential"]))
        assert s["status"] == "ok", (what, s["extra"]["window"])
        good.append(s)
        after_kill.append(s)
    for s in after_kill[-(1 + ROUNDS // 4):] or good[-1:]:
        files, rows = restored(app, s["id"])
        assert all(rows.values()), (SEED, s["id"], {db: len(r) for db, r in rows.items()})
        assert rows_without_their_file(files, rows) == [], (SEED, s["id"], s["level"])


def next_local(hour: int, now: float) -> float:
    t = datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0, hour=hour)
    while t.timestamp() <= now:
        t += timedelta(days=1)
    return t.timestamp()


@pytest.mark.campaign
def test_a_scheduled_set_killed_inside_its_window_is_caught_up(app: App) -> None:
    """The daemon (with a clock the test moves) takes the source's scheduled full; it is killed
    inside the window; the next start thaws the application and takes the full again, which
    restores one to one."""
    rng = random.Random(SEED + 3)
    print(f"CAIRN_DBSETS_SEED={SEED}")
    stack = app.stack
    assert stack.daemon is not None
    before = {s["id"] for s in stack.sets("app")}
    assert stack.daemon.terminate(60)[0] == 0, stack.daemon.log()[-3000:]
    clock = stack.root / "clock-offset"
    clock.write_text("0")
    stack.sources["app"]["schedule"] = {"full": "0 4 * * *"}
    stack.write_config()
    stack.launcher = (PY, CLOCKED, CAIRND)
    stack.daemon_env = {"CAIRN_TEST_CLOCK": str(clock)}
    d = stack.start_daemon()
    app.rows(int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 20)
    clock.write_text(str(next_local(4, time.time()) - 1 - time.time()))
    d.proc.send_signal(signal.SIGHUP)  # the scheduler reads the moved clock
    point = rng.choice(["frozen", "dumping"])
    wait_until(f"the scheduled full at {point}",
               lambda: not app.running() if point == "frozen" else bool(app.dump_tools()))
    time.sleep(rng.uniform(0, 0.1))
    stack.kill_daemon()
    d2 = stack.start_daemon()
    assert app.running(), (point, SEED, d2.log()[-3000:])

    def caught_up() -> list[dict]:
        return [s for s in stack.sets("app") if s["id"] not in before]

    sets = []
    wait_until("the scheduled full to be caught up", lambda: sets.extend(caught_up()) or bool(sets), 120)
    s = sets[0]
    assert s["level"] == "full" and s["status"] == "ok", (point, SEED, s)
    assert "caught up now" in d2.log(), d2.log()[-3000:]
    files, rows = restored(app, s["id"])
    assert all(rows.values()), (SEED, {db: len(r) for db, r in rows.items()})
    assert one_to_one(files, rows) == [], (SEED, s["id"])
