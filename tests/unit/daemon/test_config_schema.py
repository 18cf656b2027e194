"""The declared schema (daemon/runtime/config_schema.py): every wrong value of every key of the shipped
example gives one line that names that key and says what was expected, never the schema
library's own wording; and the messages of rules that had no test of their own."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cairn.daemon.runtime import config_schema
from cairn.daemon.runtime.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[3] / "systemd" / "cairnd.toml.example"
WRONG = [5, "", "x y", True, 0.5, [1], [], {"a": 1}]


def leaves(data: Any, path: tuple = ()) -> list[tuple]:
    """The path of every value in the parsed example, and of the first item of every list."""
    if isinstance(data, dict):
        return [p for key, value in data.items() for p in leaves(value, (*path, key))]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return [p for index, item in enumerate(data) for p in leaves(item, (*path, index))]
    if isinstance(data, list) and data:
        return [path, *leaves(data[0], (*path, 0))]
    return [path]


def key_of(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def toml(value: Any) -> str:
    """`value` as TOML: tables inline, integers in decimal (a quick writer for these tests)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def table_of(path: tuple) -> tuple:
    """The path of the table a value (or an item of a list in it) is in."""
    parts = list(path)
    while parts and isinstance(parts[-1], int):
        parts.pop()
    return tuple(parts[:-1])


def example() -> dict:
    with open(EXAMPLE, "rb") as handle:
        return tomllib.load(handle)


def test_every_wrong_value_of_every_key_names_that_key():
    base = example()
    paths = leaves(base)
    assert len(paths) > 80  # the example shows every key
    refused = 0
    for path in paths:
        for wrong in WRONG:
            data = copy.deepcopy(base)
            table = data
            for part in path[:-1]:
                table = table[part]
            table[path[-1]] = wrong
            text = "\n".join(f"{json.dumps(k)} = {toml(v)}" for k, v in data.items()) + "\n"
            try:
                parse_config(text.encode(), "c.toml", "/etc/cairn")
            except ConfigError as exc:
                refused += 1
                message = exc.message
                assert "\n" not in message and "Input should" not in message and "pydantic" not in message
                # the error names the key changed, or (a rule between keys) a key of the same table
                where = key_of(path)
                table_key = key_of(table_of(path))
                assert exc.key.startswith(where) or exc.key.startswith(table_key) or (
                    message.startswith(f"invalid config 'c.toml': unknown key '{table_key}")), (where, wrong, message)
                assert exc.detail and (exc.key == "" or message.endswith(f"{exc.key}: {exc.detail}"))
    assert refused > len(paths) * 4  # most wrong values are refused


@pytest.mark.parametrize("text, message", [
    ("source = [1]", "source: expected [[source]] tables, got [1]"),
    ("database = 5", "database: expected [[database]] tables, got 5"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nquiesce = { mode = 'cold', hooks = [5] }",
     "source[0].quiesce.hooks: expected [[source[0].quiesce.hooks]] tables, got [5]"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nquiesce = { mode = 'cold', hooks = [{ frz = 1 }] }",
     "unknown key 'source[0].quiesce.hooks[0].frz'"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nquiesce = { mode = 'cold', hooks = [{ timeout = 0 }] }",
     "source[0].quiesce.hooks[0].timeout: expected a duration above zero, got 0"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nquiesce = { mode = 'cold', hooks = [{ freeze = ['a'] }], "
     "freeze = ['x'] }", "source[0].quiesce.hooks: give either hooks or freeze/thaw, not both"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nquiesce = 5", "source[0].quiesce: expected a table, got 5"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nquiesce = { mode = 'cold', on_failure = 3 }",
     "source[0].quiesce.on_failure: expected a command as a list of strings, or a list of commands, got 3"),
    ("[[source]]\nname = 'a'\npaths = [1]", "source[0].paths[0]: expected a non-empty string, got 1"),
    ("[[source]]\nname = 'a'\npaths = 'x'", "source[0].paths: expected a list of strings, got 'x'"),
    ("[[source]]\nname = 5\npaths = ['/a']", "source[0].name: expected a non-empty string, got 5"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\ntags = { full = ['a'], weekly = ['b'] }",
     "source[0].tags.weekly: unknown level: expected full, differential or incremental"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\ntags = ['a b']",
     "source[0].tags[0]: a tag must not be empty or hold spaces, got 'a b'"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\ntags = 'x'",
     "source[0].tags: expected a list of tags or a table of lists per level, got 'x'"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\ntags = { full = [1] }",
     "source[0].tags.full[0]: expected a non-empty string, got 1"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nkeep = { lats = 3 }",
     "source[0].keep: lats: unknown key (expected one of"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\nschedule = { full = 5 }",
     "source[0].schedule.full: expected a non-empty string, got 5"),
    ("[[source]]\nname = 'a'\npaths = ['/a']\ncapture_first = ['/a/x']",
     "source[0].capture_first: needs a database or a quiesce window to be captured before"),
    ("[[database]]\ndsn = 'x'\npgdata = '/p'", "database[0].name: required"),
    ("[[database]]\nname = 'd'\ndsn = 'x'", "database[0].pgdata: required"),
    ("[[database]]\nname = 'd'\nkind = 'command'\ndump = ['a', 1]\nrestore = ['b']",
     "database[0].dump: expected a command as a non-empty list of strings, got ['a', 1]"),
    ("[[database]]\nname = 'd'\nkind = 'pg_dump'\ndsn = 'x'\njobs = true",
     "database[0].jobs: expected a positive integer, got true"),
    ("[[database]]\nname = 'd'\nkind = 5", "database[0].kind: expected one of 'postgres', 'pg_dump', 'command', got 5"),
    ("[daemon]\nmax_wal_size = 2.5", "daemon.max_wal_size: expected a positive integer, got 2.5"),
    # a size in MiB where bytes are meant: every WAL push would be refused from the first one on
    ("[daemon]\nmax_wal_size = 16", "daemon.max_wal_size: expected at least 1048576 bytes (1 MiB"),
    ("[daemon]\nhost = 'a b'", "daemon.host: expected a host name without spaces, got 'a b'"),
    ("[daemon]\nmetrics = 'nowhere'", "daemon.metrics: expected an address like '127.0.0.1:7443', got 'nowhere'"),
    ("daemon = 5", "daemon: expected a table, got 5"),
    ("[daemon]\nlog_level = 5", "daemon.log_level: expected one of 'debug', 'info', 'warning', 'error', got 5"),
])
def test_messages_of_the_schema(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n[repository]\npath = '/r'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert message in caught.value.message, caught.value.message
    assert caught.value.message.startswith(f"invalid config '{path}': ")


@pytest.mark.parametrize("text, message", [
    ("[repository]\npath = '/r'\ngc = 5", "repository.gc: expected a non-empty string, got 5"),
    ("[repository]\npath = '/r'\nwal_keep = 'soon'", "repository.wal_keep: expected a duration like '5m', got 'soon'"),
    ("[repository]\npath = 5", "repository.path: expected a non-empty string, got 5"),
    ("[repository]\n", "repository.path: required"),
    ("repository = 5", "repository: expected a table, got 5"),
    ("[repository]\npath = 's3://b/p'\npath_style = 'yes'", "repository.path_style: expected true or false, got 'yes'"),
    ("[repository]\npath = '/r'\nregion = 'x'", "repository.region: needs an s3:// repository.path"),
])
def test_messages_of_the_repository_table(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert message in caught.value.message, caught.value.message


def test_a_database_named_in_a_list_of_one_is_named_by_its_index(tmp_path):
    base = "[repository]\npath = '/r'\n[[source]]\nname = 'a'\npaths = ['/a']\ndatabase = {}\n"
    for value, key in (("['nope']", "source[0].database[0]"), ("'nope'", "source[0].database")):
        path = tmp_path / "c.toml"
        path.write_text(base.format(value))
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        assert caught.value.key == key and caught.value.detail == "no [[database]] is named 'nope'"


def test_a_misspelt_key_is_reported_before_other_problems_of_its_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[repository]\npath = '/r'\n[daemon]\nread_only = 'yes'\nsockt = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.message.endswith("unknown key 'daemon.sockt' (line 5)")


def test_the_key_lists_are_the_schemas_fields():
    assert config_schema.DAEMON_KEYS == tuple(config_schema.DaemonTable.model_fields)
    assert "socket_mode" in config_schema.DAEMON_KEYS and "kind" in config_schema.DATABASE_KEYS
    assert config_schema.TOP_KEYS == ("repository", "daemon", "source", "database")
