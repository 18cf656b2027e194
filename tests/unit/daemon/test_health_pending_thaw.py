"""The health record of a window a previous daemon left open and could not thaw ("thaw failed",
`pending_thaw`: shown until a thaw of it succeeds, across restarts, never replaced by the
"aborted" report of its set), a record checked field by field on load, and the client showing
'?' for times no clock can show."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from cairn.client import render
from cairn.daemon.runtime.health import THAW_FAILED, HealthRecord, leftover_thaw
from cairn.daemon.windows.records import WindowRecord, remove_record, write_record
from cairn.proto.cairn.v1 import cairn_pb2 as pb

ERROR = "thaw hook (start-app) failed with exit code 3: app will not start"


def leave_window(state: str, source: str) -> None:
    """The record of a window whose thaw failed (kept, so that the thaw is retried)."""
    write_record(state, WindowRecord(source, "cold", 1, 1000.0, 60.0))


def start(state: str, failed: dict[str, str]) -> HealthRecord:
    """What a start does: settle the thaws (main.thaw_leftover_windows), then the service's
    record settles the interrupted sets."""
    HealthRecord(state).settle_thaws(failed)
    h = HealthRecord(state)
    h.settle_interrupted([])
    return h


def test_a_failed_thaw_at_start_is_the_last_failure_and_not_replaced_by_the_aborted_set(tmp_path: Path) -> None:
    state = str(tmp_path)
    before = HealthRecord(state)
    before.begin("app", "full")  # killed inside this set's window
    before.begin("other", "incremental")  # killed too, its window (if any) thawed
    leave_window(state, "app")

    h = start(state, {"app": ERROR})
    f = h.failure("app")
    assert f is not None and f.status == THAW_FAILED and f.pending_thaw and f.level == "full"
    assert ERROR in f.message and "the application may still be stopped" in f.message
    # the set the other source was taking is still reported: the save of the thaws kept it
    assert h.failure("other") is not None and h.failure("other").status == "aborted"
    saved = json.loads((tmp_path / "health.json").read_text())
    assert saved["failures"]["app"]["pending_thaw"] is True and saved["running"] == {}

    again = start(state, {"app": ERROR})  # still failing at the next start
    assert again.failure("app").pending_thaw and again.failure("app").status == THAW_FAILED


def test_a_set_refused_while_the_thaw_fails_stays_thaw_failed_and_a_successful_retry_clears_it(
        tmp_path: Path) -> None:
    state = str(tmp_path)
    leave_window(state, "app")
    h = start(state, {"app": ERROR})
    refused = ("the quiesce window of source 'app' left open by a previous daemon still does not thaw "
               f"({ERROR}): the application may still be stopped; no set of the source is taken")

    # the set's window retried the thaw, it failed (told to the record this process keeps), the set is refused
    h.begin("app", "incremental")
    leftover_thaw(state, "app", refused)
    assert h.failure("app").message == refused and h.failure("app").level == "incremental"
    h.end("app")
    h.set_failed("app", "incremental", refused)
    f = h.failure("app")
    assert (f.status, f.pending_thaw, f.level, f.message) == (THAW_FAILED, True, "incremental", refused)
    # a failure of another kind while the window has not thawed still says so
    h.set_failed("app", "full", "unable to reach the repository")
    f = h.failure("app")
    assert f.status == THAW_FAILED and f.pending_thaw
    assert f.message.startswith("unable to reach the repository; the quiesce window a previous daemon left open "
                                "has not thawed yet: the application may still be stopped")
    assert HealthRecord(state).failure("app") == f  # as saved

    # the next set's window retried the thaw and it succeeded: cleared, on disk too
    h.begin("app", "incremental")
    leftover_thaw(state, "app", None)
    assert h.failure("app") is None and HealthRecord(state).failure("app") is None
    # and a failure after that is an ordinary one
    h.set_failed("app", "full", "boom")
    assert (h.failure("app").status, h.failure("app").pending_thaw) == ("failed", False)
    leftover_thaw(state, "app", None)  # an ordinary failure is not a pending thaw: it stays
    assert h.failure("app").message == "boom"


def test_a_report_for_a_state_directory_without_a_record_in_this_process_is_dropped(tmp_path: Path) -> None:
    leftover_thaw(str(tmp_path / "elsewhere"), "app", "still fails")
    assert not (tmp_path / "elsewhere").exists()


def test_a_later_start_that_thaws_the_window_drops_the_pending_thaw(tmp_path: Path) -> None:
    state = str(tmp_path)
    leave_window(state, "app")
    start(state, {"app": ERROR})
    h0 = HealthRecord(state)
    h0.set_failed("db", "full", "dump failed")  # an ordinary failure of another source stays
    remove_record(state, "app")
    h = start(state, {})
    assert h.failure("app") is None and h.failure("db").message == "dump failed"


def test_each_bad_entry_of_the_record_is_dropped_with_a_log_line_and_the_rest_kept(tmp_path: Path,
                                                                                   caplog) -> None:
    good = {"level": "full", "time": 1700000000.0, "message": "boom", "status": "failed"}
    pending = {**good, "status": THAW_FAILED, "pending_thaw": True}
    (tmp_path / "health.json").write_text(json.dumps({
        "failures": {
            "ok": good, "pending": pending,
            "nan": {**good, "time": math.nan}, "inf": {**good, "time": math.inf},
            "far": {**good, "time": 1e300}, "negative": {**good, "time": -5},
            "boolean": {**good, "time": True}, "text": {**good, "time": "yesterday"},
            "level": {**good, "level": 3}, "flag": {**good, "pending_thaw": "yes"}, "list": [1, 2],
            "missing": {"level": "full"},
        },
        "running": {"app": {"level": "full", "time": 1700000000}, "bad": {"level": "full", "time": math.inf}},
        "wal": {"segment": "zzzzzzzzzzzzzzzzzzzzzzzz", "time": 5.0},
    }))
    with caplog.at_level(logging.WARNING):
        h = HealthRecord(str(tmp_path))
    assert set(h.failures) == {"ok", "pending"} and h.failure("pending").pending_thaw
    assert h.failure("ok").time == 1700000000.0
    assert h.interrupted == {"app": {"level": "full", "time": 1700000000.0}}
    assert (h.wal_segment, h.wal_time) == ("", 0.0)  # a bogus name would hide every later segment
    h.wal_stored("000000010000000000000002", when=7.0)
    assert h.wal_segment == "000000010000000000000002"
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    for name in ("nan", "inf", "far", "negative", "boolean", "text", "level", "flag", "list", "missing", "bad"):
        assert any(f"source '{name}'" in m for m in dropped), (name, dropped)
    assert any("wal segment is not a segment name" in m for m in dropped)
    assert len(dropped) == 12


def test_a_record_that_is_not_an_object_starts_afresh(tmp_path: Path, caplog) -> None:
    for text in ("[1, 2]", '{"failures": [1], "running": 7, "wal": "x"}', "[" * 100000):
        (tmp_path / "health.json").write_text(text)
        h = HealthRecord(str(tmp_path))
        assert h.failures == {} and h.interrupted == {} and h.wal_segment == ""
    h.set_failed("app", "full", "boom")
    assert HealthRecord(str(tmp_path)).failure("app").message == "boom"


def test_times_no_clock_can_show_are_question_marks() -> None:
    for t in (math.nan, math.inf, -math.inf, 1e300, -1e300, 253402300800.0 * 10):
        assert render.fmt_time(t) == "?" and render.fmt_time(t, "%H:%M:%S") == "?"
    assert render.fmt_time(0) == "-" and render.fmt_time(86400 * 365).startswith("1971-")
    for age in (math.nan, math.inf, -math.inf, 1e300, -1e11):
        assert render.fmt_age(age) == "?"
    assert (render.fmt_age(90), render.fmt_age(-5), render.fmt_age(3 * 86400)) == ("90s", "0s", "3d")
    s = pb.SourceStatus(name="app", last_success=1700000000.0)
    s.last_failure.CopyFrom(pb.SourceFailure(time=math.inf, level="full", status=THAW_FAILED, message="x"))
    lines = render.health_lines(s, 1700000100.0)
    assert lines[1] == "  last failure: ? (? ago, after the last success), full thaw failed: x"
    row = render.set_row(pb.SetInfo(id="a" * 64, time_start=math.nan, time_end=math.inf, source="app"))
    assert row[1:3] == ("?", "?")

