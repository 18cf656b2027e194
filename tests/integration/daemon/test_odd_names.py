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
