"""A disaster-recovery drill of a whole application, as an operator would run it from the docs,
on a real SeaweedFS bucket, a real PostgreSQL 15 and a real MariaDB.

Host A runs cairnd with a configuration file (host `drillA`, an encrypted repository in the
bucket) and one source `app`: a data tree and two databases, `appdb` (a base backup of a local
PostgreSQL cluster whose WAL the daemon archives through `cairn wal-push`) and `shop` (kind
`command`: `mariadb-dump --single-transaction`). A writer thread keeps adding files, rewriting
one, and inserting rows into both databases (row n of either only after file n) while A takes a
full and two incremental sets. Between the second and the third set the writer pauses once: the
moment then is the point in time the drill restores PostgreSQL to.

Then host A is lost in the middle of one more set (of a big new file), once that set has stored
its first pack: its daemon, PostgreSQL and MariaDB are killed with SIGKILL, and its
state directory, configuration, data tree and both data directories are deleted.

Host B has an empty state directory, a copy of the bucket's credentials and the passphrase. It
follows docs/disaster-recovery.md: a read-only recovery daemon on the repository (its Unix
socket, or in the `tcp` variant a configuration file with a TLS listener and a token, the client
reaching it as from another host), `cairn sets --host drillA`, `cairn restore SET --target DIR
--databases` (files and the PostgreSQL data directory; the dump is named, not laid down), a
server started on the result, `restore-db --target-time` to the pause, the MariaDB dump written
with `restore-db --target` and loaded with `mariadb`. Rows and files are checked against what
the writer had done before each set began and after it ended: whole files, ids without a gap.
What the recovery daemon says to run for the dump is what works there (`--target DIR`: it has
no restore command for it), and it writes nothing to the bucket: the lock the killed set left,
stale as its process is gone, stays too.

Last, B takes over A's name (docs/operations.md and step 5 of the runbook): a daemon with a
configuration naming host `drillA`, its restored tree, the restored PostgreSQL (archiving into
the same repository) and a new MariaDB, takes a full set into the same repository; `cairn sets
--host drillA` lists A's sets and B's, and A's sets still restore (files, PostgreSQL to the same
point in time and to the end of A's WAL with B's new timeline beside it in the archive, and the
MariaDB dump straight into a database through B's restore command)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cairnd_harness import free_port, snapshot
from certificates import make_certificates
from mariadbserver import MariaDbServer, mariadb_available
from s3daemons import clean_env, s3_repository
from storekit import make_tree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pg_daemon"))
from pgstack import CAIRN, CAIRND, ArchivingServer, make_pg_dir, pg_available  # noqa: E402

HOST, SOURCE = "drillA", "app"
PASSPHRASE = "drill passphrase kept off the host\n"
# host B is another machine: its own machine and boot id (cloned_cairnd.py runs the real cairnd so)
# and its own host name (a UTS namespace), so A's locks are another machine's to it
ON_B = ["unshare", "--uts", "sh", "-c", 'hostname drill-machine-b && exec "$0" "$@"', sys.executable,
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "cloned_cairnd.py")]
MACHINE_B = {"CAIRN_TEST_MACHINE_ID": "b2" * 16, "CAIRN_TEST_BOOT_ID": str(uuid.uuid4())}

# two variants of 40 to 80 s each (by the machine's load): marked as the campaigns are
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.campaign]
if pg_available():
    pytestmark.append(pytest.mark.skip(reason=pg_available()))
elif mariadb_available():
    pytestmark.append(pytest.mark.skip(reason=mariadb_available()))


def toml(v: Any) -> str:
    return json.dumps(v)


class Writer(threading.Thread):
    """The application: step n writes w/NNNNN.txt (whole, by rename), rewrites counter.txt with
    n, then inserts row n into PostgreSQL's orders and MariaDB's items."""

    def __init__(self, files: Path, pg: ArchivingServer, maria: MariaDbServer) -> None:
        super().__init__(daemon=True)
        self.files, self.pg, self.maria = files, pg, maria
        self.done = 0  # steps finished
        self.stop_now = threading.Event()
        self.run_ok = threading.Event()
        self.run_ok.set()
        self.idle = threading.Event()
        self.error: BaseException | None = None
        (files / "w").mkdir()

    def step(self, n: int) -> None:
        tmp = self.files / f".w{n}.tmp"
        tmp.write_text(content(n))
        os.rename(tmp, self.files / "w" / f"{n:05d}.txt")
        tmp = self.files / ".counter.tmp"
        tmp.write_text(f"{n}\n")
        os.rename(tmp, self.files / "counter.txt")
        self.pg.psql(f"INSERT INTO orders VALUES ({n}, 'order {n}')", dbname="app")
        self.maria.sql(f"INSERT INTO items VALUES ({n}, 'item {n}')", database="shop")

    def run(self) -> None:
        try:
            while not self.stop_now.is_set():
                if not self.run_ok.is_set():
                    self.idle.set()
                    self.run_ok.wait()
                    self.idle.clear()
                    continue
                self.step(self.done + 1)
                self.done += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.idle.set()

    def pause(self) -> int:
        self.run_ok.clear()
        assert self.idle.wait(60), "the writer did not pause"
        return self.done

    def resume(self) -> None:
        self.run_ok.set()

    def wait_steps(self, more: int, timeout: float = 60) -> None:
        want = self.done + more
        end = time.monotonic() + timeout
        while self.done < want:
            assert self.error is None, self.error
            assert time.monotonic() < end, "the writer is stuck"
            time.sleep(0.02)


def content(n: int) -> str:
    return f"file {n}\n" * (1 + n % 40)


def check_files(tree: Path, static: dict, low: int, high: int) -> int:
    """The restored data tree holds the static part as captured and the writer's files 1..k with
    low <= k <= high, each whole; counter.txt names a step in [low, high]. Returns k."""
    assert snapshot(str(tree / "static")) == static
    names = sorted(os.listdir(tree / "w"))
    k = len(names)
    assert names == [f"{i:05d}.txt" for i in range(1, k + 1)], names[-5:]
    assert low <= k <= high, (low, k, high)
    for i in (1, k // 2, k):
        if i:
            assert (tree / "w" / f"{i:05d}.txt").read_text() == content(i)
    assert low <= int((tree / "counter.txt").read_text()) <= high
    return k


def check_rows(count_min_max: str, low: int, high: int) -> int:
    """'count|min|max' of ids 1..n without a gap, low <= n <= high. Returns n."""
    count, lo, hi = (int(x or 0) for x in count_min_max.split("|"))
    assert count == hi and (count == 0 or lo == 1), count_min_max
    assert low <= count <= high, (low, count, high)
    return count


def wait_answering(argv: list[str], proc: subprocess.Popen, log: Path, env: dict[str, str]) -> None:
    end = time.monotonic() + 60
    while subprocess.run([*argv, "status"], capture_output=True, env=env, timeout=60).returncode != 0:
        assert proc.poll() is None, f"cairnd exited {proc.returncode}: {log.read_text(errors='replace')}"
        assert time.monotonic() < end, "cairnd did not answer in time"
        time.sleep(0.1)


def objects(weed: Any, prefix: str) -> dict[str, str]:
    """Every object under `prefix` with its ETag, straight from the store."""
    out = {}
    for page in weed.client().get_paginator("list_objects_v2").paginate(Bucket=weed.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = obj["ETag"]
    return out


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_drill_lost_application_host_restored_and_taken_over(weed, creds, transport):
    root = make_pg_dir("cairn-drill-")
    servers: list[Any] = []
    procs: list[subprocess.Popen] = []
    writer: Writer | None = None
    try:
        # ---- host A -------------------------------------------------------------------------
        prefix = f"drill-{uuid.uuid4().hex[:8]}"
        etc = root / "etcA"
        etc.mkdir()
        shutil.copy(creds, etc / "s3.credentials")
        (etc / "repo.pass").write_text(PASSPHRASE)
        (root / "runA").mkdir(mode=0o755)
        sock = str(root / "runA" / "cairnd.sock")
        files = root / "files"
        make_tree(str(files / "static"), random.Random(7), files=15, max_size=100 * 1024)
        pg = ArchivingServer(settings={"archive_mode": "on", "archive_command": f"{CAIRN} --socket {sock} wal-push %p",
                                       "archive_timeout": "0"})
        servers.append(pg)
        maria = MariaDbServer()
        servers.append(maria)
        maria.start()
        maria.sql("CREATE DATABASE shop")
        maria.sql("CREATE TABLE items (id int PRIMARY KEY, note text)", database="shop")
        margs = maria.client_args()
        config = etc / "cairnd.toml"
        config.write_text("\n".join([
            "[repository]", *s3_repository(weed, str(etc / "s3.credentials"), prefix, str(etc / "repo.pass")), "",
            "[daemon]", f"socket = {toml(sock)}", f"state_dir = {toml(str(root / 'stateA'))}",
            'socket_group = "postgres"', f'host = "{HOST}"', "",
            "[[database]]", 'name = "appdb"', f"dsn = {toml(pg.dsn)}", f"pgdata = {toml(str(pg.pgdata))}", "",
            "[[database]]", 'name = "shop"', 'kind = "command"',
            f"dump = {toml(['mariadb-dump', *margs, '--single-transaction', 'shop'])}",
            f"restore = {toml(['mariadb', *margs, '{target}'])}", "",
            "[[source]]", f'name = "{SOURCE}"', f"paths = [{toml(str(files))}]", 'database = ["appdb", "shop"]',
            "watch = true",
        ]) + "\n")
        env = clean_env()
        made = subprocess.run([CAIRND, "--config", str(config), "--init"], capture_output=True, text=True, env=env,
                              timeout=120)
        assert made.returncode == 0, made.stderr
        log_a = root / "cairnd-A.log"
        with open(log_a, "wb") as err:
            daemon_a = subprocess.Popen([CAIRND, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=err,
                                        env=env)
        procs.append(daemon_a)
        wait_answering([CAIRN, "--socket", sock], daemon_a, log_a, env)
        pg.start()
        pg.psql("CREATE DATABASE app")
        pg.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)", dbname="app")
        static = snapshot(str(files / "static"))

        def cli_a(*args: str) -> str:
            r = subprocess.run([CAIRN, "--socket", sock, *args], capture_output=True, text=True, env=env,
                               timeout=300)
            assert r.returncode == 0, f"cairn {' '.join(args)}: {r.stdout}{r.stderr}"
            return r.stdout

        writer = Writer(files, pg, maria)
        writer.start()
        bounds: dict[str, tuple[int, int]] = {}  # set id -> (steps done before it began, after it ended)

        def take(level: str) -> str:
            writer.wait_steps(5)
            low = writer.done
            out = json.loads(cli_a("--json", "backup", "--source", SOURCE, "--level", level))
            bounds[out["id"]] = (low, writer.done + 1)  # a step under way when it ended may be in it
            assert out["hostname"] == HOST, out
            return out["id"]

        full = take("full")
        take("incremental")
        mark = writer.pause()
        at = pg.psql("SELECT clock_timestamp()")  # every commit of step <= mark is before it, the rest after
        writer.resume()
        newest = take("incremental")
        writer.wait_steps(3)
        writer.stop_now.set()
        writer.join(60)
        assert writer.error is None, writer.error
        # the loss comes in the middle of one more set, once it has stored its first pack (a big new
        # file fills several: the set is far from its end then) and while it holds its lock
        # (128 MiB: after its first pack the set has 100 MiB or more to go, so the listing that saw the
        # pack and the set's lock cannot be outrun by the set's end on a loaded machine)
        with open(files / "big.bin", "wb") as f:
            f.write(random.Random(3).randbytes(128 << 20))
        stored = set(objects(weed, prefix))
        cut = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--source", SOURCE, "--level", "incremental"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        procs.append(cut)
        end = time.monotonic() + 60
        while not {"packs", "locks"} <= {k.split("/")[1] for k in set(objects(weed, prefix)) - stored}:
            assert cut.poll() is None and time.monotonic() < end, f"the last backup stored no pack ({cut.poll()})"
            time.sleep(0.02)

        # ---- the loss -------------------------------------------------------------------------
        daemon_a.kill()
        daemon_a.wait(10)
        assert any(k.split("/")[1] == "locks" for k in set(objects(weed, prefix)) - stored), "no set was running"
        pg.kill()
        maria.cleanup()
        for gone in (files, root / "stateA", etc, pg.pgdata):
            shutil.rmtree(gone)

        # ---- host B: the runbook -----------------------------------------------------------------
        kept = root / "kept"
        kept.mkdir(mode=0o700)
        shutil.copy(creds, kept / "s3.credentials")
        (kept / "repo.pass").write_text(PASSPHRASE)
        home = root / "stateB"
        home.mkdir(mode=0o700)
        work = root / "recovered"
        (root / "runB").mkdir(mode=0o755)
        sock_b = str(root / "runB" / "cairnd.sock")
        env_b = clean_env({**MACHINE_B,
            "AWS_ENDPOINT_URL_S3": weed.endpoint, "AWS_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": str(kept / "s3.credentials"), "CAIRN_HOME": str(home),
        })
        repo = f"s3://{weed.bucket}/{prefix}"
        log_b = root / "cairnd-B.log"
        if transport == "unix":
            argv = [*ON_B, "--repo", repo, "--read-only", "--passphrase-file", str(kept / "repo.pass"),
                    "--socket", sock_b, "--socket-group", "postgres"]
            client = [CAIRN, "--socket", sock_b]
        else:
            tls = root / "tls"
            tls.mkdir(mode=0o755)
            certs = make_certificates(str(tls))
            (tls / "token").write_text("drill-token\n")
            for name in ("ca.pem", "token"):  # read by restore_command, as the postgres user
                os.chmod(tls / name, 0o644)
            address = f"127.0.0.1:{free_port()}"
            rconf = root / "recovery.toml"
            rconf.write_text("\n".join([
                "[repository]", f"path = {toml(repo)}", f"passphrase_file = {toml(str(kept / 'repo.pass'))}", "",
                "[daemon]", "read_only = true", f"state_dir = {toml(str(home))}", f"socket = {toml(sock_b)}",
                f"listen = {toml(address)}", f"tls_cert = {toml(certs['cert'])}", f"tls_key = {toml(certs['key'])}",
                f"token_file = {toml(str(tls / 'token'))}",
            ]) + "\n")
            argv = [*ON_B, "--config", str(rconf)]
            client = [CAIRN, "--address", address, "--tls-ca", certs["ca"], "--token-file", str(tls / "token")]
        before = objects(weed, prefix)
        with open(log_b, "wb") as err:
            recovery = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env_b)
        procs.append(recovery)
        wait_answering(client, recovery, log_b, env_b)

        def cli_b(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            r = subprocess.run([*client, *args], capture_output=True, text=True, env=env_b, timeout=300)
            assert not check or r.returncode == 0, f"cairn {' '.join(args)} -> {r.returncode}: {r.stdout}{r.stderr}"
            return r

        listed = cli_b("sets", "--host", HOST, "--source", SOURCE).stdout
        set_id = listed.strip().splitlines()[-1].split(" ")[0]
        assert newest.startswith(set_id), listed
        cli_b("verify", "--set", set_id, "--read-data")
        out = cli_b("restore", set_id, "--target", str(work / "app"), "--databases").stdout
        # the recovery daemon has no restore command for the MariaDB dump: what it says to run works there
        sid = set_id[:12]
        assert "--target-dsn" not in out, out
        assert (f"  2. database 'shop' (a dump): cairn restore-db {sid} --database shop --target DIR, then load the "
                "file it names with the database's own tool") in out, out
        assert "--target-dsn" not in cli_b("ls", set_id).stdout
        refused = cli_b("restore-db", set_id, "--database", "shop", "--target-dsn", "shop", check=False)
        assert refused.returncode == 1 and f"cairn restore-db {sid} --database shop --target DIR" in refused.stderr
        low, high = bounds[newest]
        check_files(work / "app", static, low, high)
        laid = ArchivingServer(pgdata=work / "app-db-appdb")
        servers.append(laid)
        laid.start(timeout=120)
        laid.wait_promoted()
        check_rows(laid.psql("SELECT count(*), min(id), max(id) FROM orders", dbname="app"), low, high)
        laid.stop()

        before_mark = next(i for i in bounds if i != newest and i != full)
        # the runbook's $SET is the newest set, taken after the moment: refused, naming the set to take
        refused = cli_b("restore-db", set_id, "--database", "appdb", "--target", str(work / "pitr"), "--target-time",
                        at, check=False)
        assert refused.returncode == 2 and f"set '{before_mark[:8]}' (consistent at " in refused.stderr, refused
        assert not (work / "pitr").exists()
        cli_b("restore-db", before_mark, "--database", "appdb", "--target", str(work / "pitr"), "--target-time", at)
        pitr = ArchivingServer(pgdata=work / "pitr")
        servers.append(pitr)
        pitr.start(timeout=120)
        pitr.wait_promoted()
        assert check_rows(pitr.psql("SELECT count(*), min(id), max(id) FROM orders", dbname="app"), mark, mark)
        pitr.stop()

        dump = cli_b("--json", "restore-db", set_id, "--database", "shop", "--target", str(work / "shop-dump"))
        dump_path = json.loads(dump.stdout)["dump"]
        maria_b = MariaDbServer()
        servers.append(maria_b)
        maria_b.start()
        maria_b.sql("CREATE DATABASE shop_restored")
        with open(dump_path, "rb") as f:
            subprocess.run(["mariadb", *maria_b.client_args(), "shop_restored"], stdin=f, check=True, timeout=120)
        check_rows(maria_b.sql("SELECT count(*), min(id), max(id) FROM items", database="shop_restored")
                   .replace("\t", "|"), low, high)
        terminate(recovery)
        assert objects(weed, prefix) == before  # the recovery wrote nothing to the bucket
        shutil.rmtree(home)  # the runbook: delete the recovery daemon's state afterwards

        # ---- B takes over A's name ------------------------------------------------------------
        margs_b = maria_b.client_args()
        config_b = root / "cairnd-B.toml"
        config_b.write_text("\n".join([
            "[repository]", *s3_repository(weed, str(kept / "s3.credentials"), prefix, str(kept / "repo.pass")), "",
            "[daemon]", f"socket = {toml(sock_b)}", f"state_dir = {toml(str(root / 'stateB-host'))}",
            'socket_group = "postgres"', f'host = "{HOST}"', "",
            "[[database]]", 'name = "appdb"', f"dsn = {toml(laid.dsn)}", f"pgdata = {toml(str(laid.pgdata))}", "",
            "[[database]]", 'name = "shop"', 'kind = "command"',
            f"dump = {toml(['mariadb-dump', *margs_b, '--single-transaction', 'shop_restored'])}",
            f"restore = {toml(['mariadb', *margs_b, '{target}'])}", "",
            "[[source]]", f'name = "{SOURCE}"', f"paths = [{toml(str(work / 'app'))}]", 'database = ["appdb", "shop"]',
            "watch = true",
        ]) + "\n")
        log_h = root / "cairnd-B-host.log"
        with open(log_h, "wb") as err:
            host_b = subprocess.Popen([*ON_B, "--config", str(config_b)], stdout=subprocess.DEVNULL, stderr=err,
                                      env=clean_env(MACHINE_B))
        procs.append(host_b)
        local = [CAIRN, "--socket", sock_b]
        wait_answering(local, host_b, log_h, clean_env())
        laid.settings.update({"archive_mode": "on", "archive_command": f"{CAIRN} --socket {sock_b} wal-push %p",
                              "archive_timeout": "0"})
        laid.start(timeout=120)

        def cli_h(*args: str) -> str:
            r = subprocess.run([*local, *args], capture_output=True, text=True, env=clean_env(), timeout=300)
            assert r.returncode == 0, f"cairn {' '.join(args)} -> {r.returncode}: {r.stdout}{r.stderr}"
            return r.stdout

        # the set A was taking when it died left its lock; B, under A's name, removes it at once
        left = {k for k in objects(weed, prefix) if k.split("/")[1] == "locks"}
        assert left, "the killed set left no lock"
        assert "removed 0 " not in cli_h("unlock", "--host", HOST)
        assert not left & set(objects(weed, prefix))
        laid.psql("INSERT INTO orders VALUES (100000, 'written on host B')", dbname="app")
        (work / "app" / "on-b.txt").write_text("written on host B\n")
        # a scheduled incremental may come before the full the runbook asks for: it builds on A's
        # newest set, taken of another path, and restores as B's tree is
        early = json.loads(cli_h("--json", "backup", "--source", SOURCE, "--level", "incremental"))
        assert early["base"] == newest, early
        cli_h("restore", early["id"], "--target", str(work / "early"))
        assert snapshot(str(work / "early")) == snapshot(str(work / "app"))
        taken = json.loads(cli_h("--json", "backup", "--source", SOURCE, "--level", "full"))
        assert taken["hostname"] == HOST
        again = json.loads(cli_h("--json", "backup", "--source", SOURCE, "--level", "incremental"))
        ids = [s["id"] for s in json.loads(cli_h("--json", "sets", "--host", HOST, "--source", SOURCE))]
        assert ids == [*bounds, early["id"], taken["id"], again["id"]], ids
        # B has a restore command for shop: A's dump goes straight into a database
        assert "--database shop --target-dsn DSN" in cli_h("ls", newest)
        maria_b.sql("CREATE DATABASE shop_again")
        cli_h("restore-db", newest, "--database", "shop", "--target-dsn", "shop_again")
        check_rows(maria_b.sql("SELECT count(*), min(id), max(id) FROM items", database="shop_again")
                   .replace("\t", "|"), *bounds[newest])
        assert json.loads(cli_h("--json", "ls", "latest"))  # latest is B's newest under A's name
        low, high = bounds[full]
        cli_h("restore", full, "--target", str(work / "old-full"))
        check_files(work / "old-full", static, low, high)
        cli_h("restore-db", before_mark, "--database", "appdb", "--target", str(work / "pitr2"), "--target-time", at)
        pitr2 = ArchivingServer(pgdata=work / "pitr2")
        servers.append(pitr2)
        pitr2.start(timeout=120)
        pitr2.wait_promoted()
        assert check_rows(pitr2.psql("SELECT count(*), min(id), max(id) FROM orders", dbname="app"), mark, mark)
        pitr2.stop()
        # to the end of A's WAL (the runbook's usual choice) with B's new timeline in the archive:
        # every row A archived after its newest set, none written on B
        cli_h("restore-db", newest, "--database", "appdb", "--target", str(work / "end"), "--target-end")
        to_end = ArchivingServer(pgdata=work / "end")
        servers.append(to_end)
        to_end.start(timeout=120)
        to_end.wait_promoted()
        check_rows(to_end.psql("SELECT count(*), min(id), max(id) FROM orders", dbname="app"),
                   bounds[newest][0], writer.done)
    finally:
        if writer is not None:
            writer.stop_now.set()
            writer.resume()
        for proc in procs:
            terminate(proc)
        for srv in servers:
            srv.cleanup()
        subprocess.run(["rm", "-rf", str(root)], check=False)
