"""Disaster recovery exactly as docs/disaster-recovery.md says, on a real SeaweedFS bucket and a
real PostgreSQL 15.

A source host: a cairnd with a configuration file (host `app1`, an encrypted repository in the
bucket, its source `app` capturing database `appdb` by base backup, WAL archived through
`cairn wal-push`) takes a full and an incremental set of files and database. Then the host is
lost: PostgreSQL and the daemon are stopped, and the data directory, the files, the daemon's
state directory, its configuration and the credentials and passphrase files it used are
deleted.

The recovery reads its commands from the runbook's ```sh blocks: the settings block (whose
variable names must be those the test provides: a copy of the bucket's credentials and of the
passphrase, an empty state directory), the `cairnd --repo ... --read-only` block (started in
the background, as the runbook's second terminal), then every other block in one bash
(`set -euo pipefail`): status, sets of the lost host, verify of the set, restore of the files,
restore-db of the database. The PostgreSQL start block is the one step done the test suite's
way (ArchivingServer: a free port and socket directory, and the capabilities the test
machine's `postgres` user needs to run the client); the test checks that the block starts
`pg_ctl` on `$WORK/pgdata`. Then: the server promotes (its restore_command reached the
read-only daemon through `--socket-group postgres`) and holds every row the lost server
committed, the one committed after the last set too (the runbook restores with --target-end, to
the end of the WAL archive; the server archived that segment when it stopped), the files restore
byte-identical with their
metadata as they were captured, and the bucket holds exactly the objects it held before the
recovery began."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cairnd_harness import snapshot
from s3daemons import clean_env
from storekit import make_tree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pg_daemon"))
from pgstack import CAIRN, CAIRND, ArchivingServer, NotifyListener, make_pg_dir, pg_available  # noqa: E402

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "disaster-recovery.md"
LOST_HOST, SOURCE, DATABASE = "app1", "app", "appdb"

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
if pg_available():
    pytestmark.append(pytest.mark.skip(reason=pg_available()))


def runbook_blocks() -> list[str]:
    """The ```sh blocks of the runbook, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", RUNBOOK.read_text(), flags=re.S | re.M)


def exported(block: str) -> set[str]:
    return set(re.findall(r"^export ([A-Z0-9_]+)=", block, flags=re.M))


def wait_ready(sock: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run([CAIRN, "--socket", sock, "status"], capture_output=True, env=clean_env(),
                         timeout=60).returncode != 0:
        assert proc.poll() is None, f"cairnd exited {proc.returncode}: {log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, "cairnd did not answer in time"
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def objects(weed, prefix: str) -> dict[str, str]:
    """Every object under `prefix` with its ETag, straight from the store."""
    out = {}
    for page in weed.client().get_paginator("list_objects_v2").paginate(Bucket=weed.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = obj["ETag"]
    return out


def test_a_lost_host_is_restored_on_a_fresh_machine_by_the_runbook(weed, creds):
    blocks = runbook_blocks()
    settings = [b for b in blocks if b.startswith("# settings")]
    starts = [b for b in blocks if b.lstrip().startswith("cairnd ")]
    pg_starts = [b for b in blocks if "pg_ctl" in b]
    script = [b for b in blocks if b not in settings + starts + pg_starts]
    assert len(settings) == len(starts) == len(pg_starts) == 1 and script, "the runbook's steps changed"
    assert "--read-only" in starts[0] and '"$REPO"' in starts[0] and "--socket-group postgres" in starts[0]
    assert 'pg_ctl -D "$WORK/pgdata"' in pg_starts[0] and " start" in pg_starts[0]
    assert '-l "$WORK/pgdata/' in pg_starts[0]  # a log the postgres user may write ($WORK is root's)
    assert any("cairn restore-db" in b for b in script) and any("cairn restore " in b for b in script)

    root = make_pg_dir("cairn-dr-")
    servers: list[ArchivingServer] = []
    procs: list[subprocess.Popen] = []
    try:
        # ---- the host that will be lost -------------------------------------------------------
        prefix = f"dr-{uuid.uuid4().hex[:8]}"
        lost_etc = root / "etc"  # its configuration, credentials and passphrase: all lost
        lost_etc.mkdir()
        shutil.copy(creds, lost_etc / "s3.credentials")
        (lost_etc / "repo.pass").write_text("a passphrase kept off the host\n")
        (root / "run").mkdir(mode=0o755)
        sock = str(root / "run" / "cairnd.sock")
        files = root / "files"
        make_tree(str(files), random.Random(42), files=25, max_size=200 * 1024)
        os.symlink("a-target", files / "link")
        pg = ArchivingServer(settings={"archive_mode": "on", "archive_command": f"{CAIRN} --socket {sock} wal-push %p",
                                       "archive_timeout": "0"})
        servers.append(pg)
        config = lost_etc / "cairnd.toml"
        config.write_text("\n".join([
            "[repository]", f'path = "s3://{weed.bucket}/{prefix}"', f'endpoint = "{weed.endpoint}"',
            'region = "us-east-1"', f'credentials_file = "{lost_etc / "s3.credentials"}"',
            f'passphrase_file = "{lost_etc / "repo.pass"}"', "",
            "[daemon]", f'socket = "{sock}"', f'state_dir = "{root / "state"}"', 'socket_group = "postgres"',
            f'host = "{LOST_HOST}"', "",
            "[[database]]", f'name = "{DATABASE}"', f"dsn = {json.dumps(pg.dsn)}", f'pgdata = "{pg.pgdata}"', "",
            "[[source]]", f'name = "{SOURCE}"', f'paths = ["{files}"]', f'database = "{DATABASE}"', "watch = false",
        ]) + "\n")
        made = subprocess.run([CAIRND, "--config", str(config), "--init"], capture_output=True, text=True,
                              env=clean_env(), timeout=120)
        assert made.returncode == 0, made.stderr
        notify = NotifyListener(str(root / "notify"))
        log = root / "cairnd.log"
        with open(log, "wb") as err:
            source = subprocess.Popen([CAIRND, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=err,
                                      env=clean_env({"NOTIFY_SOCKET": notify.path}))
        procs.append(source)
        wait_ready(sock, source, log)
        pg.start()

        def cli(*args: str) -> str:
            r = subprocess.run([CAIRN, "--socket", sock, *args], capture_output=True, text=True, env=clean_env(),
                               timeout=300)
            assert r.returncode == 0, f"cairn {' '.join(args)}: {r.stderr}"
            return r.stdout

        pg.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        pg.psql("INSERT INTO orders SELECT g, 'first ' || g FROM generate_series(1, 1000) g")
        cli("backup", "--source", SOURCE, "--level", "full")
        pg.psql("INSERT INTO orders SELECT g, 'second ' || g FROM generate_series(1001, 1500) g")
        (files / "added.txt").write_text("written between the sets\n")
        os.unlink(next(p for p in sorted(files.rglob("*")) if p.is_file() and p.suffix != ".txt"))
        captured = snapshot(str(files))
        last = json.loads(cli("--json", "backup", "--source", SOURCE, "--level", "incremental"))
        assert last["hostname"] == LOST_HOST and last["extra"]["database"]["stop_lsn"]
        pg.psql("INSERT INTO orders VALUES (9999, 'after the last set')")

        # ---- the loss -------------------------------------------------------------------------
        pg.stop()
        stop(source)
        notify.close()
        for gone in (pg.pgdata, files, root / "state", lost_etc):
            shutil.rmtree(gone)

        # ---- the fresh machine: the bucket's credentials, the passphrase, the runbook ----------
        kept = root / "kept"  # what was kept away from the host
        kept.mkdir(mode=0o700)
        shutil.copy(creds, kept / "s3.credentials")
        (kept / "repo.pass").write_text("a passphrase kept off the host\n")
        home = root / "recovery-state"
        home.mkdir(mode=0o700)  # empty
        work = root / "recovered"
        values = {
            "REPO": f"s3://{weed.bucket}/{prefix}", "AWS_ENDPOINT_URL_S3": weed.endpoint, "AWS_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": str(kept / "s3.credentials"), "PASSPHRASE_FILE": str(kept / "repo.pass"),
            "LOST_HOST": LOST_HOST, "SOURCE": SOURCE, "DATABASE": DATABASE, "CAIRN_HOME": str(home),
            "CAIRN_SOCKET": str(root / "rr" / "cairnd.sock"), "WORK": str(work),
        }
        assert exported(settings[0]) == set(values), "the runbook's settings and this test's differ"
        env = clean_env(values)
        env["PATH"] = os.path.dirname(CAIRN) + os.pathsep + env.get("PATH", "")  # the installed cairn, cairnd
        before = objects(weed, prefix)
        rlog = root / "recovery-cairnd.log"
        with open(rlog, "wb") as err:
            recovery = subprocess.Popen(["bash", "-c", "exec " + starts[0].strip()], stdout=subprocess.DEVNULL,
                                        stderr=err, env=env)
        procs.append(recovery)
        wait_ready(values["CAIRN_SOCKET"], recovery, rlog)
        ran = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(script)], capture_output=True,
                             text=True, env=env, timeout=600)
        assert ran.returncode == 0, f"runbook step failed:\n{ran.stdout}\n{ran.stderr}"
        assert last["id"][:12] in ran.stdout  # the set it found is the lost host's last one
        assert os.listdir(home)  # the daemon kept its state where it was told to, nowhere else
        assert objects(weed, prefix) == before  # the recovery wrote nothing to the bucket

        restored = ArchivingServer(pgdata=work / "pgdata")  # the runbook's pg_ctl start, the test suite's way
        servers.append(restored)
        restored.start(timeout=120)
        restored.wait_promoted()
        assert restored.psql("SELECT count(*), min(id), max(id) FROM orders") == "1501|1|9999"  # to the end
        assert restored.psql("SELECT count(*) FROM orders WHERE note LIKE 'second %'") == "500"
        restored.psql("INSERT INTO orders VALUES (2000, 'written on the recovered server')")
        assert snapshot(str(work / "files")) == captured
        # restore_command reached the read-only daemon (--socket-group) when the new timeline was chosen
        text = restored.log_text()
        assert "selected new timeline ID: 2" in text and "unable to reach cairnd" not in text, text[-3000:]
    finally:
        for proc in procs:
            stop(proc)
        for srv in servers:
            srv.cleanup()
        subprocess.run(["rm", "-rf", str(root)], check=False)
