"""Encryption at rest through the real daemon and client: a repository created with a
passphrase is encrypted, holds no readable path, content or host name, opens only with a
right passphrase or key file, restores on a fresh host read-only, and its keys are managed
with `cairn key` (the last usable key is never removed)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess

from cairnd_harness import CAIRND, env_for, snapshot

MARK = "qjzvmarker"


def _tree(root: str) -> None:
    d = os.path.join(root, f"dir-{MARK}")
    os.makedirs(d)
    for i in range(5):
        with open(os.path.join(d, f"file-{MARK}-{i}.txt"), "wb") as f:
            f.write(os.urandom(2000) + f"secret-{MARK}-{i}".encode() + os.urandom(2000))
    with open(os.path.join(root, f"big-{MARK}.bin"), "wb") as f:
        f.write(os.urandom(600_000) + MARK.encode() * 4)


def _run_cairnd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRND, *args], capture_output=True, text=True, timeout=60, env=env_for())


def _repository_bytes(repo: str) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, _dirs, files in os.walk(repo):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out.append((p, f.read()))
    return out


def test_encrypted_repository_end_to_end(start_daemon, rundir, tmp_path):
    src = str(tmp_path / f"src-{MARK}")
    _tree(src)
    repo = str(tmp_path / "repo")
    pw = tmp_path / "pass"
    pw.write_text("a long and secret passphrase\n")
    r = _run_cairnd("--repo", repo, "--init", "--passphrase-file", str(pw))
    assert r.returncode == 0 and "created an encrypted repository" in r.stdout, r.stderr
    daemon = start_daemon("--repo", repo, "--source", src, "--passphrase-file", str(pw))
    set_id = daemon.ok("backup").strip().splitlines()[-1]
    with open(os.path.join(repo, "config", "config"), "rb") as f:
        assert json.loads(f.read())["version"] == 2

    keys = json.loads(daemon.ok("key", "list", "--json"))
    assert len(keys) == 1 and keys[0]["current"] and keys[0]["type"] == "passphrase"
    first = keys[0]["id"]
    r = daemon.cli("key", "remove", first)
    assert r.returncode == 1 and "last usable key" in r.stderr, r.stderr
    keyfile = str(tmp_path / "host.key")
    added = daemon.ok("key", "add", "--new-key-file", keyfile).split()[-1]
    assert os.stat(keyfile).st_mode & 0o077 == 0
    r = daemon.cli("key", "add", "--new-key-file", keyfile)  # never overwrites a key file
    assert r.returncode == 2 and "unable to create key file" in r.stderr
    listed = {k["id"]: k for k in json.loads(daemon.ok("key", "list", "--json"))}
    assert set(listed) == {first, added} and listed[added]["type"] == "keyfile"
    r = daemon.cli("key", "remove", first)
    assert r.returncode == 1 and "opened with" in r.stderr
    assert daemon.terminate(30)[0] == 0

    # nothing readable in any repository file
    needles = [MARK.encode(), os.fsencode(src), b"secret-"]
    if len(socket.gethostname()) >= 6:
        needles.append(socket.gethostname().encode())
    leaks = [(p, n) for p, data in _repository_bytes(repo) for n in needles if n in data or n in os.fsencode(p)]
    assert leaks == []

    # a wrong passphrase, or none: one clear line, exit 1
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    for extra in (("--passphrase-file", str(wrong)), ()):
        r = _run_cairnd("--repo", repo, "--read-only", *extra, "--socket", os.path.join(rundir, "x.sock"))
        lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("hint:")]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        if extra:
            assert lines[0] == "cairnd: error: unable to open repository: wrong passphrase or key file"
        else:
            assert "encrypted" in lines[0]

    # a fresh host with only the key file restores everything, read-only
    fresh = start_daemon("--repo", repo, "--read-only", "--key-file", keyfile, home=str(tmp_path / "other"))
    target = str(tmp_path / "out")
    fresh.ok("restore", set_id, "--target", target)
    assert snapshot(target) == snapshot(src)
    assert fresh.ok("verify", "--read-data") is not None
    r = fresh.cli("key", "remove", first)
    assert r.returncode == 1 and "read-only" in r.stderr
    assert fresh.terminate(30)[0] == 0

    # with the key file, the first passphrase can go; then the key file is the last one
    third = start_daemon("--repo", repo, "--source", src, "--key-file", keyfile, home=str(tmp_path / "third"))
    assert third.ok("key", "remove", first[:12]).split()[-1] == first
    assert [k["id"] for k in json.loads(third.ok("key", "list", "--json"))] == [added]
    r = third.cli("key", "remove", added)
    assert r.returncode == 1 and "last usable key" in r.stderr
    assert third.terminate(30)[0] == 0
    r = _run_cairnd("--repo", repo, "--read-only", "--passphrase-file", str(pw),
                    "--socket", os.path.join(rundir, "y.sock"))
    assert r.returncode == 1 and "wrong passphrase or key file" in r.stderr


def test_flipped_byte_in_a_pack_fails_verify_and_restore_of_that_file(start_daemon, tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    with open(os.path.join(src, "only.bin"), "wb") as f:
        f.write(os.urandom(300_000))
    repo = str(tmp_path / "repo")
    kf = tmp_path / "k"
    kf.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    assert _run_cairnd("--repo", repo, "--init", "--key-file", str(kf)).returncode == 0
    daemon = start_daemon("--repo", repo, "--source", src, "--key-file", str(kf))
    set_id = daemon.ok("backup").strip().splitlines()[-1]
    assert daemon.terminate(30)[0] == 0
    packs = [p for p, _ in _repository_bytes(repo) if os.sep + "packs" + os.sep in p]
    assert len(packs) == 1
    with open(packs[0], "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0x10]))
    again = start_daemon("--repo", repo, "--read-only", "--key-file", str(kf), home=str(tmp_path / "h2"))
    r = again.cli("verify", "--read-data")
    assert r.returncode == 1, (r.stdout, r.stderr)
    r = again.cli("restore", set_id, "--target", str(tmp_path / "out"))
    assert r.returncode != 0
    assert "only.bin" in r.stdout + r.stderr and "authentication failed" in r.stdout + r.stderr, (r.stdout, r.stderr)


def test_passphrase_file_and_key_file_together_on_the_command_line_is_a_usage_error(tmp_path):
    r = _run_cairnd("--repo", str(tmp_path / "r"), "--passphrase-file", "a", "--key-file", "b")
    assert r.returncode == 2 and r.stderr.startswith("cairnd: error: give --passphrase-file or --key-file")
    assert not os.path.exists(tmp_path / "r")


def test_config_file_names_the_secret(start_daemon, rundir, tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    with open(os.path.join(src, "f.txt"), "w") as f:
        f.write("hello")
    repo, pw, kf = str(tmp_path / "repo"), tmp_path / "pw", tmp_path / "missing.key"
    pw.write_text("from the config\n")
    sock = os.path.join(rundir, "cfg.sock")
    config = tmp_path / "c.toml"
    config.write_text(f'[repository]\npath = "{repo}"\npassphrase_file = "{pw}"\nkey_file = "{kf}"\n\n'
                      f'[daemon]\nsocket = "{sock}"\nstate_dir = "{tmp_path / "state"}"\n\n'
                      f'[[source]]\nname = "app"\npaths = ["{src}"]\n')
    r = _run_cairnd("--config", str(config), "--init")
    assert r.returncode == 0 and "encrypted" in r.stdout, r.stderr
    daemon = start_daemon("--config", str(config), socket_path=sock)
    daemon.ok("backup")
    assert [k["type"] for k in json.loads(daemon.ok("key", "list", "--json"))] == ["passphrase"]
    pw2 = tmp_path / "pw2"
    pw2.write_bytes(b"second passphrase\r\nnot part of it\n")
    assert len(daemon.ok("key", "add", "--passphrase-file", str(pw2)).split()[-1]) == 32
    assert daemon.terminate(30)[0] == 0
    other = start_daemon("--config", str(config), "--read-only", "--passphrase-file", str(pw2), socket_path=sock)
    assert sum(k["current"] for k in json.loads(other.ok("key", "list", "--json"))) == 1
    assert other.terminate(30)[0] == 0
    pw.write_text("changed meanwhile\n")  # the passphrase fails, then the key file is tried: it is missing
    r = _run_cairnd("--config", str(config), "--read-only")
    assert r.returncode == 1 and one_line_error(r.stderr).startswith("cairnd: error: unable to read key file")
    assert one_line_error(r.stderr).endswith(f"(repository.key_file in '{config}', line 4)"), r.stderr
    kf.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # there, but not a key of this repository
    r = _run_cairnd("--config", str(config), "--read-only")
    assert r.returncode == 1
    assert one_line_error(r.stderr) == "cairnd: error: unable to open repository: wrong passphrase or key file"


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]
