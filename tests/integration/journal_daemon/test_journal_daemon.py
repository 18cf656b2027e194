"""The change journal inside the real daemon: RPO sets without any client call, `cairn status`
showing the journal's state, and the backstop scan catching a change the journal missed."""

from __future__ import annotations

import json
import os
import re
import time

from cairnd_harness import snapshot
from journal_daemon_kit import metric, scrape, wait_until


def write(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def _sets(jd) -> list[dict]:
    data = json.loads(jd.daemon.ok("--json", "sets"))
    return data["sets"] if isinstance(data, dict) else data


def names_in(jd, set_id: str) -> set[str]:
    out = jd.daemon.ok("--json", "ls", set_id, "-r")
    data = json.loads(out)
    entries = data["entries"] if isinstance(data, dict) else data
    return {e["path"] for e in entries}


def test_rpo_takes_a_set_without_any_client_call(jd):
    write(os.path.join(jd.src, "a"), b"a")
    jd.write_config(source_rpo="2s")
    jd.start()
    jd.backup("full")
    # The start itself is an unprotected gap: RPO may take a set for it; let that settle.
    wait_until(lambda: jd.status()["oldest_unprotected_age"] is None and jd.status()["running"] is None,
               15, "nothing unprotected after the full")
    before = {s["id"] for s in _sets(jd)}
    changed_at = time.time()
    write(os.path.join(jd.src, "b"), b"b")
    new = wait_until(lambda: [s for s in _sets(jd) if s["id"] not in before], 15, "an RPO set")
    s = new[0]
    assert s["extra"]["reason"] == "rpo", s
    assert s["level"] == "incremental"
    assert s["extra"]["changes"] == "journal"
    assert s["time_start"] >= changed_at + 1.5  # it waited for the rpo, not less
    assert s["time_end"] - changed_at < 10
    assert "b" in names_in(jd, s["id"])
    st = jd.status()
    assert st["pending_paths"] == 0 and st["oldest_unprotected_age"] is None
    # Nothing changes: no further sets.
    time.sleep(3)
    assert len(_sets(jd)) == len(before) + 1


def test_status_shows_the_journal_state(jd):
    os.makedirs(os.path.join(jd.src, "d1", "d2"))
    write(os.path.join(jd.src, "d1", "f"), b"x")
    jd.start()
    st = jd.status()
    assert st["watch"] is True
    assert st["journal_state"] == "rescan"
    assert st["journal_reasons"] == ["source was never watched (whole source)"], st
    assert st["watches"] == 3
    plain = jd.daemon.ok("status")
    assert "journal: rescan pending: source was never watched (whole source)" in plain
    jd.backup("full")
    st = jd.status()
    assert st["journal_state"] == "complete" and st["journal_reasons"] == []
    assert st["pending_paths"] == 0 and st["oldest_unprotected_age"] is None
    assert "journal: complete" in jd.daemon.ok("status")
    assert "unprotected: nothing; watches: 3" in jd.daemon.ok("status")
    write(os.path.join(jd.src, "d1", "g"), b"y")
    os.mkdir(os.path.join(jd.src, "d3"))
    st = wait_until(lambda: (s := jd.status())["pending_paths"] >= 2 and s, 5, "pending changes")
    assert st["journal_state"] == "complete"
    assert st["oldest_unprotected_age"] is not None and st["oldest_unprotected_age"] < 30
    assert st["watches"] == 4
    assert re.search(r"unprotected: \d+ pending paths?, oldest change \d+s old; watches: 4", jd.daemon.ok("status"))
    jd.hook("overflow")
    st = wait_until(lambda: (s := jd.status())["journal_state"] == "rescan" and s, 5, "overflow in status")
    assert any("overflow" in r for r in st["journal_reasons"]), st
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "walk"
    assert any("overflow" in r for r in s["extra"]["walk_reasons"]), s["extra"]  # the set says why it walked
    assert jd.status()["journal_state"] == "complete"
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal" and "walk_reasons" not in s["extra"], s["extra"]
    jd.stop()
    jd.start()
    st = jd.status()
    assert st["journal_state"] == "rescan"
    assert any("restarted" in r for r in st["journal_reasons"]), st


def test_status_names_a_few_of_many_unwatched_directories_and_json_lists_every_one(jd):
    """Past the watch cap every directory is a reason of its own: --json lists each, while the
    text for people counts them and names the first few (thousands made a line of a megabyte)."""
    dirs = [os.path.join(jd.src, f"d{i:02}") for i in range(40)]
    for d in dirs:
        os.mkdir(d)
    jd.write_config(max_watches=5)
    jd.start()
    cause = "watch limit of 5 reached"
    for taken in ("before the first set", "after it"):  # pending entries, then the sticky ones
        st = wait_until(lambda: (s := jd.status())["watches"] == 5 and len(s["journal_reasons"]) >= 36 and s,
                        10, "the unwatched directories in status")
        named = [m.group(1) for r in st["journal_reasons"]
                 if (m := re.fullmatch(f"{cause}: '(.*)' is not watched", r))]
        assert len(named) == len(set(named)) == 40 - 4 and set(named) <= set(dirs), (taken, st["journal_reasons"])
        line = next(x for x in jd.daemon.ok("status").splitlines() if x.startswith("  journal: "))
        first = ", ".join(f"'{d}'" for d in sorted(named)[:3])
        assert f"{cause}: 36 directories are not watched: {first} and 33 more" in line, (taken, line)
        assert line.count(jd.src) == 3 and len(line) < 300, (taken, line)
        assert st["journal"] == line[len("  journal: "):]
        if taken == "before the first set":
            assert "source was never watched (whole source)" in st["journal_reasons"]
            jd.backup("full")


def test_backstop_finds_a_change_the_journal_missed(jd):
    for d in ("a", "b"):
        os.makedirs(os.path.join(jd.src, d))
        for i in range(5):
            write(os.path.join(jd.src, d, f"f{i}"), os.urandom(100))
    jd.write_config(backstop_interval="1s", metrics="127.0.0.1:0")
    d = jd.start()
    address = wait_until(lambda: re.search(r"metrics on http://([\d.]+:\d+)/metrics", d.log()), 5, "metrics").group(1)
    found = lambda: metric(scrape(address), "cairn_journal_backstop_found_total")  # noqa: E731
    jd.backup("full")
    jd.backup("incremental")
    # A change the journal saw is pending, not a miss: several scans pass without a finding.
    write(os.path.join(jd.src, "a", "f0"), b"seen", "ab")
    time.sleep(2.5)
    assert found() == 0
    assert jd.status()["journal_state"] == "complete"
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal" and s["stats"]["modified"] == 1
    # Now one the journal misses: the tracker drops events while the file grows.
    jd.hook("deaf")
    write(os.path.join(jd.src, "b", "f3"), b"hidden", "ab")
    assert jd.hook("hear") == "ok"
    st = wait_until(lambda: (x := jd.status())["journal_state"] == "rescan" and x, 10, "the backstop finding")
    assert any("backstop scan found 1 changes" in r and "b/f3" in r for r in st["journal_reasons"]), st
    assert found() == 1
    want = snapshot(jd.src)
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal"  # only the marked directory is walked
    assert s["stats"]["modified"] == 1
    jd.restore_equals(s["id"], want)
    assert jd.status()["journal_state"] == "complete"
    time.sleep(2.5)
    assert found() == 1  # nothing new found after the set took the change
    assert jd.hook("backstop") == {"app": []}


def test_a_file_written_continuously_is_no_older_unprotected_than_the_last_set(jd):
    """A file changed before a set and again while it ran stays pending after the set, but its
    oldest unprotected change is the set's start at the earliest, not the first change ever."""
    import threading

    log = os.path.join(jd.src, "app.log")
    write(log, os.urandom(48 << 20))  # large enough that each set runs while the log grows
    jd.start()
    stop = threading.Event()

    def writer() -> None:
        while not stop.wait(0.02):
            write(log, b"%.6f line\n" % time.time(), "ab")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        jd.backup("full")
        for _ in range(2):
            wait_until(lambda: (jd.status()["oldest_unprotected_age"] or 0) >= 2, 15, "an aging change")
            s = jd.backup("incremental")
            st = jd.status()
            assert st["pending_paths"] >= 1  # the log changed while the set ran
            assert st["oldest_unprotected_age"] <= time.time() - s["time_start"] + 1.0, (st, s)
    finally:
        stop.set()
        t.join()


def test_status_of_a_source_with_more_unwatched_directories_than_a_reply_lists_stays_bounded(jd):
    """Each unwatched directory is a reason; a status reply lists STATUS_REASONS of them and
    counts the rest in one more (67,000 of them made a reply larger than gRPC's 4 MiB, and
    `cairn status` failed)."""
    from cairn.daemon.rpc.servicer import STATUS_REASONS

    n = STATUS_REASONS + 150
    for i in range(n):
        os.mkdir(os.path.join(jd.src, f"d{i:05}"))
    jd.write_config(max_watches=5)
    jd.start()
    st = wait_until(lambda: (s := jd.status())["watches"] == 5 and len(s["journal_reasons"]) > STATUS_REASONS and s,
                    20, "the unwatched directories in status")
    reasons = st["journal_reasons"]
    assert len(reasons) == STATUS_REASONS + 1, len(reasons)
    total = n - 4 + 1  # every directory but the four watched below the root, and "never watched"
    more = total - STATUS_REASONS
    assert reasons[-1] == f"and {more} more reasons, not listed (the journal line counts them by cause)"
    line = next(x for x in jd.daemon.ok("status").splitlines() if x.startswith("  journal: "))
    assert f"watch limit of 5 reached: {n - 4} directories are not watched" in line, line
