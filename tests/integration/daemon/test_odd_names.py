"""Names a file system allows but a terminal does not show plainly (a newline, bytes that are not
UTF-8, a backslash) are listed by `cairn ls` as one escaped line each, unambiguously, and the
names --json gives restore those very files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from cairnd_harness import Daemon


def test_odd_names_are_listed_one_line_each_and_restore(start_daemon: Callable[..., Daemon], rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    names = {b"a\nb": b"newline", b"\xff\xfe": b"latin", b"\\xff\\xfe": b"literal", b"back\\slash": b"slash"}
    for name, body in names.items():
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(body)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    s = json.loads(d.ok("--json", "backup", "--level", "full"))
    lines = d.ok("ls", s["id"]).splitlines()
    shown = sorted(line.split("  ")[-1].strip() for line in lines if line.startswith("-"))
    assert shown == sorted(["a\\nb", "\\xff\\xfe", "\\\\xff\\\\xfe", "back\\\\slash"]), lines
    assert len(lines) == len(names)
    for e in json.loads(d.ok("--json", "ls", s["id"])):
        target = os.path.join(rundir, f"t-{len(os.listdir(rundir))}")
        d.ok("restore", s["id"], "--target", target, e["path"])
        with open(os.path.join(os.fsencode(target), os.fsencode(e["path"])), "rb") as f:
            assert f.read() == names[os.fsencode(e["name"])]


def test_a_directory_chain_deeper_than_pythons_default_recursion_limit(start_daemon, rundir) -> None:
    """1,200 nested directories (a path of 2.4 KB, well under PATH_MAX): the daemon's walks
    recurse once per level; with the interpreter's default limit of 1,000 every set failed
    ('RecursionError') and the watcher's thread died."""
    src = os.path.join(rundir, "src")
    os.mkdir(src)
    deep = src
    for _ in range(1200):  # os.makedirs and shutil.rmtree recurse too: one level at a time here
        deep = os.path.join(deep, "a")
        os.mkdir(deep)
    with open(os.path.join(deep, "bottom.txt"), "w") as f:
        f.write("bottom\n")
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))["id"]
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target, timeout=120)
    with open(os.path.join(target, os.path.relpath(deep, src), "bottom.txt")) as f:
        assert f.read() == "bottom\n"
    assert "RecursionError" not in d.log() and "Exception in thread" not in d.log()
    for top in (src, target):  # the fixture's rmtree would recurse as deep: take the chains down first
        os.unlink(os.path.join(top, os.path.relpath(deep, src), "bottom.txt"))
        path = os.path.join(top, os.path.relpath(deep, src))
        while path != top:
            os.rmdir(path)
            path = os.path.dirname(path)


def test_a_file_with_two_names_not_utf8_written_between_sets(start_daemon: Callable[..., Daemon], rundir: str) -> None:
    """A write to a file with several names, one of them not UTF-8: the watcher distrusts the
    source and records why, naming the file. That reason (with the name's undecodable bytes)
    once failed the journal's whole batch ('surrogates not allowed'), the journal's thread died,
    the daemon stopped its watchdog pings and every later backup failed with an internal error."""
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "sub"))
    first, second = os.path.join(os.fsencode(src), b"bad\xff\xfe"), os.path.join(os.fsencode(src), b"sub", b"other")
    with open(first, "wb") as f:
        f.write(b"before\n")
    os.link(first, second)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    d.ok("backup", "--level", "full")
    with open(first, "r+b") as f:  # through the name that is not UTF-8
        f.write(b"after!\n")
    set_id = json.loads(d.ok("--json", "backup", "--level", "incremental"))["id"]
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target)
    for name in (b"bad\xff\xfe", b"sub/other"):
        with open(os.path.join(os.fsencode(target), name), "rb") as f:
            assert f.read() == b"after!\n"
    assert os.stat(os.path.join(os.fsencode(target), b"bad\xff\xfe")).st_nlink == 2
    assert "thread change-journal failed" not in d.log() and "unhealthy" not in d.log()
