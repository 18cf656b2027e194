"""cairn restore into an empty target on the daemon's host: the daemon writes the tree itself
(no data crosses gRPC; files of 16 MiB and more as lanes, one of them hardlinked), and the result
equals a streamed restore's, entry for entry. --stream, --overwrite into a non-empty target, and
patterns are honoured."""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Callable

from cairnd_harness import Daemon, snapshot


def make_tree(root: str, rng: random.Random) -> None:
    os.makedirs(os.path.join(root, "docs", "deep"))
    os.makedirs(os.path.join(root, "media"))
    for i in range(20):
        with open(os.path.join(root, "docs", f"n{i:02d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(10, 30_000)))
    with open(os.path.join(root, "media", "big.bin"), "wb") as f:
        f.write(rng.randbytes(3 << 20))
    for name, mib in (("huge-a.bin", 17), ("huge-b.bin", 18), ("huge-c.bin", 17)):  # large enough for lanes
        with open(os.path.join(root, "media", name), "wb") as f:
            f.write(rng.randbytes(mib << 20))
    os.chmod(os.path.join(root, "media", "huge-b.bin"), 0o400)
    os.link(os.path.join(root, "media", "huge-a.bin"), os.path.join(root, "zz-huge-again.bin"))
    with open(os.path.join(root, "docs", "deep", "leaf.txt"), "wb") as f:
        f.write(b"leaf\n")
    os.symlink("docs/deep/leaf.txt", os.path.join(root, "link"))
    os.link(os.path.join(root, "docs", "n01.txt"), os.path.join(root, "docs", "n01-again.txt"))
    os.chmod(os.path.join(root, "docs", "n03.txt"), 0o600)


def test_an_empty_target_is_written_by_the_daemon_and_equals_a_streamed_restore(
        start_daemon: Callable[..., Daemon], rundir: str) -> None:
    src = os.path.join(rundir, "src")
    make_tree(src, random.Random(99))
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    s = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))
    want = snapshot(src)

    local = os.path.join(rundir, "local")
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", local))
    assert r["written_by"] == "daemon" and r["errors"] == []
    assert snapshot(local) == want
    assert os.stat(os.path.join(local, "docs", "n01.txt")).st_ino == \
        os.stat(os.path.join(local, "docs", "n01-again.txt")).st_ino
    assert os.stat(os.path.join(local, "media", "huge-a.bin")).st_ino == \
        os.stat(os.path.join(local, "zz-huge-again.bin")).st_ino
    assert not [n for n in os.listdir(local) if n.startswith(".cairn-claim-")]

    streamed = os.path.join(rundir, "streamed")
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", streamed, "--stream"))
    assert "written_by" not in r
    assert snapshot(streamed) == want
    # the target directory itself is made alike either way
    assert stat.S_IMODE(os.stat(local).st_mode) == stat.S_IMODE(os.stat(streamed).st_mode)

    # patterns apply to a local write as to a stream
    part = os.path.join(rundir, "part")
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", part, "--include", "docs/deep/**"))
    assert r["written_by"] == "daemon"
    assert sorted(snapshot(part)) == ["docs", "docs/deep", "docs/deep/leaf.txt"]

    # --overwrite into a non-empty target: the client streams and writes it
    os.unlink(os.path.join(streamed, "docs", "n05.txt"))
    r = json.loads(d.ok("--json", "restore", s["id"], "--target", streamed, "--overwrite"))
    assert "written_by" not in r
    assert snapshot(streamed) == want

    # a non-empty target without --overwrite is refused as before, and nothing is written
    out = d.cli("restore", s["id"], "--target", streamed)
    assert out.returncode != 0 and "not empty" in out.stderr

    # an include that matches nothing (a typo) is an error on every route, and writes nothing
    for extra in ((), ("--stream",), ("--dry-run",)):
        miss = os.path.join(rundir, "miss" + "".join(extra).replace("-", ""))
        out = d.cli("restore", s["id"], "--target", miss, "--include", "docs/dep/**", *extra)
        assert out.returncode == 3, (extra, out.stdout, out.stderr)  # not found, as a path not in the set
        line = f"cairn: error: nothing to restore from set '{s['id'][:8]}': no path matches --include 'docs/dep/**'"
        assert out.stderr.strip().splitlines() == [line], (extra, out.stderr)
        assert not os.path.exists(miss) or os.listdir(miss) == [], extra
    out = d.cli("restore", s["id"], "--target", streamed, "--delta", "--include", "nope")
    assert out.returncode == 3 and "no path matches --include 'nope'" in out.stderr, out.stderr
    assert snapshot(streamed) == want
