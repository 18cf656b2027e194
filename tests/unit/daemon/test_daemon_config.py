"""Configuration loading: every key, every validation error, and the embedded defaults."""

from __future__ import annotations

import os
import textwrap
import tomllib
from pathlib import Path

import pytest
from cairn.daemon.runtime import config as config_module
from cairn.daemon.runtime.config import (
    Config,
    ConfigError,
    DaemonConfig,
    QuiesceConfig,
    config_from_args,
    load_config,
)
from cairn.store.errors import InvalidArgumentError, NotFoundError

EXAMPLE = Path(__file__).resolve().parents[3] / "systemd" / "cairnd.toml.example"

MINIMAL = """
[repository]
path = "/var/lib/cairn/repo"

[daemon]
socket = "/run/cairn/cairnd.sock"
state_dir = "/var/lib/cairn/state"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cairn.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(tmp_path: Path, extra: str = "", base: str = MINIMAL) -> Config:
    return load_config(write(tmp_path, textwrap.dedent(base) + textwrap.dedent(extra)))


def test_minimal_file_gets_defaults(tmp_path):
    cfg = load(tmp_path)
    assert cfg.repository.path == "/var/lib/cairn/repo"
    assert cfg.daemon == DaemonConfig(socket="/run/cairn/cairnd.sock", state_dir="/var/lib/cairn/state")
    assert cfg.daemon.socket_mode == 0o660 and cfg.daemon.shutdown_timeout == 30.0
    assert cfg.sources == () and cfg.databases == ()
    assert cfg.path == str(tmp_path / "cairn.toml")


def test_full_source_and_lookup(tmp_path):
    cfg = load(tmp_path, """
        [[source]]
        name = "app"
        paths = ["/srv/app/data", "data2"]
        exclude = ["*.tmp"]
        rpo = "5m"
        schedule = { full = "0 3 * * 0", incremental = "*/15 * * * *" }
        database = "appdb"
        one_file_system = true
        [source.quiesce]
        mode = "cold"
        freeze = ["systemctl", "stop", "app"]
        thaw = [["a"], ["b", "c"]]
        timeout = 10
        max_window = "1h"
        required = false

        [[database]]
        name = "appdb"
        dsn = "host=/run/postgresql"
        pgdata = "/var/lib/postgresql/15/main"
    """)
    source = cfg.source("app")
    # Relative paths are relative to the config file's directory.
    assert source.paths == ("/srv/app/data", str(tmp_path / "data2"))
    assert source.rpo == 300.0 and source.watch is True and source.one_file_system is True
    assert source.schedule == {"full": "0 3 * * 0", "incremental": "*/15 * * * *"}
    assert source.quiesce == QuiesceConfig(mode="cold", freeze=(("systemctl", "stop", "app"),),
                                           thaw=(("a",), ("b", "c")), timeout=10.0, max_window=3600.0,
                                           required=False)
    assert cfg.database("appdb").pgdata == "/var/lib/postgresql/15/main"
    assert cfg.schedules() == {"app": {"full": "0 3 * * 0", "incremental": "*/15 * * * *"}}
    with pytest.raises(NotFoundError, match="unknown source 'nope'"):
        cfg.source("nope")
    with pytest.raises(NotFoundError, match="unknown database 'nope'"):
        cfg.database("nope")


def test_tcp_listener_and_metrics(tmp_path):
    cfg = load(tmp_path, """
        listen = "0.0.0.0:7443"
        tls_cert = "tls/cert.pem"
        tls_key = "/etc/cairn/key.pem"
        token_file = "/etc/cairn/token"
        metrics = "[::1]:9721"
        socket_mode = "0640"
        log_level = "debug"
        backstop_interval = 0
    """)
    assert cfg.daemon.listen == "0.0.0.0:7443"
    assert cfg.daemon.tls_cert == str(tmp_path / "tls" / "cert.pem")
    assert cfg.daemon.metrics == "[::1]:9721"
    assert cfg.daemon.socket_mode == 0o640
    assert cfg.daemon.backstop_interval == 0.0


SOURCE = """
[[source]]
name = "app"
paths = ["/srv/app"]
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        ("sockt = 'x'", "unknown key 'daemon.sockt'"),
        ("shutdown_timeout = 'soon'", "daemon.shutdown_timeout: expected a duration like '5m', got 'soon'"),
        ("shutdown_timeout = -1", "daemon.shutdown_timeout: expected a duration like '5m', got -1"),
        ("read_only = 'yes'", "daemon.read_only: expected true or false, got 'yes'"),
        ("max_watches = 0", "daemon.max_watches: expected a positive integer, got 0"),
        ("log_level = 'loud'", "daemon.log_level: expected one of 'debug', 'info', 'warning', 'error', got 'loud'"),
        ("socket_mode = '0999'", "daemon.socket_mode: expected a file mode"),
        ("listen = '0.0.0.0:7443'", "daemon.tls_cert: required when daemon.listen is set"),
        ("listen = '0.0.0.0:7443'\ntls_cert = 'c'\ntls_key = 'k'", "daemon.token_file: required when daemon.listen"),
        ("listen = 'nowhere'\ntls_cert = 'c'\ntls_key = 'k'\ntoken_file = 't'",
         "daemon.listen: expected an address like '127.0.0.1:7443', got 'nowhere'"),
        ("listen = '1.2.3.4:70000'\ntls_cert = 'c'\ntls_key = 'k'\ntoken_file = 't'", "daemon.listen: expected a port"),
        ("metrics = '0.0.0.0:9721'", "daemon.metrics: expected a loopback address like '127.0.0.1:9721'"),
        ("metrics = 'example.com:9721'", "daemon.metrics: expected a loopback address"),
        ("socket_group = ''", "daemon.socket_group: expected a non-empty string, got ''"),
        ("tls_key = 7", "daemon.tls_key: expected a non-empty string, got 7"),
    ],
)
def test_daemon_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    assert caught.value.message.startswith(f"invalid config '{tmp_path / 'cairn.toml'}': ")
    assert message in caught.value.message
    assert isinstance(caught.value, InvalidArgumentError)


def test_error_message_format(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, SOURCE + "rpo = 'soon'\n")
    path = tmp_path / "cairn.toml"
    line = path.read_text().splitlines().index("rpo = 'soon'") + 1
    assert caught.value.message == (f"invalid config '{path}': source[0].rpo: expected a duration like '5m', "
                                    f"got 'soon' (line {line})")
    assert caught.value.key == "source[0].rpo" and caught.value.line == line


# the example configuration, every table form it uses: the key's line, or the line of the nearest
# part written (an element of an inline array: its key's line)
EXAMPLE_LINES = [
    ("repository.gc", 'gc = "0 4 * * *"'),
    ("daemon.host", 'host = "app1"'),
    ("source[0].keep", "keep = { last = 7"),
    ("source[1].paths[0]", 'paths = ["/srv/portal/content"]'),
    ("source[1].tags.full[0]", "tags = { full = ["),
    ("source[0].quiesce.timeout", 'quiesce = { mode = "cold"'),
    ("source[1].quiesce.hooks[1].required", 'quiesce = { mode = "hot"'),
    ("source[1].quiesce.on_failure", "  ], on_success = "),
    ("database[4].check", 'check = ["mariadb-admin", "ping"]'),
    ("daemon", "[daemon]"),
]


@pytest.mark.parametrize("key, text", EXAMPLE_LINES)
def test_the_line_a_key_is_written_on(key, text):
    from cairn.daemon.runtime.config_lines import line_of

    lines = EXAMPLE.read_text().splitlines()
    line = line_of("\n".join(lines), key)
    assert line is not None and lines[line - 1].startswith(text), (key, line)


@pytest.mark.parametrize("key", ["database[9].name", "source[7]", "nope.x", "", "source[0].a b"])
def test_a_key_the_file_does_not_write_has_no_line(key):
    from cairn.daemon.runtime.config_lines import line_of

    assert line_of(EXAMPLE.read_text(), key) is None


def test_a_key_in_a_sub_table_and_an_array_of_tables(tmp_path):
    path = write(tmp_path, MINIMAL + SOURCE + "[source.quiesce]\nmode = 'cold'\ntimeout = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == Path(path).read_text().splitlines().index("timeout = 'x'") + 1
    second = MINIMAL + SOURCE + "[[source]]\nname = 'b'\npaths = ['/b']\nwatch = 2\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, second))
    assert caught.value.message.startswith(f"invalid config '{tmp_path / 'cairn.toml'}': source[1].watch: ")
    assert caught.value.line == second.splitlines().index("watch = 2") + 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ("pathz = []", "unknown key 'source[0].pathz'"),
        ("rpo = '0s'", "source[0].rpo: expected a duration above zero"),
        ("rpo = '5m'\nwatch = false", "source[0].rpo: needs watch = true"),
        ("database = 'nodb'", "source[0].database: no [[database]] is named 'nodb'"),
        ("schedule = { full = '0 3 * *' }", "source[0].schedule.full: invalid cron expression '0 3 * *': expected 5"),
        ("schedule = { full = '0 25 * * *' }", "source[0].schedule.full: invalid cron expression '0 25 * * *': hour"),
        ("schedule = { weekly = '0 3 * * 0' }", "source[0].schedule.weekly: unknown level"),
        ("schedule = 'hourly'", "source[0].schedule: expected a table, got 'hourly'"),
        ("exclude = '*.tmp'", "source[0].exclude: expected a list of strings, got '*.tmp'"),
        ("exclude = [1]", "source[0].exclude[0]: expected a non-empty string, got 1"),
        ("watch = 1", "source[0].watch: expected true or false, got 1"),
        ("quiesce = { freeze = ['x'] }", "source[0].quiesce.mode: required: 'cold' or 'hot'"),
        ("quiesce = { mode = 'warm' }", "source[0].quiesce.mode: expected one of 'cold', 'hot', got 'warm'"),
        ("quiesce = { mode = 'cold', freeze = 'stop' }", "source[0].quiesce.freeze: expected a command"),
        ("quiesce = { mode = 'cold', thaw = [['a'], []] }", "source[0].quiesce.thaw[1]: expected a command"),
        ("quiesce = { mode = 'cold', timeout = 'long' }", "source[0].quiesce.timeout: expected a duration"),
        ("quiesce = { mode = 'cold', hook = [] }", "unknown key 'source[0].quiesce.hook'"),
        ("aux_paths = ['/srv/idx']", "source[0].aux_paths: only used with quiesce mode 'hot'"),
    ],
)
def test_source_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, SOURCE + extra + "\n")
    assert message in caught.value.message


@pytest.mark.parametrize(
    "text, message",
    [
        (MINIMAL + SOURCE + SOURCE, "source[1].name: duplicate source name 'app'"),
        (MINIMAL + "[[source]]\npaths = ['/x']\n", "source[0].name: required"),
        (MINIMAL + "[[source]]\nname = 'a b'\npaths = ['/x']\n", "source[0].name: expected a name of letters"),
        (MINIMAL + "[[source]]\nname = 'a'\n", "source[0].paths: required"),
        (MINIMAL + "[[source]]\nname = 'a'\npaths = []\n", "source[0].paths: expected at least one path"),
        (MINIMAL + "[[source]]\nname = 'a'\npaths = ['/x', '/x/']\n", "source[0].paths[1]: duplicate path '/x'"),
        (MINIMAL + "[[source]]\nname = 'a'\npaths = ['/a/data', '/b/data']\n",
         "source[0].paths: '/a/data' and '/b/data' share the name 'data'"),
        (MINIMAL + "[[database]]\nname = 'd'\ndsn = 'x'\npgdata = '/p'\n" * 2,
         "database[1].name: duplicate database name 'd'"),
        (MINIMAL + "[[database]]\nname = 'd'\npgdata = '/p'\n", "database[0].dsn: required"),
        (MINIMAL + "[[database]]\nname = 'd'\ndsn = 'x'\npgdata = '/p'\nport = 5\n", "unknown key 'database[0].port'"),
        (MINIMAL + "[repositories]\n", "unknown key 'repositories'"),
        (MINIMAL.replace('path = "/var/lib/cairn/repo"', 'pth = "/r"'), "unknown key 'repository.pth'"),
        ("[daemon]\nsocket = '/s'\n", "repository: required table is missing"),
        ("source = 5\n" + MINIMAL, "source: expected [[source]] tables, got 5"),
        ("[repository\n", "not valid TOML"),
    ],
)
def test_file_level_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in caught.value.message


def _two_sources(first: str, second: str, exclude: str = "") -> str:
    return (MINIMAL + f"[[source]]\nname = 'a'\npaths = ['{first}']\n{exclude}\n"
            f"[[source]]\nname = 'b'\npaths = ['/elsewhere', '{second}']\n")


@pytest.mark.parametrize(
    "text, message",
    [
        (_two_sources("/srv/app", "/srv/app/"),
         "source[1].paths[1]: '/srv/app' is also a path of source 'a' (source[0])"),
        (_two_sources("/srv/app", "/srv/app/data"),
         "source[1].paths[1]: '/srv/app/data' lies inside path '/srv/app' of source 'a' (source[0]): its files are "
         "in both sources' sets (unless meant, exclude it there ('/srv/app/data/') or drop it here)"),
        (_two_sources("/srv/app/data", "/srv"),
         "source[1].paths[1]: '/srv' holds path '/srv/app/data' of source 'a' (source[0])"),
        # an exclude that leaves out only part of the inner path is no separation
        (_two_sources("/srv/app", "/srv/app/data", "exclude = ['/srv/app/data/tmp/']"), "lies inside path '/srv/app'"),
    ],
)
def test_overlapping_sources_are_taken_and_warned_of_naming_both(tmp_path, caplog, text, message):
    """Two sources over one tree (a cold nightly full, a hot hourly incremental) are a use:
    taken, and warned of at start in one line naming both, since it is more often a mistake."""
    import logging

    from cairn.daemon.runtime.preflight import warn_overlapping_sources

    config = load_config(write(tmp_path, text))
    assert len(config.sources) == 2
    with caplog.at_level(logging.WARNING):
        warnings = warn_overlapping_sources(config)
    assert len(warnings) == 1 and message in warnings[0] and "\n" not in warnings[0]
    assert message in caplog.text


@pytest.mark.parametrize("exclude", ["exclude = ['/srv/app/data/']", "exclude = ['data/']",
                                     "exclude = ['/srv/app/*/']"])
def test_a_source_inside_another_that_excludes_it_is_not_warned_of(tmp_path, exclude):
    from cairn.daemon.runtime.preflight import warn_overlapping_sources

    config = load_config(write(tmp_path, _two_sources("/srv/app", "/srv/app/data", exclude)))
    assert [s.paths for s in config.sources] == [("/srv/app",), ("/elsewhere", "/srv/app/data")]
    assert warn_overlapping_sources(config) == []


def test_nested_source_directories_on_the_command_line_are_refused(clean_env, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError) as caught:
        config_from_args(str(tmp_path / "repo"), [str(tmp_path / "a" / "b"), str(tmp_path / "a")], False)
    assert caught.value.key == "--source"
    assert f"'{tmp_path / 'a' / 'b'}' lies inside '{tmp_path / 'a'}', also given" in caught.value.message


def test_missing_file(tmp_path):
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="unable to read file") as caught:
        load_config(str(missing))
    assert str(missing) in caught.value.message


def test_hot_mode_with_aux_paths(tmp_path):
    cfg = load(tmp_path, SOURCE + "aux_paths = ['/srv/idx']\nquiesce = { mode = 'hot' }\n")
    assert cfg.source("app").aux_paths == ("/srv/idx",)
    assert cfg.source("app").quiesce.freeze == ()


def test_example_config_loads_and_covers_every_key(tmp_path):
    cfg = load_config(str(EXAMPLE))
    assert cfg.daemon.listen and cfg.daemon.metrics and cfg.daemon.socket_group
    with open(EXAMPLE, "rb") as handle:
        data = tomllib.load(handle)
    assert set(data) == set(config_module.TOP_KEYS)
    # the object-store keys are shown commented out (they go only with an s3:// path)
    assert set(data["repository"]) == set(config_module.REPOSITORY_KEYS) - set(config_module.S3_KEYS)
    text = EXAMPLE.read_text()
    s3_lines = [line[2:] for line in text.splitlines()
                if line.startswith("# ") and line[2:].split(" = ")[0] in ("path", *config_module.S3_KEYS)]
    assert {line.split(" = ")[0] for line in s3_lines} == {"path", *config_module.S3_KEYS}
    local_path = next(line for line in text.splitlines() if line.startswith("path = "))
    s3_variant = tmp_path / "s3.toml"
    s3_variant.write_text(text.replace(local_path, "\n".join(s3_lines)))
    s3_cfg = load_config(str(s3_variant))
    assert s3_cfg.repository.path.startswith("s3://") and s3_cfg.repository.s3_options() is not None
    assert set(data["daemon"]) == set(config_module.DAEMON_KEYS)
    assert set().union(*(source.keys() for source in data["source"])) == set(config_module.SOURCE_KEYS)
    quiesce_keys = set().union(*(source.get("quiesce", {}).keys() for source in data["source"]))
    assert quiesce_keys == set(config_module.QUIESCE_KEYS)
    assert set().union(*(db.keys() for db in data["database"])) == set(config_module.DATABASE_KEYS)
    # Both quiesce modes and both freeze/thaw spellings are shown.
    assert {source.quiesce.mode for source in cfg.sources} == {"cold", "hot"}


def test_dataclass_fields_match_the_known_keys():
    import dataclasses

    assert [f.name for f in dataclasses.fields(DaemonConfig)] == list(config_module.DAEMON_KEYS)
    assert [f.name for f in dataclasses.fields(QuiesceConfig)] == list(config_module.QUIESCE_KEYS)
    # filled from the 'database' key (one name or a list); the daemon's own directories below a path
    derived = {"databases", "own_dirs"}
    fields = [f.name for f in dataclasses.fields(config_module.SourceConfig) if f.name not in derived]
    assert fields == list(config_module.SOURCE_KEYS)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("CAIRN_HOME", "XDG_RUNTIME_DIR", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_config_from_args_defaults(clean_env, tmp_path):
    clean_env.setenv("CAIRN_HOME", str(tmp_path / "state"))
    clean_env.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    clean_env.chdir(tmp_path)
    cfg = config_from_args("repo", ["/srv/app/data", "/srv/other/data", "/srv/app/data/", "web"], read_only=False)
    assert cfg.repository.path == str(tmp_path / "repo")
    assert cfg.daemon.state_dir == str(tmp_path / "state")
    assert cfg.daemon.socket == str(tmp_path / "run" / "cairn" / "cairnd.sock")
    assert cfg.daemon.read_only is False
    assert [(s.name, s.paths) for s in cfg.sources] == [
        ("data", ("/srv/app/data",)),
        ("data-2", ("/srv/other/data",)),
        ("web", (str(tmp_path / "web"),)),
    ]
    assert all(s.watch and s.schedule == {} and s.rpo is None for s in cfg.sources)
    assert cfg.path is None and cfg.databases == ()


def test_config_from_args_home_argument_and_fallbacks(clean_env, tmp_path):
    cfg = config_from_args(str(tmp_path / "repo"), [], read_only=True, home=str(tmp_path / "h"))
    assert cfg.daemon.state_dir == str(tmp_path / "h")
    assert cfg.daemon.read_only is True and cfg.sources == ()
    expected_socket = "/run/cairn/cairnd.sock" if os.geteuid() == 0 else str(tmp_path / "h" / "cairnd.sock")
    assert cfg.daemon.socket == expected_socket
    # Without CAIRN_HOME the state goes to ~/.local/share/cairn.
    cfg = config_from_args(str(tmp_path / "repo"), ["/"], read_only=False)
    assert cfg.daemon.state_dir == str(tmp_path / "home" / ".local" / "share" / "cairn")
    assert cfg.sources[0].name == "root"


def test_config_file_without_daemon_table_uses_the_same_defaults(clean_env, tmp_path):
    clean_env.setenv("CAIRN_HOME", str(tmp_path / "state"))
    clean_env.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    cfg = load_config(write(tmp_path, "[repository]\npath = 'repo'\n"))
    assert cfg.repository.path == str(tmp_path / "repo")
    assert cfg.daemon.state_dir == str(tmp_path / "state")
    assert cfg.daemon.socket == str(tmp_path / "run" / "cairn" / "cairnd.sock")


def test_configs_are_frozen(tmp_path):
    cfg = load(tmp_path)
    with pytest.raises(AttributeError):
        cfg.daemon.socket = "/elsewhere"  # type: ignore[misc]


def test_gc_grace_is_a_duration(tmp_path):
    base = MINIMAL.replace('path = "/var/lib/cairn/repo"\n', 'path = "/var/lib/cairn/repo"\ngc_grace = "{}"\n')
    assert load(tmp_path, base=base.format("2h")).repository.gc_grace == 7200.0
    assert load(tmp_path).repository.gc_grace is None
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, base=base.format("soon"))
    assert "repository.gc_grace" in caught.value.message


def test_the_daemons_own_directories_below_a_source_are_excluded_from_it(clean_env, tmp_path):
    home = tmp_path / "home"
    state = home / ".local/share/my cairn[1]"  # wildcards and spaces are taken literally
    cfg = config_from_args(str(state / "repo"), [str(home), str(tmp_path / "other")], read_only=False,
                           home=str(state))
    mine, other = cfg.sources
    assert mine.own_dirs == (str(state), str(state / "repo")) and other.own_dirs == ()
    common, anchored = mine.path_excludes()
    assert common == () and anchored == ((str(home), ("/.local/share/my\\ cairn\\[1\\]/",
                                                      "/.local/share/my\\ cairn\\[1\\]/repo/")),)
    from cairn.store.snapshots.excludes import Excluder

    rule = Excluder(anchored[0][1])
    assert rule.excluded(".local/share/my cairn[1]", True)
    assert not rule.excluded(".local/share/my cairn1", True) and not rule.excluded(".local/share", True)


def test_an_array_element_on_its_own_line_is_not_a_table_header():
    from cairn.daemon.runtime.config_lines import line_of

    text = ('[repository]\npath = "/r"\n[[source]]\nname = "a"\npaths = ["/a"]\n'
            'quiesce = { mode = "cold", freeze = [\n  ["sync"]\n], timeout = "x" }\nrpo = 5\n')
    assert line_of(text, "source[0].rpo") == 9 and line_of(text, "source[0].quiesce.timeout") == 8
