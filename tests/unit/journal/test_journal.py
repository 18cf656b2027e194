"""The journal database on its own: dedup, sequence, protection marks, purge, durability."""

from __future__ import annotations

import os
import sqlite3

import pytest
from cairn.daemon.changes.journal import Change, Journal, JournalError


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path / "journal.sqlite"))
    yield j
    j.close()


def ch(path: str, t: float = 1.0, kind: str = "path", source: str = "app", reason: str = "") -> Change:
    return Change(source, kind, path, t, reason)


def test_wal_mode_and_sequence_grows(journal):
    mode = sqlite3.connect(journal.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    journal.record([ch("/s/a"), ch("/s/b")])
    first = journal.seq
    journal.record([ch("/s/c")])
    assert journal.seq == first + 1 and first >= 2


def test_upsert_keeps_first_seen_and_newest_seq(journal):
    journal.record([ch("/s/a", 10.0)])
    journal.record([ch("/s/a", 20.0)])
    rows = journal.entries_after("app", 0)
    assert len(rows) == 1
    assert rows[0].first_seen == 10.0 and rows[0].seq == journal.seq


def test_a_path_written_stays_written_until_a_set_protects_it(journal):
    """The set after a write reads the file even when its stat data did not move (a write
    through a shared mapping): a later event that only names it, in the same batch or after,
    does not take that back; once a set protected it, the next events say anew."""
    journal.record([ch("/s/f", reason="written"), ch("/s/f"), ch("/s/g"), ch("/s/g", reason="written")])
    journal.record([ch("/s/f"), ch("/s/h")])
    journal.record([ch("/s/h", reason="written")])
    assert {e.path: e.reason for e in journal.entries_after("app", 0)} == \
        {"/s/f": "written", "/s/g": "written", "/s/h": "written"}
    journal.commit("app", "incremental", "I1", journal.seq)
    journal.record([ch("/s/f")])
    assert [(e.path, e.reason) for e in journal.entries_after("app", journal.marks("app").set_seq)] == [("/s/f", "")]


def test_same_path_of_other_kind_or_source_is_separate(journal):
    journal.record([ch("/s/d"), ch("/s/d", kind="tree"), ch("/s/d", source="other")])
    assert {(e.kind, e.path) for e in journal.entries_after("app", 0)} == {("path", "/s/d"), ("tree", "/s/d")}
    assert len(journal.entries_after("other", 0)) == 1


def test_unknown_kind_is_refused(journal):
    with pytest.raises(ValueError):
        journal.record([ch("/s/a", kind="bogus")])


def test_commit_protects_up_to_token_only(journal):
    journal.record([ch("/s/a", 1.0)])
    token = journal.seq
    journal.record([ch("/s/b", 2.0)])
    journal.commit("app", "incremental", "I1", token)
    pending = journal.pending("app")
    assert pending.count == 1 and pending.oldest == 2.0
    marks = journal.marks("app")
    assert marks.set_id == "I1" and marks.set_seq == token and marks.full_id is None
    # the protected entry is still there for a differential against the (older) full
    assert {e.path for e in journal.entries_after("app", 0)} == {"/s/a", "/s/b"}


def test_protected_path_changed_again_gets_new_first_seen(journal):
    journal.record([ch("/s/a", 1.0)])
    journal.commit("app", "incremental", "I1", journal.seq)
    assert journal.pending("app").oldest is None
    journal.record([ch("/s/a", 5.0)])
    assert journal.pending("app").oldest == 5.0
    journal.record([ch("/s/a", 9.0)])          # still unprotected: first seen stays
    assert journal.pending("app").oldest == 5.0


def test_a_batch_writes_each_path_once_and_ends_as_its_changes_one_by_one_would(journal, tmp_path):
    """A file written many times between two flushes is one row write, and the journal
    ends exactly as recording the batch's changes one at a time leaves it (first seen, reason,
    sequence order), whether the path was protected by a set or not."""
    batch = []
    for i in range(200):
        batch += [ch("/s/log", 10.0 + i), ch("/s/db", 10.5 + i), ch("/s", 10.7 + i)]
    batch += [ch("/s/new", 9000.0), ch("/s/log", 9001.0, kind="tree", reason="new directory"), ch("/s/db", 9002.0)]
    one_by_one = Journal(str(tmp_path / "one.sqlite"))
    try:
        for j in (journal, one_by_one):  # the same history before: /s/db protected, /s unprotected
            j.record([ch("/s/db", 1.0), ch("/s", 2.0)])
            j.commit("app", "incremental", "I1", j.seq)
            j.record([ch("/s", 3.0)])
        writes = []
        journal._db.set_trace_callback(lambda sql: writes.append(sql) if "INSERT INTO entries" in sql else None)
        journal.record(batch)
        journal._db.set_trace_callback(None)
        for c in batch:
            one_by_one.record([c])
        assert len(writes) == 5
        assert journal.seq == one_by_one.seq

        def rows(j: Journal) -> list[tuple]:
            return [(e.kind, e.path, e.seq, e.first_seen, e.reason) for e in j.entries_after("app", 0)]
        assert rows(journal) == rows(one_by_one)
        assert {e.path: e.first_seen for e in journal.entries_after("app", 0) if e.kind == "path"} == {
            "/s/log": 10.0, "/s/db": 10.5, "/s": 3.0, "/s/new": 9000.0}
        assert journal.pending("app") == one_by_one.pending("app")
    finally:
        one_by_one.close()


def test_full_commit_purges_what_no_base_needs(journal):
    journal.record([ch("/s/a"), ch("", kind="source", reason="restart")])
    token = journal.seq
    journal.record([ch("/s/late")])
    journal.commit("app", "full", "F1", token)
    assert [e.path for e in journal.entries_after("app", 0)] == ["/s/late"]
    marks = journal.marks("app")
    assert marks.full_id == "F1" and marks.full_seq == token and marks.set_id == "F1"


def test_pending_lists_trust_entries(journal):
    journal.record([ch("/s/a"), ch("/s/d", kind="tree", reason="new directory"),
                    ch("/s/x", kind="rescan", reason="watch limit"), ch("", kind="source", reason="overflow")])
    pending = journal.pending("app")
    assert pending.count == 4
    assert [(e.kind, e.reason) for e in pending.trust] == [("rescan", "watch limit"), ("source", "overflow")]


def test_durable_across_reopen_and_sequence_never_reused(tmp_path):
    path = str(tmp_path / "j.sqlite")
    j = Journal(path)
    j.record([ch("/s/a", 3.0)])
    j.commit("app", "full", "F1", j.seq)      # purges everything: the counter must survive anyway
    j.record([ch("/s/b", 4.0)])
    seq = j.seq
    j.close()
    j2 = Journal(path)
    assert j2.seq == seq
    assert [(e.path, e.first_seen) for e in j2.entries_after("app", 0)] == [("/s/b", 4.0)]
    assert j2.marks("app").full_id == "F1"
    j2.record([ch("/s/c")])
    assert j2.seq == seq + 1
    j2.close()


def test_sessions_tell_clean_from_unclean(tmp_path):
    path = str(tmp_path / "j.sqlite")
    j = Journal(path)
    assert j.begin_session(100.0) is None
    j.end_session(200.0)
    assert j.begin_session(300.0).clean
    j.close()                                   # no end_session: the daemon died
    j2 = Journal(path)
    previous = j2.begin_session(400.0)
    assert previous is not None and not previous.clean and previous.started == 300.0
    j2.close()


def test_non_utf8_paths_round_trip(journal):
    name = os.fsdecode(b"/s/caf\xe9")
    journal.record([ch(name)])
    assert journal.entries_after("app", 0)[0].path == name


def test_newer_format_is_refused(tmp_path):
    path = str(tmp_path / "j.sqlite")
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(JournalError, match="unable to open change journal"):
        Journal(str(path))


def test_a_path_changed_again_while_its_set_ran_is_first_seen_at_the_sets_start(journal):
    # written continuously: changed before the set's token and again while the set ran
    journal.record([ch("/s/log", 100.0), ch("/s/other", 150.0)])
    token, prepared_at = journal.seq, 200.0
    journal.record([ch("/s/log", 250.0), ch("/s/new", 260.0)])
    journal.commit("app", "incremental", "I1", token, now=300.0, prepared_at=prepared_at)
    pending = journal.pending("app")
    # the row is still pending (its newest change is after the token), but no longer as old
    # as the change the set protected: its first change after the token came at 200 at the earliest
    assert pending.count == 2 and pending.oldest == 200.0
    assert {e.path: e.first_seen for e in journal.entries_after("app", token)} == {"/s/log": 200.0, "/s/new": 260.0}
    # a set that fails commits nothing: the oldest change stays the oldest
    journal.record([ch("/s/log", 400.0)])
    assert journal.pending("app").oldest == 200.0


def test_a_full_disk_is_the_error_raised_and_the_journal_goes_on_once_there_is_room(journal):
    """SQLite rolls a transaction back itself when the disk is full; the journal's own rollback
    must not then replace that error with "cannot rollback - no transaction is active", and
    nothing of the failed batch may remain."""
    journal.record([ch("before")])
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk were full
    big = [ch(f"{'x' * 200}/{i}") for i in range(5000)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        journal.record(big)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for i in range(50):
            journal.commit("app", "incremental", f"set{i}", 1, prepared_at=float(i))
            journal.record([ch(f"{'y' * 300}/{i}/{j}") for j in range(200)])
    assert not journal._db.in_transaction
    journal._db.execute("PRAGMA max_page_count = 1000000")
    journal.record([ch("after")])
    paths = {e.path for e in journal.entries_after("app", 0)}
    assert "before" in paths and "after" in paths and not any(p.startswith("x") for p in paths)
