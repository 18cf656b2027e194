"""The health record (last failure per source, last WAL) across restarts, the metrics it
restores, and unexpected errors logged as one line with their cause (traceback only at debug)."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from cairn.daemon.runtime.health import HealthRecord, last_successes, restore_metrics
from cairn.daemon.runtime.logs import setup_logging
from cairn.daemon.runtime.metrics import Metrics
from cairn.store.model import BackupSet, SetStats


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_unexpected_error_is_one_line_with_its_cause_and_no_traceback(restore_root_logger):
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        logging.getLogger("cairn.x").exception("backup of source 'app' failed unexpectedly")
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert 'error="OSError: [Errno 5] Input/output error"' in line
    assert "Traceback" not in line and "exc=" not in line


def test_health_record_survives_a_restart_and_ignores_older_wal(tmp_path):
    h = HealthRecord(str(tmp_path))
    h.set_failed("app", "incremental", "unable to read 'x':\n permission denied", when=100.0)
    h.wal_stored("000000010000000000000005", when=200.0)
    h.wal_stored("000000010000000000000003", when=300.0)  # older name: not the newest
    h.wal_stored("00000002.history", when=400.0)  # not a segment
    again = HealthRecord(str(tmp_path))
    f = again.failure("app")
    assert (f.level, f.time, f.message, f.status) == ("incremental", 100.0, "unable to read 'x': permission denied",
                                                      "failed")
    assert (again.wal_segment, again.wal_time) == ("000000010000000000000005", 200.0)
    assert again.failure("other") is None


def test_unreadable_health_record_starts_afresh(tmp_path, caplog):
    (tmp_path / "health.json").write_text("{not json")
    h = HealthRecord(str(tmp_path))
    assert h.failures == {} and h.wal_segment == ""
    h.set_failed("app", "full", "boom")
    assert json.loads((tmp_path / "health.json").read_text())["failures"]["app"]["message"] == "boom"


def test_no_state_dir_keeps_the_record_in_memory(tmp_path):
    h = HealthRecord(str(tmp_path / "missing"))
    h.set_failed("app", "full", "boom")
    assert h.failure("app").message == "boom" and not os.path.exists(tmp_path / "missing")


def _set(source: str, level: str, end: float, status: str | None = None) -> BackupSet:
    extra = {"status": status} if status else {}
    return BackupSet(id=f"{source}{level}{end}", source=source, level=level, requested_level=level, base=None,
                     time_start=end - 1, time_end=end, hostname="h", paths=(), tree="", stats=SetStats(),
                     extra=extra)


def test_restored_metrics_name_the_newest_success_per_source_and_level(tmp_path):
    sets = [_set("app", "full", 10.0), _set("app", "full", 30.0), _set("app", "incremental", 20.0),
            _set("app", "incremental", 40.0, status="failed"), _set("db", "full", 50.0)]
    assert last_successes(sets) == {("app", "full"): 30.0, ("app", "incremental"): 20.0, ("db", "full"): 50.0}
    h = HealthRecord(str(tmp_path))
    h.wal_stored("000000010000000000000007", when=60.0)
    m = Metrics()
    restore_metrics(m, sets, h)
    text = m.render().decode()
    assert 'cairn_last_success_timestamp_seconds{level="full",source="app"} 30.0' in text
    assert 'cairn_last_success_timestamp_seconds{level="incremental",source="app"} 20.0' in text
    assert "cairn_wal_last_archived_timestamp_seconds 60.0" in text


def test_failing_writes_of_the_record_are_one_line_until_the_reason_changes_or_they_succeed(tmp_path, caplog,
                                                                                           monkeypatch):
    """On a full state directory every set and WAL segment saves the record: a line each would
    bury the log. One line, then one when the reason changes (or after UNSAVED_REPEAT seconds,
    with the count), and one when a write succeeds again."""
    from cairn.daemon.runtime import health as health_module

    record = HealthRecord(str(tmp_path))
    blocker = tmp_path / "health.json"
    blocker.mkdir()
    (blocker / "x").write_text("")  # the record's place is a non-empty directory: every write fails
    with caplog.at_level(logging.INFO, logger="cairn.daemon.runtime.health"):
        for i in range(50):
            record.wal_stored(f"{i:024X}", 1_700_000_000.0 + i)
        failed = [r for r in caplog.records if "unable to write" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]
        assert failed[0].levelno == logging.WARNING and "said again in 10 minutes" in failed[0].getMessage()
        now = [health_module.time.monotonic()]
        monkeypatch.setattr(health_module.time, "monotonic", lambda: now[0])
        now[0] += health_module.UNSAVED_REPEAT + 1
        record.wal_stored(f"{100:024X}", 1_700_000_100.0)
        failed = [r.getMessage() for r in caplog.records if "unable to write" in r.getMessage()]
        assert len(failed) == 2 and "(49 more failed writes since the last line)" in failed[1], failed
        (blocker / "x").unlink()
        blocker.rmdir()
        record.wal_stored(f"{200:024X}", 1_700_000_200.0)
    again = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]
    assert again == [f"'{blocker}' written again (51 writes had failed)"], again
    assert json.loads(blocker.read_text())["wal"]["segment"] == f"{200:024X}"
