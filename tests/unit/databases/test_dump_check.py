"""What a dump database checks before its set's window opens, without a database server: the
`check` key of kind 'command' in the configuration, the check command's run (exit status,
stderr tail, bound, cancel), and capture_set with a real repository and a real cold window: a
failing check fails the set before any freeze hook."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest
from cairn.daemon.databases.dump import CommandEngine, DumpFailedError
from cairn.daemon.runtime.config import ConfigError, DatabaseConfig, QuiesceConfig, SourceConfig, load_config
from cairn.daemon.windows import capture
from cairn.errors import AbortedError, DeadlineError, FailedPreconditionError
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


def command_db(check: tuple[str, ...], timeout: float = 3600.0, dump: tuple[str, ...] = ("cat",)) -> DatabaseConfig:
    return DatabaseConfig("chat", kind="command", dump=dump, restore=("true",), check=check, timeout=timeout)


# -- configuration ---------------------------------------------------------------------------


def test_check_loads_as_an_argv_of_a_command_database(tmp_path):
    cfg = load(tmp_path, """
        [[database]]
        name = "chat"
        kind = "command"
        dump = ["mariadb-dump", "chat"]
        restore = ["mariadb", "{target}"]
        check = ["mariadb-admin", "ping"]
    """)
    assert cfg.database("chat").check == ("mariadb-admin", "ping")


@pytest.mark.parametrize("table,message", [
    ('kind = "pg_dump"\ndsn = "x"\ncheck = ["a"]', "database[0].check: only used with kind = 'command'"),
    ('dsn = "x"\npgdata = "/d"\ncheck = ["a"]', "database[0].check: only used with kind = 'command'"),
    ('kind = "command"\ndump = ["d"]\nrestore = ["r"]\ncheck = []',
     "database[0].check: expected a command as a non-empty list"),
    ('kind = "command"\ndump = ["d"]\nrestore = ["r"]\ncheck = "mariadb-admin ping"',
     "database[0].check: expected a command as a non-empty list"),
    ('kind = "command"\ndump = ["d", "{dir}"]\nrestore = ["r"]\ncheck = ["ls", "{dir}"]',
     "database[0].check[1]: {dir} and {target} have no value here"),
])
def test_a_wrong_check_names_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[[database]]\nname = "db"\n' + table + "\n")
    assert message in caught.value.message


# -- the check's run -------------------------------------------------------------------------


def test_a_passing_check_prepares_the_engine(tmp_path):
    marker = tmp_path / "checked"
    eng = CommandEngine(command_db(("sh", "-c", f'echo "$CAIRN_DATABASE" > {marker}')), "app", str(tmp_path))
    eng.prepare()
    assert marker.read_text() == "chat\n" and eng.run is None


def test_a_failing_check_raises_with_its_status_and_stderr_tail(tmp_path):
    eng = CommandEngine(command_db(("sh", "-c", "echo 'error: server gone' >&2; exit 1")), "app", str(tmp_path))
    with pytest.raises(DumpFailedError) as caught:
        eng.prepare()
    assert caught.value.message == "check of database 'chat' failed: sh exited with status 1: error: server gone"


def test_a_check_tool_that_is_not_installed_is_named(tmp_path):
    eng = CommandEngine(command_db(("cairn-test-no-such-check",)), "app", str(tmp_path))
    with pytest.raises(FailedPreconditionError) as caught:
        eng.prepare()
    assert caught.value.message == ("database 'chat': the tool 'cairn-test-no-such-check' is not installed "
                                    "(not found on PATH)")


def test_a_check_is_bounded_by_the_dumps_timeout_when_shorter(tmp_path):
    eng = CommandEngine(command_db(("sleep", "60"), timeout=0.5), "app", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(DeadlineError) as caught:
        eng.prepare()
    assert time.monotonic() - started < 10
    assert caught.value.message.startswith("check of database 'chat' did not finish within 0.5s: sleep was stopped")


def test_cancel_ends_a_running_check(tmp_path):
    eng = CommandEngine(command_db(("sleep", "60")), "app", str(tmp_path))
    threading.Timer(0.5, eng.cancel).start()
    started = time.monotonic()
    with pytest.raises(AbortedError) as caught:
        eng.prepare()
    assert time.monotonic() - started < 10 and caught.value.message == "backup cancelled"


# -- a set ---------------------------------------------------------------------------------------


def cold_source(tmp_path: Path) -> SourceConfig:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.txt").write_text("a\n")
    q = QuiesceConfig("cold", freeze=(("touch", str(tmp_path / "frozen")),),
                      thaw=(("touch", str(tmp_path / "thawed")),), timeout=10.0,
                      on_failure=(("sh", "-c", f'echo "$CAIRN_ERROR" > {tmp_path / "failed"}'),))
    return SourceConfig("app", (str(tmp_path / "data"),), database="chat", databases=("chat",), quiesce=q)


def take(tmp_path: Path, db: DatabaseConfig, cancel: threading.Event) -> Repository:
    src = cold_source(tmp_path)
    repo = Repository.init_local(str(tmp_path / "repo"))
    req = BackupRequest(source="app", paths=src.paths, level="full")
    capture.capture_set(repo, str(tmp_path / "state"), src, [db], req, None, cancel)
    return repo


def test_a_failing_check_fails_the_set_before_the_freeze_and_tells_on_failure(tmp_path):
    db = command_db(("sh", "-c", "echo 'server down' >&2; exit 1"), dump=("echo", "rows"))
    with pytest.raises(DumpFailedError, match="check of database 'chat' failed: sh exited with status 1"):
        take(tmp_path, db, threading.Event())
    assert not (tmp_path / "frozen").exists() and not (tmp_path / "thawed").exists()
    assert (tmp_path / "failed").read_text() == ("check of database 'chat' failed: sh exited with status 1: "
                                                 "server down\n")
    assert Repository.open_local(str(tmp_path / "repo")).list_sets() == []


def test_a_set_cancelled_during_its_check_ends_at_once_without_a_freeze(tmp_path):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(AbortedError, match="backup cancelled"):
        take(tmp_path, command_db(("sleep", "60"), dump=("echo", "rows")), cancel)
    assert time.monotonic() - started < 10  # not the check's own bound
    assert not (tmp_path / "frozen").exists()


def test_a_set_cancelled_before_its_preparation_runs_no_check(tmp_path):
    cancel = threading.Event()
    cancel.set()
    marker = tmp_path / "checked"
    started = time.monotonic()
    with pytest.raises(AbortedError, match="backup cancelled"):
        take(tmp_path, command_db(("sh", "-c", f"touch {marker}; exec sleep 60"), dump=("echo", "rows")), cancel)
    assert time.monotonic() - started < 10
    assert not marker.exists() and not (tmp_path / "frozen").exists()
