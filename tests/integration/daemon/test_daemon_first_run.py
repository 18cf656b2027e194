"""First run and start-up checks of the real cairnd: an explicit `--init`, a missing repository
refused with the command that creates it, and every configured resource checked before the
daemon creates anything (one line on stderr naming the key, path or address; exit 1)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
from cairnd_harness import CAIRND, env_for


def run_cairnd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRND, *args], capture_output=True, text=True, timeout=timeout, env=env_for())


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def tree(root: str) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def test_missing_repository_is_refused_with_the_command_that_creates_it(tmp_path, rundir):
    repo = tmp_path / "mnt" / "backup" / "repo"
    src = tmp_path / "src"
    src.mkdir()
    before = tree(str(tmp_path))
    r = run_cairnd("--repo", str(repo), "--source", str(src), "--socket", os.path.join(rundir, "s", "c.sock"))
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"cairnd: error: '{repo}' is not a Cairn repository: no such directory; "
                                  f"create it with: cairnd --repo {repo} --init --passphrase-file F (or --key-file F)")
    assert tree(str(tmp_path)) == before and not os.path.exists(os.path.join(rundir, "s"))


def test_the_command_that_creates_a_missing_repository_runs_as_printed(tmp_path, rundir):
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    key = tmp_path / "repo.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    r = run_cairnd("--repo", str(repo), "--source", str(src), "--key-file", str(key),
                   "--socket", os.path.join(rundir, "k.sock"))
    assert r.returncode == 1
    hint = one_line(r.stderr).split("create it with: ", 1)[1]
    assert hint == f"cairnd --repo {repo} --init --key-file {key}"
    r = run_cairnd(*shlex.split(hint)[1:])
    assert r.returncode == 0 and r.stdout == f"created an encrypted repository at {repo}\n", r.stderr


def test_init_creates_then_refuses_an_existing_repository(tmp_path, start_daemon):
    repo = tmp_path / "new" / "repo"
    pw = tmp_path / "pw"
    pw.write_text("init passphrase\n")
    r = run_cairnd("--repo", str(repo), "--init", "--passphrase-file", str(pw))
    assert r.returncode == 0 and r.stdout == f"created an encrypted repository at {repo}\n", r.stderr
    assert os.listdir(repo)
    r = run_cairnd("--repo", str(repo), "--init", "--passphrase-file", str(pw))
    assert r.returncode == 1
    assert one_line(r.stderr) == f"cairnd: error: a repository already exists at '{repo}'"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    d = start_daemon("--repo", str(repo), "--source", str(src), "--passphrase-file", str(pw))
    assert len(d.ok("backup", "--level", "full").split()[-1]) == 64


def test_init_refuses_a_directory_that_holds_other_files(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    r = run_cairnd("--repo", str(target), "--init", "--no-encryption")
    assert r.returncode == 1 and "the directory is not empty" in one_line(r.stderr)
    assert os.listdir(target) == ["keep.txt"]


def test_init_with_a_config_creates_the_repository_it_names(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[repository]\npath = "{tmp_path / "r"}"\n')
    r = run_cairnd("--config", str(config))
    assert r.returncode == 1
    assert one_line(r.stderr).endswith(
        f"create it with: cairnd --config {config} --init --passphrase-file F (or --key-file F)")
    assert run_cairnd("--config", str(config), "--init", "--no-encryption").returncode == 0
    assert (tmp_path / "r").is_dir()


def test_init_is_encrypted_by_default_and_plaintext_only_when_asked(tmp_path):
    r = run_cairnd("--repo", str(tmp_path / "r"), "--init")
    assert r.returncode == 2 and one_line(r.stderr) == (
        "cairnd: error: a new repository is encrypted: give --passphrase-file F or --key-file F "
        "(or --no-encryption for a plaintext one)")
    assert not (tmp_path / "r").exists()
    r = run_cairnd("--repo", str(tmp_path / "r"), "--init", "--no-encryption")
    assert r.returncode == 0 and r.stdout == f"created a plaintext repository at {tmp_path / 'r'}\n"
    r = run_cairnd("--repo", str(tmp_path / "q"), "--no-encryption")
    assert r.returncode == 2 and "--no-encryption goes with --init" in one_line(r.stderr)


@pytest.mark.parametrize("extra", [("--read-only",), ("--socket", "/tmp/x.sock")])
def test_init_takes_no_run_options(tmp_path, extra):
    r = run_cairnd("--repo", str(tmp_path / "r"), "--init", *extra)
    assert r.returncode == 2 and one_line(r.stderr).startswith("cairnd: error: --init ")
    assert not (tmp_path / "r").exists()


def test_empty_directory_is_not_taken_for_a_repository(tmp_path, rundir):
    (tmp_path / "empty").mkdir()
    r = run_cairnd("--repo", str(tmp_path / "empty"), "--socket", os.path.join(rundir, "s.sock"))
    assert r.returncode == 1 and "--init" in one_line(r.stderr)
    assert os.listdir(tmp_path / "empty") == []


# ---- every check before any side effect ----


@pytest.fixture
def listening() -> tuple[str, socket.socket]:
    """An address something already listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield f"127.0.0.1:{sock.getsockname()[1]}", sock
    sock.close()


def write_config(tmp_path, daemon_lines: list[str], source_lines: list[str] | None = None,
                 source: str | None = None) -> str:
    """A config whose state and socket live in directories that do not exist yet."""
    repo = tmp_path / "repo"
    if not repo.exists():
        assert run_cairnd("--repo", str(repo), "--init", "--no-encryption").returncode == 0
    src = source or str(tmp_path / "src")
    os.makedirs(tmp_path / "src", exist_ok=True)
    config = tmp_path / "c.toml"
    lines = ["[repository]", f'path = "{repo}"', "[daemon]", f'socket = "{tmp_path / "run" / "c.sock"}"',
             f'state_dir = "{tmp_path / "state"}"', *daemon_lines,
             "[[source]]", 'name = "app"', f'paths = ["{src}"]', *(source_lines or [])]
    config.write_text("\n".join(lines) + "\n")
    return str(config)


def start_with(tmp_path, daemon_lines: list[str], source_lines: list[str] | None = None,
               source: str | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run cairnd on write_config(...); (its result, the paths it created)."""
    config = write_config(tmp_path, daemon_lines, source_lines, source)
    before = tree(str(tmp_path))
    r = run_cairnd("--config", config)
    return r, tree(str(tmp_path)) - before


@pytest.mark.parametrize("value", ["660", "400"])
def test_decimal_socket_mode_is_refused(tmp_path, value):
    # 400 fits in the permission bits (it would be mode 0o620); refused all the same.
    r, created = start_with(tmp_path, [f"socket_mode = {value}"])
    assert r.returncode == 1 and created == set()
    line = one_line(r.stderr)
    assert f"daemon.socket_mode: {value} is not a file mode" in line and '"0660"' in line


def test_unknown_socket_group_is_refused(tmp_path):
    r, created = start_with(tmp_path, ['socket_group = "no-such-group-cairn"'])
    assert r.returncode == 1 and created == set()
    assert "daemon.socket_group: no group is named 'no-such-group-cairn'" in r.stderr.splitlines()[0]


def test_busy_metrics_address_is_named(tmp_path, listening):
    address, _ = listening
    r, created = start_with(tmp_path, [f'metrics = "{address}"'])
    assert r.returncode == 1 and created == set()
    assert one_line(r.stderr) == f"cairnd: error: daemon.metrics: address {address} is already in use"


def test_busy_listen_address_is_named(tmp_path, listening):
    address, _ = listening
    cert, key, token = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "token"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    token.write_text("secret\n")
    tls = [f'tls_cert = "{cert}"', f'tls_key = "{key}"', f'token_file = "{token}"']
    r, created = start_with(tmp_path, [f'listen = "{address}"', *tls])
    assert r.returncode == 1 and created == set()
    assert one_line(r.stderr) == f"cairnd: error: daemon.listen: address {address} is already in use"
    # A certificate and a key that do not belong together are refused too, naming both.
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(other)], check=True, capture_output=True)
    (tmp_path / "c.toml").unlink()
    r, created = start_with(tmp_path, [
        'listen = "127.0.0.1:0"', f'tls_cert = "{cert}"', f'tls_key = "{other}"', f'token_file = "{token}"'])
    assert r.returncode == 1 and "daemon.tls_cert/tls_key" in one_line(r.stderr)


def test_unreadable_token_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "token"
    tls = ['tls_cert = "/nonexistent.crt"', 'tls_key = "/nonexistent.key"', f'token_file = "{missing}"']
    r, created = start_with(tmp_path, ['listen = "127.0.0.1:0"', *tls])
    assert r.returncode == 1 and created == set()
    expected = f"cairnd: error: daemon.token_file: unable to read '{missing}': No such file or directory"
    assert one_line(r.stderr) == expected


def test_missing_source_path_is_one_error_naming_it(tmp_path):
    gone = tmp_path / "srv" / "app"
    r, created = start_with(tmp_path, [], source=str(gone))
    assert r.returncode == 1 and created == set()
    line = one_line(r.stderr)
    assert line.startswith(f"cairnd: error: source 'app': path '{gone}' does not exist (source[0].paths[0] in '")
    config = line.split(" in '", 1)[1].split("'", 1)[0]
    written = open(config, encoding="utf-8").read().splitlines().index(f'paths = ["{gone}"]') + 1
    assert line.endswith(f"', line {written})"), line


def test_exclude_that_does_not_parse_is_named(tmp_path):
    r, created = start_with(tmp_path, [], ['exclude = ["*.tmp", "!"]'])
    assert r.returncode == 1 and created == set()
    assert "source[0].exclude[1]: pattern '!' does not parse" in one_line(r.stderr)


def test_valid_start_then_creates_state_and_socket(tmp_path, start_daemon):
    # The same configuration without the fault starts: the checks are not refusing everything.
    config = write_config(tmp_path, ['socket_mode = "0640"', 'metrics = "127.0.0.1:0"'], ['exclude = ["*.tmp"]'])
    d = start_daemon("--config", config, socket_path=str(tmp_path / "run" / "c.sock"))
    assert (tmp_path / "state").is_dir()
    assert oct(os.stat(d.socket).st_mode & 0o777) == "0o640"


def test_reload_refuses_what_a_start_refuses_in_one_line_and_keeps_the_running_configuration(tmp_path, start_daemon):
    import signal
    import time

    config = write_config(tmp_path, [])
    d = start_daemon("--config", config, socket_path=str(tmp_path / "run" / "c.sock"))
    good = (tmp_path / "c.toml").read_text()
    gone, afile, there = tmp_path / "not-mounted", tmp_path / "afile", tmp_path / "there"
    afile.write_text("a file")
    there.mkdir()

    def with_b(text: str, path: object) -> str:
        return text + f'[[source]]\nname = "b"\npaths = ["{path}"]\n'

    def sources() -> list[tuple[str, list[str]]]:
        return [(s["name"], s["paths"]) for s in json.loads(d.ok("--json", "status"))["sources"]]

    def hup(text: str) -> list[str]:
        """Write the file, SIGHUP, wait for the reload's end; the log lines it wrote."""
        (tmp_path / "c.toml").write_text(text)
        mark, before = len(d.log().splitlines()), d.notify.count()
        d.proc.send_signal(signal.SIGHUP)
        assert d.notify.wait_for("READY=1", 20, after=before), d.log()
        end = time.monotonic() + 20
        while not any("reload" in line for line in d.log().splitlines()[mark:]):
            assert time.monotonic() < end, d.log()
            time.sleep(0.05)
        return d.log().splitlines()[mark:]

    running = sources()
    assert running == [("app", [str(tmp_path / "src")])]
    # A missing source path is refused as a start refuses it (a bound key the file also changes
    # is not mentioned: nothing of a refused file takes effect, then or later).
    refused = {
        f"source 'b': path '{gone}' does not exist":
            with_b(good.replace("[daemon]\n", '[daemon]\nsocket_mode = "0600"\n'), gone),
        f"source 'b': path '{afile}' is not a directory": with_b(good, afile),
        "not valid TOML": good + "[[source\n",
        "unknown key 'daemon.sockt'": good.replace("[daemon]\n", "[daemon]\nsockt = 1\n"),
        "source[0].rpo: expected a duration like '5m', got 'soon'": good + 'rpo = "soon"\n',
    }
    for problem, text in refused.items():
        lines = hup(text)
        assert len(lines) == 1, lines
        assert "level=error" in lines[0] and "reload failed, keeping the running configuration: " in lines[0]
        assert problem in lines[0], lines[0]
        assert sources() == running
        assert d.alive
    # The same file with the path there is taken; the bound key's change is logged once, now.
    lines = hup(with_b(good.replace("[daemon]\n", '[daemon]\nsocket_mode = "0600"\n'), there))
    assert not [line for line in lines if "level=error" in line], lines
    changed = [line for line in lines if "changed" in line]
    assert len(changed) == 1 and "daemon.socket_mode changed: takes effect at the next start" in changed[0], lines
    assert sources() == [*running, ("b", [str(there)])]


def _encrypted_repository(tmp_path) -> tuple[Path, Path]:
    """A repository made with `cairnd --init` under a passphrase file: (repository, passphrase file)."""
    repo, pw = tmp_path / "repo", tmp_path / "pw"
    pw.write_text("a first-run passphrase\n")
    assert run_cairnd("--repo", str(repo), "--init", "--passphrase-file", str(pw)).returncode == 0
    return repo, pw


def _start_on(repo: Path, pw: Path, tmp_path, rundir: str) -> subprocess.CompletedProcess:
    """cairnd started on `repo` with an empty source (it is expected to refuse)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    return run_cairnd("--repo", str(repo), "--source", str(src), "--passphrase-file", str(pw),
                      "--socket", os.path.join(rundir, "c.sock"))


def test_a_flipped_bit_in_the_configs_version_is_damage_not_a_newer_format(tmp_path, rundir):
    """One bit turns an encrypted repository's "version": 2 into 3: cairnd must say the config
    is damaged and how to put it back, not send the operator to upgrade Cairn."""
    repo, pw = _encrypted_repository(tmp_path)
    config = repo / "config" / "config"
    data = config.read_bytes()
    at = data.index(b'"version": 2') + len(b'"version": ')
    config.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    before = tree(str(repo))
    r = _start_on(repo, pw, tmp_path, rundir)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (f"cairnd: error: unable to read the config of repository '{repo}': checksum mismatch "
                        "(format version 2 when written, 3 now)"), r.stderr
    assert lines[1].startswith("hint: the config object (config/config) is damaged: put it back from a copy")
    assert len(lines) == 2 and "newer than this Cairn" not in r.stderr, r.stderr
    assert tree(str(repo)) == before


def test_a_repository_that_lost_its_config_says_so_and_is_never_initialised_over(tmp_path, rundir):
    repo, pw = _encrypted_repository(tmp_path)
    (repo / "config" / "config").unlink()
    before = tree(str(repo))
    r = _start_on(repo, pw, tmp_path, rundir)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (f"cairnd: error: '{repo}' holds Cairn objects but its config object is missing: the "
                        "repository cannot be opened"), r.stderr
    assert "put config/config back from a copy" in r.stderr
    r = run_cairnd("--repo", str(repo), "--init", "--passphrase-file", str(pw))
    assert r.returncode == 1 and tree(str(repo)) == before  # init refuses: the keys stay as they were
