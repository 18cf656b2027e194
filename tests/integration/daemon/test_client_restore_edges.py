"""`cairn restore --delta` at its edges, through the real daemon and client.

- A delta the client writes itself (--stream) stopped at random points by SIGINT or SIGTERM
  leaves no `.cairn-delta-*` temporary file and no torn file (every file is as it was or as
  the set holds it); the client exits non-zero with one line; a complete delta then finishes.
  The points are drawn anew each run; a failure names the seed, and CAIRN_CRASH_SEED=<seed>
  draws the same points again.
- One delta per target at a time, whoever writes it (the client, or the daemon on this host):
  a second one is refused with one line naming the process that holds the target, and the
  first completes; a first one killed with -9 blocks nothing.
- Options may follow paths, and `--` ends options: `restore SET --target DIR -- -name`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from cairnd_harness import CAIRN, Daemon, env_for, snapshot

DIRS, PER_DIR, EMPTY = 4, 300, 150  # one-chunk files in d00..d07, empty files in e/
FIRST = os.path.join("d00", "f0000")  # the first file a delta writes (manifest order; missing in the old tree)
TEMP = ".cairn-delta-"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_src(root: str) -> None:
    rng = random.Random(5)
    for i in range(DIRS * PER_DIR):
        d = os.path.join(root, f"d{i // PER_DIR:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:04d}"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(1024, 6144)))
    os.makedirs(os.path.join(root, "e"))
    for i in range(EMPTY):
        open(os.path.join(root, "e", f"z{i:03d}"), "wb").close()


def contents(root: str) -> dict[str, str | None]:
    """rel -> sha256 of each file make_src makes (None: missing) under `root`."""
    out: dict[str, str | None] = {}
    names = [os.path.join(f"d{i // PER_DIR:02d}", f"f{i:04d}") for i in range(DIRS * PER_DIR)]
    for rel in names + [os.path.join("e", f"z{i:03d}") for i in range(EMPTY)]:
        try:
            with open(os.path.join(root, rel), "rb") as f:
                out[rel] = _sha(f.read())
        except FileNotFoundError:
            out[rel] = None
    return out


def make_old(pristine: str, target: str, outside: str) -> dict[str, str | None]:
    """`target` made an older copy of the set (from `pristine`, a restore of it): a quarter of
    the files missing, a quarter rewritten in place (same size), a quarter rewritten and linked
    from outside the target (the delta replaces them), a quarter as in the set; the empty files
    missing. Returns each file's old content (sha256; None: missing)."""
    for p in (target, outside):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(pristine, target, symlinks=True)
    os.makedirs(outside)
    rng = random.Random(9)
    for i in range(DIRS * PER_DIR):
        p = os.path.join(target, f"d{i // PER_DIR:02d}", f"f{i:04d}")
        if i % 4 == 0:
            os.unlink(p)
        elif i % 4 in (1, 2):
            size = os.path.getsize(p)
            with open(p, "r+b") as f:
                f.write(rng.randbytes(size))
            if i % 4 == 2:
                os.link(p, os.path.join(outside, f"f{i:04d}"))
    shutil.rmtree(os.path.join(target, "e"))
    os.makedirs(os.path.join(target, "e"))
    return contents(target)


def temps(root: str) -> list[str]:
    return [os.path.join(dp, n) for dp, dirs, files in os.walk(root) for n in dirs + files if n.startswith(TEMP)]


def start(d: Daemon, *args: str) -> subprocess.Popen:
    return subprocess.Popen([CAIRN, "--socket", d.socket, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env_for())


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.001)


def wait_first_write(proc: subprocess.Popen, target: str) -> None:
    """Until the delta `proc` runs wrote its first file (or ended)."""
    wait_until(lambda: os.path.exists(os.path.join(target, FIRST)) or proc.poll() is not None, "nothing written")


def lock_holder(path: str) -> int | None:
    """The pid holding an flock on directory `path` (/proc/locks), None when nobody does."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == dev:
                return int(parts[4])
    return None


@pytest.fixture
def many_files(start_daemon: Callable[..., Daemon], rundir: str) -> tuple[Daemon, str, str, dict]:
    """A daemon, a full set of make_src's tree, and a restore of it (`pristine`)."""
    src = os.path.join(rundir, "src")
    make_src(src)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))["id"]
    pristine = os.path.join(rundir, "pristine")
    d.ok("restore", set_id, "--target", pristine, timeout=120)
    return d, set_id, pristine, snapshot(src)


def test_an_interrupted_client_delta_leaves_no_temporary_and_no_torn_file(many_files, rundir: str) -> None:
    """SIGINT or SIGTERM at a random point of a client-side delta (--stream), measured from
    the first file it writes: no temporary file is left, every file is as it was or as the
    set holds it, and the client exits 130 or 143 with one line (or 0 when it had ended)."""
    d, set_id, pristine, want = many_files
    new = contents(pristine)
    target, outside = os.path.join(rundir, "t"), os.path.join(rundir, "outside")
    argv = ("restore", set_id, "--target", target, "--delta", "--stream")

    make_old(pristine, target, outside)
    proc = start(d, *argv)
    wait_first_write(proc, target)
    began = time.monotonic()
    out, err = proc.communicate(timeout=120)
    span = time.monotonic() - began  # how long writing takes: the interruptions fall inside it
    assert proc.returncode == 0, err
    assert snapshot(target) == want and not temps(target)

    seed = int(os.environ.get("CAIRN_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"CAIRN_CRASH_SEED={seed}")
    rng = random.Random(seed)
    results = []
    for sig in (signal.SIGINT, signal.SIGTERM) * 2:
        old = make_old(pristine, target, outside)
        proc = start(d, *argv)
        wait_first_write(proc, target)
        delay = rng.uniform(0, span)
        time.sleep(delay)  # the interruption point: random, not a wait for something
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        where = f"(CAIRN_CRASH_SEED={seed}, {sig.name} after {delay:.3f}s of {span:.3f}s, exit {proc.returncode})"
        assert not temps(target), f"temporary files left {where}: {temps(target)[:5]}"
        got = contents(target)
        torn = [rel for rel in new if got[rel] not in (old[rel], new[rel])]
        assert not torn, f"files neither old nor new {where}: {torn[:5]}"
        entries = {os.path.relpath(os.path.join(dp, n), target) for dp, ds, fs in os.walk(target) for n in ds + fs}
        assert entries <= set(want), f"entries the set does not hold {where}: {sorted(entries - set(want))[:5]}"
        if proc.returncode == 0 or proc.returncode == -signal.SIGTERM:  # the signal came after the delta ended
            assert got == new, where
        else:
            assert proc.returncode == 128 + sig, f"{where}\n{err}"
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("cairn: error: interrupted"), f"{where}\n{err}"
            results.append(sum(got[rel] == new[rel] != old[rel] for rel in new))
    assert results, f"no run was interrupted before it ended (CAIRN_CRASH_SEED={seed}, span {span:.3f}s)"

    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--stream", timeout=120))
    assert r["errors"] == [] and snapshot(target) == want and not temps(target)


WHO = {"daemon": (), "client": ("--stream",)}  # who writes a delta: the daemon on this host, or the client


def test_one_delta_per_target_at_a_time(many_files, rundir: str) -> None:
    """While a delta mends a target, its writer (the client with --stream, else the daemon)
    holds the target's lock; a second delta, the client's or the daemon's, is refused with one
    line naming the holder's pid and exit 1, writing nothing, and the first completes. (The
    holder is stopped with SIGSTOP while the second runs, so the first cannot end meanwhile.)"""
    d, set_id, pristine, want = many_files
    target, outside = os.path.join(rundir, "t"), os.path.join(rundir, "outside")
    for first, second in (("client", "client"), ("client", "daemon"), ("daemon", "client")):
        make_old(pristine, target, outside)
        one = start(d, "restore", set_id, "--target", target, "--delta", *WHO[first])
        writer = one.pid if first == "client" else d.proc.pid
        wait_until(lambda one=one, writer=writer: lock_holder(target) == writer or one.poll() is not None,
                   f"the {first}'s delta never locked the target")
        assert lock_holder(target) == writer, f"the {first}'s delta ended without holding the target's lock"
        os.kill(writer, signal.SIGSTOP)
        try:
            assert lock_holder(target) == writer and one.poll() is None, "the first delta ended before it was stopped"
            before = contents(target)
            r = d.cli("restore", set_id, "--target", target, "--delta", *WHO[second], timeout=30)
        finally:
            os.kill(writer, signal.SIGCONT)
        assert r.returncode == 1, (first, second, r.stdout, r.stderr)
        assert r.stderr.splitlines() == [f"cairn: error: a delta restore of '{target}' is running already "
                                         f"(pid {writer}): wait for it to end"], (first, second, r.stderr)
        assert contents(target) == before, (first, second)  # the second wrote nothing (the first was stopped)
        out, err = one.communicate(timeout=120)
        assert one.returncode == 0, (first, second, err)
        assert snapshot(target) == want and not temps(target), (first, second)
        assert not [n for n in os.listdir(target) if n.startswith(".cairn-claim-")], (first, second)
        assert lock_holder(target) is None, (first, second)


def test_a_delta_whose_client_is_killed_with_9_blocks_nothing(many_files, rundir: str) -> None:
    """The lock goes with its process: at once when the client wrote, once the daemon notices
    its client went away when the daemon wrote; the next delta then runs and finishes
    (--delete removes the temporary files a kill -9 may leave)."""
    d, set_id, pristine, want = many_files
    target, outside = os.path.join(rundir, "t"), os.path.join(rundir, "outside")
    for who in WHO:
        make_old(pristine, target, outside)
        one = start(d, "restore", set_id, "--target", target, "--delta", *WHO[who])
        wait_first_write(one, target)
        assert lock_holder(target) == (one.pid if who == "client" else d.proc.pid), who  # mid-delta
        one.kill()
        one.communicate(timeout=30)
        if who == "client":
            assert lock_holder(target) is None  # at once: the lock went with the process
        wait_until(lambda: lock_holder(target) is None, f"the {who}'s lock outlived the delta's client")
        r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", "--delete", *WHO[who],
                            timeout=120))
        assert r["errors"] == [] and snapshot(target) == want, who


def test_options_after_paths_and_dash_named_paths_after_double_dash(start_daemon: Callable[..., Daemon],
                                                                    rundir: str) -> None:
    """`ls latest --source S PATH` (a path after an option) lists PATH, and `restore SET --target
    DIR -- -name` restores the file named '-name', and nothing else."""
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "-dir"))
    os.makedirs(os.path.join(src, "docs"))
    for rel, data in (("-dash-named", b"dash\n"), ("docs/plain", b"plain\n"), ("-dir/inner", b"inner\n")):
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    s = json.loads(d.ok("--json", "backup", "--level", "full"))
    listed = json.loads(d.ok("--json", "ls", "latest", "--source", s["source"], "-r", "--", "-dir"))
    assert [e["name"] for e in listed] == ["inner"], listed
    listed = json.loads(d.ok("ls", "latest", "--source", s["source"], "--json", "docs", "--host", s["hostname"]))
    assert [e["name"] for e in listed] == ["plain"], listed

    target = os.path.join(rundir, "t")
    out = d.ok("restore", s["id"], "--target", target, "--", "-dash-named")
    assert ": 1 file, 0 dirs, 0 links, " in out, out
    assert sorted(os.listdir(target)) == ["-dash-named"]
    with open(os.path.join(target, "-dash-named"), "rb") as f:
        assert f.read() == b"dash\n"
    r = d.cli("restore", s["id"], "--target", os.path.join(rundir, "u"), "-dash-named")
    assert r.returncode == 2 and r.stderr.startswith("cairn: error: unrecognized arguments: -dash-named"), r.stderr


def test_times_beyond_int64_nanoseconds_cross_the_wire(start_daemon: Callable[..., Daemon], rundir: str) -> None:
    """A file dated after 2262 (ext4 keeps times to 2446) or before 1677: `ls`, a streamed
    restore and a delta carry its time exactly (one such file made every streamed restore of
    the set fail with 'Value out of range')."""
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    times = {"future": 10_413_792_000_123_456_000, "past": -10_000_000_000_000_000_000, "now": 1_700_000_000 * 10**9}
    for name, ns in times.items():
        with open(os.path.join(src, name), "wb") as f:
            f.write(name.encode())
        try:
            os.utime(os.path.join(src, name), ns=(ns, ns))
        except (OSError, OverflowError) as e:
            pytest.skip(f"this file system keeps no such time: {e}")
    kept = {name: os.lstat(os.path.join(src, name)).st_mtime_ns for name in times}  # as the file system holds it
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    d.ok("backup", "--level", "full")
    listed = {e["name"]: e["mtime_ns"] for e in json.loads(d.ok("--json", "ls", "latest"))}
    assert listed == kept
    assert "2300-" in d.ok("ls", "latest")
    for how in (("--stream",), ()):
        target = os.path.join(rundir, f"t{len(how)}")
        d.ok("restore", "latest", "--target", target, *how)
        assert {n: os.lstat(os.path.join(target, n)).st_mtime_ns for n in times} == kept, how
    os.utime(os.path.join(rundir, "t1", "future"), ns=(0, 0))
    d.ok("restore", "latest", "--target", os.path.join(rundir, "t1"), "--delta", "--stream")
    assert os.lstat(os.path.join(rundir, "t1", "future")).st_mtime_ns == kept["future"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_streamed_restore_stopped_by_a_signal_exits_128_plus_it(many_files, rundir: str, sig) -> None:
    """A plain restore the client writes (--stream), stopped by SIGINT or SIGTERM: one line,
    and the exit status says which signal (130 or 143), as the daemon-written one does."""
    d, set_id, _pristine, _want = many_files
    for attempt in range(5):
        target = os.path.join(rundir, f"s{sig}-{attempt}")
        proc = start(d, "restore", set_id, "--target", target, "--stream")
        wait_first_write(proc, target)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -sig):  # it ended before the signal came: try again
            break
    assert proc.returncode == 128 + sig, err
    assert err.splitlines()[0].startswith("cairn: error: interrupted"), err
