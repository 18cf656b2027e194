"""Configuration of consistent sets: several databases, capture_first, anchored excludes, hook
stacks, wal_timeout and tags of scheduled sets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cairn.daemon.runtime.config import ConfigError, load_config
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository


def write(tmp_path: Path, body: str) -> str:
    p = tmp_path / "cairnd.toml"
    p.write_text('[repository]\npath = "repo"\n\n' + body)
    return str(p)


DBS = """
[[database]]
name = "jcr"
dsn = "host=/x"
pgdata = "/pg/jcr"
wal_timeout = "30s"

[[database]]
name = "idm"
dsn = "host=/x"
pgdata = "/pg/idm"
"""


def test_database_list_and_single_name(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DBS + """
[[source]]
name = "a"
paths = ["/srv/a"]
database = ["jcr", "idm"]

[[source]]
name = "b"
paths = ["/srv/b"]
database = "idm"
"""))
    a, b = cfg.sources
    assert a.databases == ("jcr", "idm") and a.database == "jcr"
    assert b.databases == ("idm",) and b.database == "idm"
    assert cfg.database("jcr").wal_timeout == 30.0 and cfg.database("idm").wal_timeout == 600.0


@pytest.mark.parametrize("value,message", [
    ('["jcr", "nope"]', "source[0].database[1]: no [[database]] is named 'nope'"),
    ('["jcr", "jcr"]', "source[0].database[1]: database 'jcr' is named twice"),
    ("[]", "source[0].database: expected a database name or a list of names"),
])
def test_bad_database_lists(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, DBS + f'[[source]]\nname = "a"\npaths = ["/srv/a"]\ndatabase = {value}\n'))
    assert message in e.value.message


def test_two_databases_of_one_cluster_in_one_source_are_refused(tmp_path: Path) -> None:
    body = DBS.replace('"/pg/idm"', '"/pg/jcr"')
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, body + '[[source]]\nname = "a"\npaths = ["/srv/a"]\ndatabase = ["jcr", "idm"]\n'))
    assert "are the same server" in e.value.message


def test_capture_first_must_lie_below_a_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, DBS + '[[source]]\nname = "a"\npaths = ["/srv/a"]\ndatabase = "jcr"\n'
                                          'capture_first = ["/srv/b/index"]\n'))
    assert "capture_first[0]: '/srv/b/index' is not below one of the source's paths" in e.value.message


def test_tags_of_scheduled_sets(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[[source]]\nname = "a"\npaths = ["/srv/a"]\n'
                                      'tags = { full = ["weekly-%G-W%V"], incremental = ["daily-%Y-%m-%d", "x"] }\n'))
    src = cfg.sources[0]
    when = time.mktime((2026, 3, 4, 12, 0, 0, 0, 0, -1))
    assert src.scheduled_tags("incremental", when) == ("daily-2026-03-04", "x")
    assert src.scheduled_tags("full", when) == ("weekly-2026-W10",)
    assert src.scheduled_tags("differential", when) == ()
    every = load_config(write(tmp_path, '[[source]]\nname = "a"\npaths = ["/srv/a"]\ntags = ["s-%H"]\n'))
    assert every.sources[0].scheduled_tags("differential", when) == ("s-12",)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, '[[source]]\nname = "a"\npaths = ["/srv/a"]\ntags = ["a b"]\n'))
    assert "must not be empty or hold spaces" in e.value.message


def test_hooks_and_after_hooks(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[[source]]\nname = "a"\npaths = ["/srv/a"]\n'
                                      'quiesce = { mode = "cold", hooks = [{ freeze = ["stop"], thaw = ["start"] },'
                                      ' { freeze = [["snap"]], timeout = "5s", required = false }],'
                                      ' on_success = ["ok"], on_failure = [["bad", "x"]] }\n'))
    q = cfg.sources[0].quiesce
    assert [(lv.freeze, lv.thaw, lv.timeout, lv.required) for lv in q.levels()] == [
        ((("stop",),), (("start",),), 60.0, True), ((("snap",),), (), 5.0, False)]
    assert q.on_success == (("ok",),) and q.on_failure == (("bad", "x"),)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, '[[source]]\nname = "a"\npaths = ["/srv/a"]\n'
                                    'quiesce = { mode = "cold", freeze = ["a"], hooks = [{ freeze = ["b"] }] }\n'))
    assert "give either hooks or freeze/thaw" in e.value.message


def test_an_exclude_anchored_to_one_path_applies_under_that_path_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "cache").mkdir(parents=True)
        (root / "cache" / "x").write_text("x")
        (root / "keep.tmp").write_text("t")
    cfg = load_config(write(tmp_path, f'[[source]]\nname = "s"\npaths = ["{a}", "{b}"]\n'
                                      f'exclude = ["*.tmp", "{a}/cache/"]\n'))
    common, anchored = cfg.sources[0].path_excludes()
    assert common == ("*.tmp",) and anchored == ((str(a), ("/cache/",)),)
    req = BackupRequest(source="s", paths=(str(a), str(b)), excludes=common, root_excludes=anchored)
    repo = Repository.init_local(str(tmp_path / "repo"))
    s = repo.backup(req)
    names = {e.path for e in repo.list_tree(s, "", recursive=True)}
    assert "b/cache/x" in names and "a/cache" not in names
    assert not any(n.endswith(".tmp") for n in names)


def test_a_scheduled_set_carries_its_tags_and_a_requested_one_does_not(tmp_path: Path) -> None:
    from cairn.daemon.operations.service import CairnService

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    cfg = load_config(write(tmp_path, f'[daemon]\nstate_dir = "{tmp_path}/state"\n\n[[source]]\nname = "a"\n'
                                      f'paths = ["{tmp_path}/data"]\ntags = {{ full = ["daily-%Y-%m-%d"] }}\n'))
    repo = Repository.init_local(cfg.repository.path)
    service = CairnService(cfg, repo)
    service.submit("a", "full", "schedule")
    assert service.wait_idle(60)
    service.start_backup("a", "full", reason="request").wait(60)
    scheduled, requested = repo.list_sets("a")
    assert scheduled.tags == (time.strftime("daily-%Y-%m-%d"),)
    assert requested.tags == ()


def test_cairn_sets_shows_databases_and_tags() -> None:
    import json

    from cairn.client import render
    from cairn.proto.cairn.v1 import cairn_pb2 as pb

    s = pb.SetInfo(id="ab" * 32, source="a", level="full", tags=["daily-2026-03-04"],
                   extra_json=json.dumps({"databases": [{"name": "jcr"}, {"name": "idm"}],
                                          "database": {"name": "jcr"}}))
    row = dict(zip(render.SET_COLUMNS, render.set_row(s), strict=True))
    assert row["DATABASES"] == "jcr,idm" and row["TAGS"] == "daily-2026-03-04"
    old = pb.SetInfo(id="cd" * 32, extra_json=json.dumps({"database": {"name": "appdb"}}))
    assert render.set_databases(old) == ["appdb"]
