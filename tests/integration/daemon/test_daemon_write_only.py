"""Write-only keys through the real daemon and client: a full-key daemon adds a write-only key
(`cairn key add --write-only`); a daemon opened with it backs up full and incremental (the
incremental costs what changed, also after a restart: its own trees and sets are in its state
directory), refuses restore, ls of other hosts' sets, verify, prune and key removal with one
line and changes nothing; a full-key daemon restores its sets byte-identical; the repository
names none of its paths, its host or its content."""

from __future__ import annotations

import json
import os
import stat
import time

from cairnd_harness import init_encrypted_repo, snapshot

MARK = "wqzkmarker"


def _tree(root: str, seed: int) -> None:
    d = os.path.join(root, f"dir-{MARK}")
    os.makedirs(d)
    for i in range(6):
        with open(os.path.join(d, f"file-{MARK}-{i}.txt"), "wb") as f:
            f.write(os.urandom(3000) + f"secret-{MARK}-{seed}-{i}".encode() + os.urandom(3000))
    with open(os.path.join(root, f"big-{MARK}.bin"), "wb") as f:
        f.write(os.urandom(900_000) + MARK.encode() * 4)
    old = time.time() - 3600  # written long before any set: not "racy" however fast the sets follow
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (old, old))


def _config(tmp_path, name: str, repo: str, src: str, secret: str, host: str) -> tuple[str, str]:
    """A config for one host: (config path, socket path)."""
    sock = os.path.join(str(tmp_path), f"{name}.sock")
    if len(sock) > 100:
        sock = os.path.join("/tmp", f"cairn-wo-{os.getpid()}-{name}.sock")
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[repository]\npath = "{repo}"\npassphrase_file = "{secret}"\n\n'
                    f'[daemon]\nsocket = "{sock}"\nstate_dir = "{tmp_path / name / "state"}"\nhost = "{host}"\n\n'
                    f'[[source]]\nname = "app"\npaths = ["{src}"]\nwatch = false\n')
    return str(path), sock


def _objects(repo: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(repo):
        if os.path.basename(dirpath) == "locks":
            continue
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, repo)] = f.read()
    return out


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("hint:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_write_only_daemon_backs_up_and_refuses_reads_and_deletes(start_daemon, tmp_path):
    repo, full_pw, wo_pw = init_encrypted_repo(tmp_path)

    # a full-key host backs up its own data and provisions a write-only key
    src_a = str(tmp_path / "src-a")
    _tree(src_a, 1)
    cfg_a, sock_a = _config(tmp_path, "alpha", repo, src_a, str(full_pw), "alpha-host")
    alpha = start_daemon("--config", cfg_a, socket_path=sock_a)
    set_a = alpha.ok("backup").strip().splitlines()[-1]
    out = alpha.ok("key", "add", "--write-only", "--passphrase-file", str(wo_pw))
    assert out.startswith("added write-only key ")
    keys = {k["id"]: k for k in json.loads(alpha.ok("key", "list", "--json"))}
    assert sorted(k["access"] for k in keys.values()) == ["full", "write-only"]
    assert alpha.terminate(30)[0] == 0

    # the write-only host: full, then incremental, then (after a restart) incremental again
    src_w = str(tmp_path / f"src-{MARK}")
    _tree(src_w, 2)
    host = f"host-{MARK}"
    cfg_w, sock_w = _config(tmp_path, "wonly", repo, src_w, str(wo_pw), host)
    wonly = start_daemon("--config", cfg_w, socket_path=sock_w)
    first = wonly.ok("backup", "--level", "full").strip().splitlines()[-1]
    with open(os.path.join(src_w, f"dir-{MARK}", "new.bin"), "wb") as f:
        f.write(os.urandom(200_000))
    second = wonly.ok("backup", "--level", "incremental").strip().splitlines()[-1]
    assert wonly.terminate(30)[0] == 0
    with open(os.path.join(src_w, f"dir-{MARK}", f"file-{MARK}-0.txt"), "ab") as f:
        f.write(os.urandom(50_000))
    wonly = start_daemon("--config", cfg_w, socket_path=sock_w)
    third = wonly.ok("backup", "--level", "incremental").strip().splitlines()[-1]
    sets = {s["id"]: s for s in json.loads(wonly.ok("sets", "--json"))}
    assert set(sets) == {first, second, third}  # its own sets only
    assert set(s["id"] for s in json.loads(wonly.ok("sets", "--json", "--host", host))) == set(sets)
    assert sets[second]["level"] == "incremental" and sets[second]["base"] == first
    assert sets[third]["level"] == "incremental" and sets[third]["base"] == second
    assert 200_000 <= sets[second]["stats"]["bytes_added"] < 260_000  # what changed, not the tree
    assert sets[third]["stats"]["modified"] == 1 and sets[third]["stats"]["bytes_added"] < 120_000
    total = sets[third]["stats"]["bytes_total"]
    # the big file is not read again (the changed one is, and new.bin, written just before the
    # set before: a file modified that close to its base set is read once more to be safe)
    assert total > 1_000_000 and sets[third]["stats"]["bytes_read"] < 400_000
    cache = tmp_path / "wonly" / "state" / "write-only"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == 0o600
               for d, _dirs, files in os.walk(cache) for f in files)

    # WAL archiving: a retried push of the same content is a no-op (from its own cache)
    seg = tmp_path / "000000010000000000000001"
    wal = os.urandom(1 << 20) + f"wal-{MARK}".encode()
    seg.write_bytes(wal)
    assert wonly.ok("wal-push", str(seg)).strip() == "archived 000000010000000000000001"
    assert wonly.ok("wal-push", str(seg)).strip().endswith("was already archived (identical)")

    # refusals: one line, exit 1, nothing changed in the repository
    before = _objects(repo)
    attempts = [
        ("restore", set_a, "--target", str(tmp_path / "out-a")),
        ("ls", set_a),
        ("sets", "--host", "alpha-host"),  # not "no sets": it cannot see them
        ("restore", third, "--target", str(tmp_path / "out-w")),
        ("verify", "--read-data"),
        ("prune", "--keep-last", "1"),
        ("prune",),
        ("key", "remove", next(iter(keys))),
        ("key", "add", "--passphrase-file", str(full_pw)),
        ("wal-fetch", "000000010000000000000001", str(tmp_path / "fetched")),
        ("copy", "--to", str(tmp_path / "copy-dest"), "--to-passphrase-file", str(full_pw)),
    ]
    for args in attempts:
        r = wonly.cli(*args)
        # (wal-fetch as restore_command: a refusal is not "not in the archive", so above 125)
        assert r.returncode == (255 if args[0] == "wal-fetch" else 1), (args, r.stdout, r.stderr)
        assert "write-only" in _one_line(r.stderr), (args, r.stderr)
    assert not os.path.exists(tmp_path / "out-a") and not os.path.exists(tmp_path / "out-w")
    assert not os.path.exists(tmp_path / "fetched")
    assert not os.path.exists(tmp_path / "copy-dest")  # refused before the destination was made
    assert _objects(repo) == before
    assert wonly.terminate(30)[0] == 0

    # nothing in the repository names the write-only host's paths, host or content
    needles = [MARK.encode(), os.fsencode(src_w), host.encode()]
    leaks = [(p, n) for p, data in _objects(repo).items() for n in needles if n in data or n in os.fsencode(p)]
    assert leaks == []

    # a full key reads everything: the write-only host's sets restore byte-identical
    reader = start_daemon("--repo", repo, "--read-only", "--passphrase-file", str(full_pw),
                          home=str(tmp_path / "reader"))
    hosts = {s["id"]: s["hostname"] for s in json.loads(reader.ok("sets", "--json"))}
    assert hosts == {set_a: "alpha-host", first: host, second: host, third: host}
    reader.ok("restore", third, "--target", str(tmp_path / "out"))
    assert snapshot(str(tmp_path / "out")) == snapshot(src_w)
    reader.ok("verify", "--read-data")
    reader.ok("wal-fetch", "000000010000000000000001", str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == wal
    assert reader.terminate(30)[0] == 0
