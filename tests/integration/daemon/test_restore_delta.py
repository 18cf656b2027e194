"""cairn restore --delta/--delete, --include/--exclude, --dry-run and --verify through the real
daemon and client: after random damage a delta restore makes the tree equal to the set again,
writing as many bytes as were damaged, not the size of the tree."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator

import pytest
from cairnd_harness import Daemon, daemon_starter, snapshot

CHUNKY = 3 << 20  # big files: several content-defined chunks each


def make_tree(root: str, rng: random.Random) -> None:
    os.makedirs(os.path.join(root, "docs", "deep"))
    os.makedirs(os.path.join(root, "media"))
    os.makedirs(os.path.join(root, "cache"))
    for i in range(30):
        with open(os.path.join(root, "docs", f"n{i:02d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(10, 40_000)))
    for i in range(4):
        with open(os.path.join(root, "media", f"big{i}.bin"), "wb") as f:
            f.write(rng.randbytes(CHUNKY))
    with open(os.path.join(root, "docs", "deep", "leaf.txt"), "wb") as f:
        f.write(b"leaf\n")
    with open(os.path.join(root, "cache", "tmp.bin"), "wb") as f:
        f.write(rng.randbytes(5000))
    os.symlink("docs/deep/leaf.txt", os.path.join(root, "link"))
    os.chmod(os.path.join(root, "docs", "n03.txt"), 0o600)


def chunk_spans(d: Daemon, set_id: str, rel: str) -> list[tuple[int, int]]:
    """(offset, size) of each chunk of file `rel` in the set, from a dry-run manifest."""
    from cairn.proto.cairn.v1 import cairn_pb2 as pb
    from cairn.proto.cairn.v1 import cairn_pb2_grpc

    with d.channel() as ch:
        stub = cairn_pb2_grpc.CairnStub(ch)
        for batch in stub.Restore(pb.RestoreRequest(set=set_id, paths=[rel.encode()], manifest=True)):
            for r in batch.records:
                if r.WhichOneof("record") == "entry" and r.entry.path == rel.encode():
                    spans, off = [], 0
                    for size in r.entry.chunk_sizes:
                        spans.append((off, size))
                        off += size
                    assert not any(x.WhichOneof("record") == "data" for x in batch.records)
                    return spans
    raise AssertionError(f"{rel} not in the manifest")


def damage(root: str, d: Daemon, set_id: str, rng: random.Random) -> tuple[int, set[str]]:
    """Random damage; returns (bytes a delta restore must write, paths to be deleted as extras)."""
    owed = 0
    docs = sorted(os.listdir(os.path.join(root, "docs")))
    docs.remove("deep")
    rng.shuffle(docs)
    gone, trunc, rewrite, modes = docs[:3], docs[3:6], docs[6:9], docs[9:12]
    for name in gone:
        p = os.path.join(root, "docs", name)
        owed += os.path.getsize(p)
        os.unlink(p)
    for name in rewrite:
        p = os.path.join(root, "docs", name)
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.write(rng.randbytes(size))
        owed += size  # small files are one chunk each
    for name in trunc:
        p = os.path.join(root, "docs", name)
        size = os.path.getsize(p)
        spans = chunk_spans(d, set_id, f"docs/{name}")
        cut = rng.randrange(0, size)
        os.truncate(p, cut)
        owed += sum(sz for off, sz in spans if off + sz > cut)
    for name in modes:
        os.chmod(os.path.join(root, "docs", name), 0o640 if rng.random() < 0.5 else 0o604)
    # one chunk in the middle of a big file rewritten in place, another big file truncated
    spans = chunk_spans(d, set_id, "media/big1.bin")
    off, size = spans[len(spans) // 2]
    with open(os.path.join(root, "media", "big1.bin"), "r+b") as f:
        f.seek(off + size // 3)
        f.write(b"\xff" * 100)
    owed += size
    spans = chunk_spans(d, set_id, "media/big2.bin")
    cut = spans[-1][0] + 7
    os.truncate(os.path.join(root, "media", "big2.bin"), cut)
    owed += spans[-1][1]
    # extras: a file, a directory with contents; and the symlink pointed elsewhere
    with open(os.path.join(root, "docs", "extra.txt"), "wb") as f:
        f.write(b"not in the set")
    os.makedirs(os.path.join(root, "junk", "sub"))
    with open(os.path.join(root, "junk", "sub", "x"), "wb") as f:
        f.write(b"x")
    os.unlink(os.path.join(root, "link"))
    os.symlink("elsewhere", os.path.join(root, "link"))
    return owed, {"docs/extra.txt", "junk"}


REPOSITORIES = ["plaintext", "encrypted"]


def set_up(kind: str, start_daemon: Callable[..., Daemon], rundir: str) -> tuple[Daemon, str, str, dict]:
    """A daemon and a full set of make_tree's tree in `rundir`, in a plaintext or an encrypted
    repository (whose chunk ids are keyed: the delta and --verify must compare with that key)."""
    import subprocess

    from cairnd_harness import CAIRND, env_for

    src = os.path.join(rundir, "src")
    make_tree(src, random.Random(1234))
    repo, secret = os.path.join(rundir, "repo"), ()
    if kind == "encrypted":
        with open(os.path.join(rundir, "repo.pass"), "w") as f:
            f.write("delta passphrase\n")
        secret = ("--passphrase-file", os.path.join(rundir, "repo.pass"))
        r = subprocess.run([CAIRND, "--repo", repo, "--init", *secret], capture_output=True, text=True, timeout=60,
                           env=env_for())
        assert r.returncode == 0, r.stderr
    d = start_daemon("--repo", repo, "--source", src, *secret)
    s = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))
    return d, s["id"], src, snapshot(src)


@pytest.fixture(scope="module", params=REPOSITORIES)
def daemon_with_set(request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, str, str, dict]]:
    """set_up's daemon and set, one of each kind for the module: the tests that take it only read
    the repository and write below their own `rundir` (making the set took most of each one's
    time). A test that changes the repository or the daemon's directories takes `own_daemon_with_set`."""
    home = tempfile.mkdtemp(prefix="cairn-", dir="/tmp")
    os.chmod(home, 0o755)
    try:
        with daemon_starter(home) as start:
            yield set_up(request.param, start, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=REPOSITORIES)
def own_daemon_with_set(request: pytest.FixtureRequest, start_daemon: Callable[..., Daemon],
                        rundir: str) -> tuple[Daemon, str, str, dict]:
    """set_up's daemon and set in this test's `rundir`, for this test alone."""
    return set_up(request.param, start_daemon, rundir)


WHO = {"daemon": (), "client": ("--stream",)}  # who runs a delta: the daemon on this host, or the client


@pytest.mark.parametrize("who", WHO)
def test_delta_restore_after_random_damage_writes_only_the_damage(daemon_with_set, rundir: str, who: str) -> None:
    d, set_id, src, want = daemon_with_set
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target)
    assert snapshot(target) == want
    for seed in (7, 8):
        rng = random.Random(seed)
        owed, extras = damage(target, d, set_id, rng)
        assert snapshot(target) != want

        dry = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--delete", "--dry-run"))
        assert dry["bytes_to_write"] == owed
        assert {x for x in dry["extras"]} == extras
        assert os.path.exists(os.path.join(target, "docs", "extra.txt"))  # dry run wrote nothing

        # without --delete the extras stay, everything else is mended
        r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", *WHO[who]))
        assert r["bytes_written"] == owed and r["written_by"] == who, r
        assert r["extras_kept"] == 2 and os.path.exists(os.path.join(target, "junk", "sub", "x"))
        got = snapshot(target)
        assert {k: v for k, v in got.items() if not k.startswith("junk") and k != "docs/extra.txt"} == want
        assert not [n for n in os.listdir(target) if n.startswith(".cairn-claim-")]

        out = d.ok("restore", set_id, "--target", target, "--delta", "--delete", "--verify", *WHO[who])
        assert "wrote 0 B" in out and "deleted 2" in out and "verified" in out
        assert ("by the daemon" in out) == (who == "daemon")
        assert snapshot(target) == want


@pytest.mark.parametrize("who", WHO)
def test_delta_restore_fixes_kinds_and_an_emptied_target(daemon_with_set, rundir: str, who: str) -> None:
    d, set_id, src, want = daemon_with_set
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target, "--delta")  # a missing target: everything is written
    assert snapshot(target) == want
    # a directory where a file was, a file where a directory was, a symlink where a directory was
    p = os.path.join(target, "docs", "n05.txt")
    os.unlink(p)
    os.makedirs(os.path.join(p, "inner"))
    shutil.rmtree(os.path.join(target, "docs", "deep"))
    with open(os.path.join(target, "docs", "deep"), "wb") as f:
        f.write(b"in the way")
    shutil.rmtree(os.path.join(target, "cache"))
    os.symlink("/", os.path.join(target, "cache"))  # must never be written through
    with open(os.path.join(p, "inner", "x"), "wb") as f:  # extras below what is replaced
        f.write(b"x")
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--delete", *WHO[who]))
    assert r["errors"] == [] and r["written_by"] == who
    assert snapshot(target) == want
    assert stat.S_ISDIR(os.lstat(os.path.join(target, "cache")).st_mode)


@pytest.mark.parametrize("who", WHO)
def test_a_directory_with_data_in_a_files_place_is_kept_without_delete(daemon_with_set, rundir: str,
                                                                         who: str) -> None:
    """Without --delete a delta never removes what the set does not hold: a directory holding
    a user's files where the set has a file stays, is named as an error (exit 1) by the run and
    its dry run, and its contents are counted as kept; with --delete it is replaced."""
    d, set_id, src, want = daemon_with_set
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target)
    p = os.path.join(target, "docs", "n05.txt")
    os.unlink(p)
    os.makedirs(os.path.join(p, "deep"))
    with open(os.path.join(p, "deep", "userdata"), "wb") as f:
        f.write(b"someone's work")
    dry = d.cli("restore", set_id, "--target", target, "--delta", "--dry-run", *WHO[who])
    assert "docs/n05.txt' is a directory holding entries the set does not" in dry.stdout + dry.stderr
    r = d.cli("--json", "restore", set_id, "--target", target, "--delta", *WHO[who])
    assert r.returncode == 1, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert any("is a directory holding entries the set does not" in e for e in doc["errors"]), doc
    assert doc["deleted"] == 0 and doc["extras_kept"] >= 1
    with open(os.path.join(p, "deep", "userdata"), "rb") as f:
        assert f.read() == b"someone's work"
    d.ok("restore", set_id, "--target", target, "--delta", "--delete", *WHO[who])
    assert snapshot(target) == want


def test_verify_detects_a_difference_and_fails(daemon_with_set, rundir: str) -> None:
    d, set_id, src, want = daemon_with_set
    target = os.path.join(rundir, "restored")
    out = d.ok("restore", set_id, "--target", target, "--verify")
    assert "verified" in out and "content hashes" in out
    with open(os.path.join(target, "media", "big3.bin"), "r+b") as f:
        f.seek(CHUNKY - 10)
        f.write(b"X")
    r = d.cli("restore", set_id, "--target", target, "--delta", "--dry-run")
    assert r.returncode == 0 and "media/big3.bin" in r.stdout
    # verify alone (after a restore that wrote nothing new) reports the damage
    r = d.cli("restore", set_id, "--target", target, "--overwrite", "--include", "docs/deep/", "--verify")
    assert r.returncode == 0, r.stderr  # only docs/deep was restored and checked
    r = d.cli("restore", set_id, "--target", target, "--overwrite", "--include", "media/big3.bin", "--verify",
              "--exclude", "nothing")
    assert r.returncode == 0, r.stderr  # it rewrote the damaged file, then checked it
    with open(os.path.join(target, "media", "big3.bin"), "r+b") as f:
        f.write(b"Y")
    from cairn.client import cli, restoring
    from cairn.client.connection import Connection, resolve_endpoint

    args = cli.build_parser().parse_args(["restore", set_id, "--target", target, "--verify"])
    with Connection(resolve_endpoint(socket=d.socket)) as conn:
        assert restoring.verify_target(conn, args, lambda *_: None, cli.render, cli.to_record) == 1


def test_include_exclude_and_dry_run(daemon_with_set, rundir: str) -> None:
    d, set_id, src, want = daemon_with_set
    target = os.path.join(rundir, "some")
    out = d.ok("restore", set_id, "--target", target, "--include", "docs/", "--exclude", "n1*.txt", "--dry-run")
    assert not os.path.exists(target)
    listed = [line.split()[3] for line in out.splitlines() if line.startswith("would write")]
    assert "docs/n00.txt" in listed and "docs/deep/leaf.txt" in listed
    assert not any("n1" in p for p in listed) and not any(p.startswith(("media", "cache")) for p in listed)
    d.ok("restore", set_id, "--target", target, "--include", "docs/", "--exclude", "n1*.txt")
    got = snapshot(target)
    expect = {k: v for k, v in want.items() if k.startswith("docs") and not os.path.basename(k).startswith("n1")}
    assert {k: v for k, v in got.items() if k != "docs"} == {k: v for k, v in expect.items() if k != "docs"}
    assert set(got) == set(expect)
    # an include below directories brings those directories (with their metadata), nothing else
    t2 = os.path.join(rundir, "leaf")
    d.ok("restore", set_id, "--target", t2, "--include", "leaf.txt")
    assert set(snapshot(t2)) == {"docs", "docs/deep", "docs/deep/leaf.txt"}
    assert snapshot(t2)["docs/deep"] == want["docs/deep"]
    # a delta with patterns: what the patterns leave out is not counted as an extra kept
    for who in WHO.values():
        r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--include", "docs/",
                            "--exclude", "n1*.txt", *who))
        assert r["extras_kept"] == 0 and r["files_written"] == 0, r


def test_bad_restore_options_are_usage_errors(daemon_with_set, rundir: str) -> None:
    d, set_id, _, _ = daemon_with_set
    target = os.path.join(rundir, "t")
    for extra in (["--delete"], ["--delta", "--delete", "--include", "x"], ["--dry-run", "--verify"],
                  ["--db-target", "a=/tmp/x"]):
        r = d.cli("restore", set_id, "--target", target, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert r.stderr.startswith("cairn: error:") and not os.path.exists(target)
    r = d.cli("restore", set_id, "--target", target, "--databases")
    assert r.returncode == 3 and "holds no database" in r.stderr


def test_quick_check_trusts_size_and_mtime_and_the_default_reads_content(daemon_with_set, rundir: str) -> None:
    d, set_id, _, want = daemon_with_set
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target)
    sneaky = os.path.join(target, "docs", "n07.txt")  # same size and mtime, other content
    st = os.stat(sneaky)
    with open(sneaky, "r+b") as f:
        f.write(b"#")
    os.utime(sneaky, ns=(st.st_atime_ns, st.st_mtime_ns))
    touched = os.path.join(target, "docs", "n08.txt")  # content and mtime changed
    with open(touched, "r+b") as f:
        f.write(b"#")
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--quick"))
    assert r["files_written"] == 1 and r["written_by"] == "daemon"  # n08 only: the quick check does not read n07
    assert snapshot(target)["docs/n08.txt"] == want["docs/n08.txt"]
    assert snapshot(target)["docs/n07.txt"] != want["docs/n07.txt"]
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta"))
    assert r["files_written"] == 1 and snapshot(target) == want
    assert d.cli("restore", set_id, "--target", target, "--quick").returncode == 2


def test_a_target_of_another_user_is_mended_by_the_daemon_when_both_are_root(daemon_with_set, rundir: str) -> None:
    """A whole-set restore gives the target the source directory's owner (an application's):
    with a root client and a root daemon, the daemon still mends it (it does only what its
    client could); a client without those powers makes the claim as itself and is refused
    (tests/unit: claims), and then runs the delta itself."""
    d, set_id, _, want = daemon_with_set
    target = os.path.join(rundir, "theirs")
    d.ok("restore", set_id, "--target", target)
    with open(os.path.join(target, "media", "big1.bin"), "r+b") as f:
        f.write(b"damage")
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the target to another user")
    os.chown(target, 65534, 65534)
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta"))
    assert r["written_by"] == "daemon" and r["files_written"] == 1
    assert snapshot(target) == want
    assert not [n for n in os.listdir(target) if n.startswith(".cairn-claim-")]


def test_a_target_the_client_cannot_claim_leaves_the_delta_to_the_client(daemon_with_set, rundir: str,
                                                                         monkeypatch) -> None:
    """No claim file can be made in the target (a directory the client may not write in): the
    daemon is not asked, and the client's own delta runs (and reports what it cannot mend)."""
    from cairn.client import cli, restoring
    from cairn.client.connection import Connection, resolve_endpoint

    d, set_id, _, _ = daemon_with_set
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target)
    real_open = os.open

    def no_claims(path, *args, **kwargs):
        if ".cairn-claim-" in os.fsdecode(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(restoring.os, "open", no_claims)
    args = cli.build_parser().parse_args(["restore", set_id, "--target", target, "--delta"])
    with Connection(resolve_endpoint(socket=d.socket)) as conn:
        assert restoring.delta_by_daemon(conn, args, lambda *_: None, cli.render) is None
    assert not [n for n in os.listdir(target) if n.startswith(".cairn-claim-")]


def test_a_daemon_delta_stops_when_its_client_goes_away(start_daemon: Callable[..., Daemon], rundir: str) -> None:
    """The daemon mends a target for a client on its host; the client cancels the call as soon as
    the first file is written back: the daemon stops (and says so in its log) long before every
    file is, and a second delta then finishes the work."""
    import secrets
    import time

    from cairn.fsio import claims
    from cairn.proto.cairn.v1 import cairn_pb2 as pb
    from cairn.proto.cairn.v1 import cairn_pb2_grpc

    src = os.path.join(rundir, "src")
    rng = random.Random(7)
    for i in range(6000):  # one chunk each: thousands of writes, far more than the cancel needs
        os.makedirs(os.path.join(src, f"d{i // 200:02d}"), exist_ok=True)
        with open(os.path.join(src, f"d{i // 200:02d}", f"f{i:04d}"), "wb") as f:
            f.write(rng.randbytes(4096))
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))["id"]
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target, timeout=120)
    want = snapshot(target)
    for i in range(6000):
        os.unlink(os.path.join(target, f"d{i // 200:02d}", f"f{i:04d}"))
    first = os.path.join(target, "d00", "f0000")  # the first file the delta writes (manifest order)

    nonce = secrets.token_hex(16)
    claims.make_claim(os.path.join(target, claims.CLAIM_PREFIX + nonce), nonce)
    with d.channel() as ch:
        call = cairn_pb2_grpc.CairnStub(ch).Restore(pb.RestoreRequest(
            set=set_id, local_claim=nonce, target_path=os.fsencode(target), delta=True, quick=True))
        end = time.monotonic() + 60
        while not (os.path.exists(first) and os.path.getsize(first) > 0):
            assert time.monotonic() < end, "the daemon never started writing"
            time.sleep(0.001)
        call.cancel()
    end = time.monotonic() + 60
    while "stopped: its client went away" not in d.log():
        assert time.monotonic() < end, "the daemon did not stop when its client went away"
        time.sleep(0.05)
    sizes = [os.path.getsize(p) if os.path.exists(p) else None
             for p in (os.path.join(target, f"d{i // 200:02d}", f"f{i:04d}") for i in range(6000))]
    written = sizes.count(4096)
    assert 1 <= written < 6000 and written + sizes.count(None) == 6000, "a file is in place only when complete"
    temps = [n for dd in os.listdir(target) if dd.startswith("d") for n in os.listdir(os.path.join(target, dd))
             if n.startswith(".cairn-delta-")]
    assert not temps, temps  # a delta that stops removes the temporary files of what it did not complete
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", timeout=120))
    assert r["written_by"] == "daemon" and r["files_written"] == 6000 - written
    assert snapshot(target) == want


@pytest.mark.parametrize("who", WHO)
def test_a_damaged_chunk_fails_only_the_files_that_need_it(own_daemon_with_set, rundir: str, who: str) -> None:
    """One chunk of the set is damaged in the repository: the delta (the daemon's, or the
    client's fed by RestoreChunks) mends every other damaged file, names the one it cannot
    mend, and exits 1 (as a plain restore does)."""
    from cairn.store.content.crypto import Secret
    from cairn.store.repository import Repository

    d, set_id, src, want = own_daemon_with_set
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target)
    pw = os.path.join(rundir, "repo.pass")
    secret = Secret("passphrase", open(pw, "rb").read().rstrip(b"\n")) if os.path.exists(pw) else None
    repo = Repository.open_local(os.path.join(rundir, "repo"), read_only=True, secret=secret)
    try:
        tree = {e.name: e for e in repo.load_tree(bytes.fromhex(repo.get_set(set_id).tree))}
        docs = {e.name: e for e in repo.load_tree(tree[b"docs"].subtree)}
        loc = repo.index.get(docs[b"n05.txt"].chunks[0])
    finally:
        repo.close()
    pack = os.path.join(rundir, "repo", "packs", loc.pack[:2], loc.pack)
    with open(pack, "r+b") as f:  # one flipped byte in that chunk's stored bytes
        f.seek(loc.offset + loc.stored_len // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x55]))
    for name in ("n05.txt", "n06.txt"):
        with open(os.path.join(target, "docs", name), "r+b") as f:
            f.write(b"damage")
    r = d.cli("--json", "restore", set_id, "--target", target, "--delta", *WHO[who])
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["written_by"] == who and report["files_written"] == 1
    assert len(report["errors"]) == 1 and "docs/n05.txt" in report["errors"][0], report["errors"]
    assert f"unable to read pack '{loc.pack[:8]}..'" in report["errors"][0], report["errors"]  # the reason
    got = snapshot(target)
    assert {k: v for k, v in got.items() if k != "docs/n05.txt"} == {k: v for k, v in want.items()
                                                                       if k != "docs/n05.txt"}


def test_the_daemon_never_restores_into_its_own_directories(own_daemon_with_set, rundir: str) -> None:
    """A delta with --delete into the daemon's state directory removed its journal and lock; a
    target that is, lies in or (with --delete) holds the repository or the state directory (or,
    with --delete, the socket) is refused, and nothing there changes."""
    d, set_id, src, want = own_daemon_with_set
    state = os.path.join(d.workdir, "home")  # $CAIRN_HOME: the state directory of a daemon without a config
    repo = os.path.join(rundir, "repo")
    def names(root: str) -> set[str]:  # what is there (the daemon may rewrite its own files meanwhile)
        return {os.path.relpath(os.path.join(dp, n), root) for dp, ds, fs in os.walk(root) for n in ds + fs
                if "locks" not in dp and not n.startswith(".tmp")}

    before = {p: names(p) for p in (state, repo)}
    for target, extra in ((state, ("--delta", "--delete")), (repo, ("--delta",)), (os.path.join(repo, "x"), ()),
                          (rundir, ("--delta", "--delete"))):
        os.makedirs(target, exist_ok=True)
        r = d.cli("restore", set_id, "--target", target, *extra, timeout=120)
        assert r.returncode == 1 and "the daemon never restores there" in r.stderr, (target, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    os.rmdir(os.path.join(repo, "x"))
    for p, had in before.items():
        assert names(p) == had, p


def test_a_daemon_delta_of_an_intact_tree_changes_nothing_not_even_the_targets_time(daemon_with_set,
                                                                                   rundir: str) -> None:
    """The claim file the client makes (and the daemon removes) is no change of the user's: a
    delta of an intact tree fixes nothing, and one of chosen paths leaves the target's own time
    as it was (the docs promise its metadata is left alone)."""
    d, set_id, src, want = daemon_with_set
    target = os.path.join(rundir, "intact")
    d.ok("restore", set_id, "--target", target, timeout=120)
    whole = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", timeout=120))
    assert whole["written_by"] == "daemon" and whole["metadata_fixed"] == 0 and whole["files_written"] == 0, whole
    os.utime(target, ns=(1_000_000_000, 2_000_000_000))
    chosen = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "docs", timeout=120))
    assert chosen["written_by"] == "daemon" and chosen["metadata_fixed"] == 0, chosen
    assert os.lstat(target).st_mtime_ns == 2_000_000_000


# ---- a tree nested deeper than PATH_MAX (4096 bytes) ----

DEEP = [f"{i:02d}" + "n" * 198 for i in range(25)]  # 25 directories of 200-byte names: ~5 KB of path


@contextlib.contextmanager
def down(root: str, parts: list[str]) -> Iterator[int]:
    """A descriptor of directory root/parts..., reached one name at a time (the path is too long
    for a system call), never through a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def put(dfd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=dfd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_deep_tree(root: str, rng: random.Random) -> None:
    os.makedirs(root)
    put_top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        put(put_top, "top.txt", b"top\n")
    finally:
        os.close(put_top)
    for depth in range(len(DEEP)):
        with down(root, DEEP[:depth]) as fd:
            os.mkdir(DEEP[depth], dir_fd=fd)
    with down(root, DEEP[:23]) as fd:
        put(fd, "mid.txt", rng.randbytes(3000))
    with down(root, DEEP) as fd:
        put(fd, "big.bin", rng.randbytes(CHUNKY))  # several chunks
        put(fd, "rewritten.bin", rng.randbytes(40_000))
        put(fd, "mode.txt", b"a mode to mend\n")
        put(fd, "gone.txt", b"deleted in the target\n")
        os.symlink("mode.txt", "link", dir_fd=fd)


def deep_snapshot(root: str) -> dict[str, tuple]:
    """snapshot() of a tree of any depth: every entry reached through its directory's descriptor."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames, dfd in os.fwalk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(name, dir_fd=dfd))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            else:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                with os.fdopen(fd, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, digest)
    return out


@pytest.mark.parametrize("who", WHO)
def test_a_tree_deeper_than_path_max_is_backed_up_restored_verified_and_mended(
        start_daemon: Callable[..., Daemon], rundir: str, who: str, capsys: pytest.CaptureFixture) -> None:
    """Every file of the tree lies more than 4096 bytes below the target: the backup stores it,
    a plain restore writes it, and --delta (the daemon's, or the client's with --stream) and
    --verify read and mend it through descriptors of its directories, as any shallow tree."""
    from cairn.client import cli, restoring
    from cairn.client.connection import Connection, resolve_endpoint

    src = os.path.join(rundir, "src")
    make_deep_tree(src, random.Random(25))
    deep = os.path.join(*DEEP)
    assert len(os.path.join(src, deep, "rewritten.bin")) > 5000
    want = deep_snapshot(src)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    s = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))
    assert not s.get("extra", {}).get("errors"), s["extra"]["errors"]
    assert s["stats"]["files"] == 6 and s["stats"]["dirs"] == 26, s["stats"]

    target = os.path.join(rundir, "restored")
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", target, *WHO[who], timeout=120))
    assert r["errors"] == [] and r["files"] == 6, r
    assert deep_snapshot(target) == want
    out = d.ok("restore", s["id"], "--target", target, "--delta", "--verify", *WHO[who], timeout=120)
    assert "wrote 0 B" in out and "verified" in out, out

    spans = chunk_spans(d, s["id"], f"{deep}/big.bin")
    assert len(spans) > 1
    with down(target, DEEP) as fd:
        big = os.open("big.bin", os.O_WRONLY | os.O_NOFOLLOW, dir_fd=fd)
        os.ftruncate(big, spans[-1][0] + 7)  # the last chunk cut short
        os.close(big)
        put(fd, "rewritten.bin", random.Random(1).randbytes(40_000))
        os.chmod("mode.txt", 0o600, dir_fd=fd)
        os.unlink("gone.txt", dir_fd=fd)
        put(fd, "extra.txt", b"not in the set\n")
    owed = spans[-1][1] + 40_000 + len(b"deleted in the target\n")

    # --verify of the damaged tree names the damaged deep files (and nothing is written)
    args = cli.build_parser().parse_args(["restore", s["id"], "--target", target, "--verify"])
    capsys.readouterr()
    with Connection(resolve_endpoint(socket=d.socket)) as conn:
        assert restoring.verify_target(conn, args, lambda *_: None, cli.render, cli.to_record) == 1
    err = capsys.readouterr().err
    for name in ("big.bin", "rewritten.bin", "mode.txt", "gone.txt"):
        assert f"{deep}/{name}" in err, (name, err[-2000:])

    dry = json.loads(d.ok("--json", "restore", s["id"], "--target", target, "--delta", "--delete", "--dry-run",
                          *WHO[who], timeout=120))
    assert dry["bytes_to_write"] == owed and dry["extras"] == [f"{deep}/extra.txt"], dry
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", target, "--delta", *WHO[who], timeout=120))
    assert r["errors"] == [] and r["written_by"] == who and r["bytes_written"] == owed, r
    # mode.txt, and the deepest directory (its time changed as entries went and came)
    assert r["files_written"] == 3 and r["metadata_fixed"] == 2 and r["extras_kept"] == 1, r
    got = deep_snapshot(target)
    assert got.pop(f"{deep}/extra.txt")[0] == "file"
    assert got == want
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", target, "--delta", "--delete", *WHO[who],
                        timeout=120))
    assert r["errors"] == [] and r["deleted"] == 1 and r["bytes_written"] == 0, r
    assert deep_snapshot(target) == want
    out = d.ok("restore", s["id"], "--target", target, "--delta", "--verify", *WHO[who], timeout=120)
    assert "wrote 0 B" in out and "verified" in out, out


# ---- a sparse file: what --dry-run counts is what the delta writes ----

MIB = 1 << 20


@pytest.mark.parametrize("who", WHO)
def test_the_dry_run_of_a_sparse_file_counts_the_bytes_the_delta_writes(
        start_daemon: Callable[..., Daemon], rundir: str, who: str) -> None:
    """A 64 MiB file holding 1 MiB of data at two offsets, missing from the target and then
    damaged in it: a delta leaves its zeros holes (written neither beyond the old end nor
    inside it, where they are punched), and the dry run before it counts those holes out too,
    not the chunks' sizes."""
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    rng = random.Random(64)
    with open(os.path.join(src, "disk.img"), "wb") as f:
        f.truncate(64 * MIB)
        for at in (8 * MIB + 12345, 40 * MIB):
            f.seek(at)
            f.write(rng.randbytes(MIB))
    with open(os.path.join(src, "small.txt"), "wb") as f:
        f.write(b"not sparse\n")
    assert os.stat(os.path.join(src, "disk.img")).st_blocks * 512 < 8 * MIB
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))["id"]
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target, timeout=120)
    image = os.path.join(target, "disk.img")

    def dry_then_real() -> int:
        dry = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--dry-run", *WHO[who],
                              timeout=120))
        real = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", *WHO[who], timeout=120))
        assert real["errors"] == [] and real["files_written"] == 1, real
        assert dry["bytes_to_write"] == real["bytes_written"], (dry, real)
        assert snapshot(target) == snapshot(src)
        assert os.stat(image).st_blocks * 512 < 8 * MIB  # still sparse
        return real["bytes_written"]

    os.unlink(image)  # missing: made anew
    written = dry_then_real()
    assert 2 * MIB <= written < 4 * MIB, written  # the data (in 64 KiB blocks), not 64 MiB
    with open(image, "r+b") as f:  # damaged: the second extent cut off, the first one changed
        f.truncate(20 * MIB)
        f.seek(8 * MIB + 12345 + 1000)
        f.write(b"\xff" * 5000)
    written = dry_then_real()
    assert MIB <= written < 4 * MIB, written


def _links(root: str) -> set[frozenset[str]]:
    """The groups of paths of `root` that share an inode."""
    groups: dict[int, set[str]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault(st.st_ino, set()).add(os.path.relpath(full, root))
    return {frozenset(g) for g in groups.values()}


def test_a_client_delta_spanning_many_windows_makes_the_tree_the_set_again(start_daemon: Callable[..., Daemon],
                                                                           rundir: str) -> None:
    """The client's own delta (--stream) of a tree of several thousand entries, taken a window
    of the manifest at a time: after damage in many directories (and a hard link whose two
    paths are windows apart, one of them sharing its inode with an extra) --delta --delete
    makes the tree equal to the set, writes what its dry run said, and --verify agrees."""
    rng = random.Random(99)
    src = os.path.join(rundir, "src")
    make_tree(src, rng)
    for i in range(5000):  # a few windows of entries, in 40 directories
        d = os.path.join(src, "many", f"d{i % 40:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:04d}"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 300)))
    os.link(os.path.join(src, "docs", "n01.txt"), os.path.join(src, "zz-link"))  # after 'many' in tree order
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full", timeout=180))["id"]
    want, links = snapshot(src), _links(src)
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target, "--stream", timeout=180)
    assert snapshot(target) == want and _links(target) == links

    owed, extras = damage(target, d, set_id, rng)
    shutil.rmtree(os.path.join(target, "many", "d07"))
    for i in range(0, 5000, 97):
        p = os.path.join(target, "many", f"d{i % 40:02d}", f"f{i:04d}")
        if os.path.exists(p):
            with open(p, "ab") as f:
                f.write(b"longer")
    with open(os.path.join(target, "many", "d31", "extra"), "wb") as f:
        f.write(b"not in the set")
    os.link(os.path.join(target, "zz-link"), os.path.join(target, "many", "d02", "outside"))

    dry = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--delete", "--dry-run",
                          timeout=180))
    assert set(dry["extras"]) == extras | {"many/d31/extra", "many/d02/outside"}, dry["extras"]
    assert "make hardlink zz-link" in dry["changes"] and "write docs/n01.txt (new file; " in " ".join(dry["changes"])
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--delete", "--stream",
                        timeout=180))
    assert r["written_by"] == "client" and r["errors"] == [], r
    assert r["bytes_written"] == dry["bytes_to_write"] >= owed and r["deleted"] == len(dry["extras"])
    assert snapshot(target) == want and _links(target) == links
    out = d.ok("restore", set_id, "--target", target, "--delta", "--delete", "--verify", "--stream", timeout=180)
    assert "wrote 0 B" in out and "deleted 0" in out and "verified" in out
