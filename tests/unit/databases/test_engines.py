"""The database boundary without servers: [[database]] kinds in the configuration, typed records
and their stored form, dump tool runs (exit status, stderr tail, timeout, kill), and a dump
stream stored from a pipe through a real repository (chunked, deduplicated, restored byte-exact)."""

from __future__ import annotations

import base64
import os
import random
import subprocess
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cairn.daemon.databases.dump import DumpFailedError, ToolRun, find_tool
from cairn.daemon.databases.engine import (
    DumpRecord,
    PhysicalRecord,
    TablespaceRecord,
    record_from_dict,
    records_of,
)
from cairn.daemon.runtime.config import ConfigError, load_config
from cairn.errors import CorruptionError, DeadlineError, FailedPreconditionError
from cairn.fsio.records import Data
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository

BASE = """
[repository]
path = "/var/lib/cairn/repo"

[daemon]
socket = "/run/cairn/cairnd.sock"
state_dir = "/var/lib/cairn/state"
"""


def load(tmp_path: Path, text: str):
    p = tmp_path / "cairn.toml"
    p.write_text(textwrap.dedent(BASE) + textwrap.dedent(text))
    return load_config(str(p))


# -- configuration ---------------------------------------------------------------------------


def test_dump_kinds_load_with_their_keys(tmp_path):
    cfg = load(tmp_path, """
        [[database]]
        name = "remote"
        kind = "pg_dump"
        dsn = "host=db.example user=backup dbname=portal"
        jobs = 4
        timeout = "20m"

        [[database]]
        name = "chat"
        kind = "command"
        dump = ["mongodump", "--archive"]
        restore = ["mongorestore", "--archive", "--uri={target}"]

        [[source]]
        name = "app"
        paths = ["/srv/app"]
        database = ["remote", "chat"]
    """)
    remote, chat = cfg.database("remote"), cfg.database("chat")
    assert (remote.kind, remote.jobs, remote.timeout, remote.pgdata) == ("pg_dump", 4, 1200.0, "")
    assert chat.kind == "command" and chat.dump == ("mongodump", "--archive") and chat.dsn == ""
    assert chat.restore[-1] == "--uri={target}"
    assert cfg.sources[0].databases == ("remote", "chat")


@pytest.mark.parametrize("table,message", [
    ('kind = "mysql"\ndsn = "x"', "database[0].kind: expected one of 'postgres', 'pg_dump', 'command', got 'mysql'"),
    ('kind = "pg_dump"', "database[0].dsn: required"),
    ('kind = "pg_dump"\ndsn = "x"\npgdata = "/d"', "database[0].pgdata: only used with kind = 'postgres'"),
    ('kind = "pg_dump"\ndsn = "x"\ndump = ["a"]', "database[0].dump: only used with kind = 'command'"),
    ('kind = "command"\nrestore = ["r"]', "database[0].dump: required: a command as a list of strings"),
    ('kind = "command"\ndump = ["d"]', "database[0].restore: required: a command as a list of strings"),
    ('kind = "command"\ndump = []\nrestore = ["r"]', "database[0].dump: expected a command as a non-empty list"),
    ('kind = "command"\ndsn = "x"\ndump = ["d"]\nrestore = ["r"]', "database[0].dsn: not used with kind = 'command'"),
    ('dsn = "x"\npgdata = "/d"\ntimeout = "5m"', "database[0].timeout: only used with the dump kinds"),
    ('dsn = "x"\npgdata = "/d"\njobs = 2', "database[0].jobs: only used with kind = 'pg_dump'"),
    ('kind = "pg_dump"\ndsn = "x"\njobs = 0', "database[0].jobs: expected a positive integer, got 0"),
])
def test_database_kind_errors_name_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[[database]]\nname = "db"\n' + table + "\n")
    assert message in caught.value.message


def test_two_dump_databases_of_one_source_need_no_data_directory(tmp_path):
    cfg = load(tmp_path, """
        [[database]]
        name = "a"
        kind = "pg_dump"
        dsn = "host=one"

        [[database]]
        name = "b"
        kind = "pg_dump"
        dsn = "host=two"

        [[source]]
        name = "app"
        paths = ["/srv/app"]
        database = ["a", "b"]
    """)
    assert cfg.sources[0].databases == ("a", "b")


# -- records ---------------------------------------------------------------------------------


def physical() -> PhysicalRecord:
    return PhysicalRecord(
        name="appdb", attachment="db:appdb", start_lsn="0/2000028", stop_lsn="0/2000100", timeline=1,
        system_identifier="7412345678901234567", server_version="15.18", server_version_num=150018,
        wal_segment_size=16 << 20, labelfile=b"START WAL LOCATION: 0/2000028\n\x00\xff", spcmapfile=b"",
        restore_point_name="cairn-x", restore_point_lsn="0/2000200", wal_first="000000010000000000000002",
        wal_last="000000010000000000000002", started=1.5, stopped=2.5,
        tablespaces=(TablespaceRecord(16390, "ts", "/srv/ts", "db:appdb:tblspc:16390"),))


def test_records_round_trip_through_their_stored_form():
    p = physical()
    d = p.to_dict()
    assert d["kind"] == "postgres" and base64.b64decode(d["labelfile"]) == p.labelfile
    assert record_from_dict(d) == p and record_from_dict(d).to_dict() == d
    dump = DumpRecord(name="chat", kind="command", attachment="db:chat", layout="stream", tool="mariadb-dump",
                      started=1.0, stopped=2.0, bytes=123, stream_file="chat.dump")
    assert record_from_dict(dump.to_dict()) == dump


def test_an_older_set_without_kind_reads_as_a_physical_record():
    d = physical().to_dict()
    del d["kind"]

    class FakeSet:
        extra = {"database": d}  # the single record of sets before several databases per source

    (rec,) = records_of(FakeSet())  # type: ignore[arg-type]
    assert isinstance(rec, PhysicalRecord) and rec.stop_lsn == "0/2000100"


def test_a_record_of_an_unknown_kind_is_corruption_not_a_guess():
    with pytest.raises(CorruptionError, match="unknown kind 'tape'"):
        record_from_dict({"name": "x", "kind": "tape"})


# -- tool runs -------------------------------------------------------------------------------


def test_failing_tool_raises_with_exit_status_and_stderr_tail():
    run = ToolRun(["sh", "-c", "for i in $(seq 1 500); do echo noise $i >&2; done; echo 'fatal: no such table' >&2;"
                               " exit 4"], "db", 30)
    run.start()
    with pytest.raises(DumpFailedError) as caught:
        run.finish("dump")
    msg = caught.value.message
    assert msg.startswith("dump of database 'db' failed: sh exited with status 4: ")
    assert msg.endswith("fatal: no such table") and "noise 1 |" not in msg  # the tail, bounded
    run.close()


def test_timeout_kills_the_tools_process_group():
    run = ToolRun(["sh", "-c", "sleep 60 & echo $! >&2; wait"], "db", 0.5)
    run.start()
    with pytest.raises(DeadlineError, match="did not finish within 0.5s: sh was stopped"):
        run.finish("dump")
    child = int(run.stderr_tail().split()[0])
    end = time.monotonic() + 10
    while True:  # the background child of the tool dies with its group
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}/stat").exists() else "Z"
        if state == "Z":
            break
        assert time.monotonic() < end, "the tool's child outlived the timeout"
        time.sleep(0.05)
    run.close()


def test_kill_from_another_thread_ends_a_running_tool():
    run = ToolRun(["sleep", "60"], "db", None)
    run.start()
    threading.Timer(0.2, run.kill).start()
    with pytest.raises(DumpFailedError, match="sleep was killed by signal 9"):
        run.finish("dump")


def test_a_directory_is_not_a_dump_tool(tmp_path):
    with pytest.raises(FailedPreconditionError) as caught:
        find_tool(str(tmp_path), "chat")
    assert caught.value.message == f"database 'chat': the tool '{tmp_path}' is not an executable file"
    script = tmp_path / "dump.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(FailedPreconditionError, match="is not an executable file"):
        find_tool(str(script), "chat")
    script.chmod(0o755)
    assert find_tool(str(script), "chat") == str(script)


# -- a dump stream through a real repository ---------------------------------------------------


def _stream_set(repo: Repository, src: Path, data: bytes, level: str):
    req = BackupRequest(source="s", paths=(str(src),), level=level)
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    feeder = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()))  # type: ignore
    feeder.start()
    with repo.session(req) as sess:
        size = sess.attach_stream("db:x", proc.stdout.fileno(), "x.dump")  # type: ignore[union-attr]
        s = sess.commit()
    feeder.join()
    proc.wait()
    return size, s


def test_stream_from_a_pipe_is_stored_chunked_and_deduplicated(tmp_path):
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    data = rng.randbytes(24 << 20)
    size, s1 = _stream_set(repo, src, data, "full")
    assert size == len(data) and s1.attachments["db:x"]["bytes_total"] == len(data)
    restored = b"".join(r.data for r in repo.restore_stream(s1, attachment="db:x") if isinstance(r, Data))
    assert restored == data
    grown = data[:9 << 20] + b"inserted rows\n" * 100 + data[9 << 20:]
    _, s2 = _stream_set(repo, src, grown, "incremental")
    assert s2.stats.bytes_added < len(data) // 8  # only the chunks around the insertion are new
    restored = b"".join(r.data for r in repo.restore_stream(s2, attachment="db:x") if isinstance(r, Data))
    assert restored == grown
    _, s3 = _stream_set(repo, src, b"", "incremental")
    assert s3.attachments["db:x"]["bytes_total"] == 0
    assert repo.check(read_data=True).ok
    repo.close()


def test_replace_keeps_records_frozen():
    with pytest.raises(AttributeError):
        physical().name = "other"  # type: ignore[misc]
    assert replace(physical(), name="b").name == "b"


# -- the command engine and its restore, with real processes and a real repository -----------


def _config(tmp_path: Path, dump: list[str], restore: list[str]):
    import json

    return load(tmp_path, f"""
        [[database]]
        name = "db"
        kind = "command"
        dump = {json.dumps(dump)}
        restore = {json.dumps(restore)}
    """)


def _capture(tmp_path: Path, cfg, repo: Repository):
    from cairn.daemon.databases import engine_for

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    eng = engine_for(cfg.database("db"), "app", str(tmp_path / "state"))
    eng.prepare()
    eng.start("label")
    try:
        with repo.session(BackupRequest(source="app", paths=(str(src),), level="full")) as sess:
            eng.capture(sess, lambda: None)
            eng.stop(10)
            rec = eng.describe()
            sess.describe_attachment(rec.attachment, "database", rec.to_dict())
            s = sess.commit({"databases": [rec.to_dict()]})
    finally:
        eng.close()
    return rec, s


def test_directory_dump_is_stored_as_a_tree_and_restored_through_dir(tmp_path):
    from cairn.daemon.databases.restore import restore_dump

    out = tmp_path / "restored.txt"
    dump = ["sh", "-c", "echo one > {dir}/one.txt; mkdir {dir}/sub; echo two > {dir}/sub/two.txt"]
    restore = ["sh", "-c", f"cat {{dir}}/one.txt {{dir}}/sub/two.txt > {out}; echo $CAIRN_TARGET_DSN >> {out}"]
    cfg = _config(tmp_path, dump, restore)
    cfg = replace(cfg, daemon=replace(cfg.daemon, state_dir=str(tmp_path / "state")))
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    rec, s = _capture(tmp_path, cfg, repo)
    assert rec.layout == "directory" and rec.bytes == len("one\ntwo\n")
    assert {e.path for e in repo.list_tree(s)} == set()  # the source itself was empty
    dumps = tmp_path / "state" / "dumps"
    assert not dumps.exists() or os.listdir(dumps) == [], "the run's own work directory is gone"
    assert s.attachments["db:db"]["database"]["layout"] == "directory"
    stale = tmp_path / "state" / "restores" / "db.999999999.abc"  # left by a daemon killed mid-restore
    (stale / "dump").mkdir(parents=True)
    result = restore_dump(repo, cfg, s, "db", "target-x")
    assert out.read_text() == "one\ntwo\ntarget-x\n" and result.tool == "sh"
    assert os.listdir(tmp_path / "state" / "restores") == []
    repo.close()


def test_stream_restore_feeds_the_stored_dump_and_a_failing_restore_says_why(tmp_path):
    from cairn.daemon.databases.restore import restore_dump

    out = tmp_path / "fed.bin"
    payload = os.urandom(3 << 20)
    (tmp_path / "payload.bin").write_bytes(payload)
    cfg = _config(tmp_path, ["cat", str(tmp_path / "payload.bin")], ["sh", "-c", f"cat > {out}"])
    cfg = replace(cfg, daemon=replace(cfg.daemon, state_dir=str(tmp_path / "state")))
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    rec, s = _capture(tmp_path, cfg, repo)
    assert rec.layout == "stream" and rec.bytes == len(payload)
    result = restore_dump(repo, cfg, s, "db", "ignored")
    assert out.read_bytes() == payload and result.bytes == len(payload)

    bad = replace(cfg, databases=(replace(cfg.databases[0], restore=("sh", "-c", "echo 'access denied' >&2; exit 7")),))
    with pytest.raises(DumpFailedError, match="restore of database 'db' failed: sh exited with status 7: access"):
        restore_dump(repo, bad, s, "db", "x")
    repo.close()


@pytest.mark.parametrize("args,message", [
    ((), "give one of --target DIR (a PostgreSQL base backup) and --target-dsn DSN (a dump)"),
    (("--target", "/tmp/x", "--target-dsn", "db"), "give one of --target DIR"),
    (("--target-dsn", "db", "--target-lsn", "0/1"),
     "--target-time, --target-lsn, --target-end and --accept-wal-gap need a base backup"),
])
def test_restore_db_usage_errors_exit_2_before_any_call(tmp_path, args, message):
    import sys

    cairn = os.path.join(os.path.dirname(sys.executable), "cairn")
    r = subprocess.run([cairn, "--socket", str(tmp_path / "none.sock"), "restore-db", "latest", "--database", "d",
                        *args], capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1
