"""Figures the operator sees, through the real daemon, its change journal and the cairn client:
a journal-driven set reports the whole tree's totals (as a full walk counts them) and, apart,
what it walked and read; restore progress counts against what is being restored."""

from __future__ import annotations

import json
import os
import re
import time

from cairnd_harness import init_repo


def config_text(tmp_path, rundir) -> tuple[str, str]:
    sock = os.path.join(rundir, "fg.sock")
    repo = init_repo(str(tmp_path / "repo"))
    lines = ["[repository]", f'path = "{repo}"', "[daemon]", f'socket = "{sock}"',
             f'state_dir = "{tmp_path / "state"}"', "[[source]]", 'name = "tree"',
             f'paths = ["{tmp_path / "tree"}"]']
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path), sock


def sets_of(d, source: str) -> list[dict]:
    return json.loads(d.ok("--json", "sets", "--source", source))


def journal_clean(d, source: str) -> bool:
    s = [x for x in json.loads(d.ok("--json", "status"))["sources"] if x["name"] == source][0]
    return s["journal_state"] == "complete" and s["pending_paths"] == 0


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def make_tree(root) -> None:
    for top in ("a", "b", "c"):
        for sub in ("x", "y"):
            d = root / top / sub
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"f{i}.dat").write_bytes(os.urandom(1000 + i))


def test_journal_driven_set_reports_tree_totals_and_apart_what_it_walked(start_daemon, tmp_path, rundir):
    make_tree(tmp_path / "tree")
    config, sock = config_text(tmp_path, rundir)
    d = start_daemon("--config", config, socket_path=sock)
    d.ok("backup", "--source", "tree", "--level", "full")
    wait_for(lambda: journal_clean(d, "tree"), 30, "the journal of 'tree' to be complete")
    (tmp_path / "tree" / "a" / "x" / "f0.dat").write_bytes(os.urandom(5000))
    wait_for(lambda: not journal_clean(d, "tree"), 30, "the journal to see the change")
    out = d.ok("backup", "--source", "tree", "--level", "incremental")
    full, inc = sorted(sets_of(d, "tree"), key=lambda s: s["time_start"])
    assert inc["extra"].get("changes") == "journal", inc["extra"]
    # The whole tree, as a full walk counts it: 18 files, 10 directories, the new size.
    assert inc["stats"]["files"] == full["stats"]["files"] == 18
    assert inc["stats"]["dirs"] == full["stats"]["dirs"] == 10
    assert inc["stats"]["bytes_total"] == full["stats"]["bytes_total"] - 1000 + 5000
    # What was walked and read: only a/x's three files (its two others may be re-read: written
    # too recently before the full set for their stat data to be trusted).
    assert full["stats"]["files_walked"] == 18
    assert inc["stats"]["files_walked"] == 3 and 5000 <= inc["stats"]["bytes_read"] <= 5000 + 2003
    assert inc["stats"]["modified"] == 1
    assert "18 files" in out and "walked 3 files" in out, out
    rows = d.ok("sets", "--source", "tree").splitlines()
    at = rows[0].split().index("FILES") + 1  # TIME is two words
    assert [r.split()[at] for r in rows[1:]] == ["18", "18"], rows


def first_progress(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("restore: "))


def test_restore_progress_totals_are_those_of_the_chosen_paths_and_patterns(start_daemon, tmp_path, rundir):
    make_tree(tmp_path / "tree")
    (tmp_path / "tree" / "big.bin").write_bytes(os.urandom(200_000))
    config, sock = config_text(tmp_path, rundir)
    d = start_daemon("--config", config, socket_path=sock)
    set_id = d.ok("backup", "--source", "tree", "--level", "full").split()[-1]
    whole = first_progress(d.ok("restore", set_id, "--target", str(tmp_path / "r0")))
    assert "/19 files, " in whole, whole
    # One directory: its 6 files and 6009 bytes, not the whole set's 19 files (the totals; what
    # is done so far depends on whether the daemon or this client writes)
    line = first_progress(d.ok("restore", set_id, "b", "--target", str(tmp_path / "r1")))
    assert re.search(r" [0-6]/6 files, [^/]+/5\.9 KiB", line), line
    # A pattern: the 6 files named f1.dat, 1001 bytes each.
    line = first_progress(d.ok("restore", set_id, "--include", "f1.dat", "--target", str(tmp_path / "r2")))
    assert re.search(r" [0-6]/6 files, [^/]+/5\.9 KiB", line), line
    line = first_progress(d.ok("restore", set_id, "b", "--stream", "--target", str(tmp_path / "r3")))
    assert re.search(r" [0-6]/6 files, [^/]+/5\.9 KiB", line), line


def test_incremental_backup_progress_has_an_estimated_total_from_the_base(start_daemon, tmp_path, rundir):
    make_tree(tmp_path / "tree")
    config, sock = config_text(tmp_path, rundir)
    d = start_daemon("--config", config, socket_path=sock)
    d.ok("backup", "--source", "tree", "--level", "full")
    # A changed file big enough that reading it outlasts the first progress event.
    (tmp_path / "tree" / "z").mkdir()
    (tmp_path / "tree" / "z" / "big.bin").write_bytes(os.urandom(64 << 20))
    out = d.ok("backup", "--source", "tree", "--level", "incremental", timeout=120)
    lines = [line for line in out.splitlines() if line.startswith("incremental backup of 'tree'")]
    assert lines and all(len(line) <= 80 for line in lines), out
    # Files against the base's 18 (estimated, marked ~); bytes read with no total.
    assert any("/~18 files, " in line for line in lines), out
