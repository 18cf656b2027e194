"""Status has a typed shape (daemon/operations/status.py) and the gRPC adapter maps every field
of it to the wire: a field added on one side and not the other fails here."""

from __future__ import annotations

import dataclasses

from cairn.daemon.databases.postgres.walarchive import ArchiveSnapshot, DatabaseArchive
from cairn.daemon.operations.status import DaemonState, JournalView, RetentionState, ServiceStatus, SourceState
from cairn.daemon.rpc.servicer import CairnServicer
from cairn.daemon.runtime.health import Failure
from cairn.proto.cairn.v1 import cairn_pb2 as pb


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_typed_records_name_exactly_the_wire_fields() -> None:
    assert names(DatabaseArchive) == set(pb.DatabaseArchive.DESCRIPTOR.fields_by_name)
    assert names(RetentionState) == set(pb.RetentionStatus.DESCRIPTOR.fields_by_name)
    assert names(DaemonState) == set(pb.DaemonInfo.DESCRIPTOR.fields_by_name)


class _Service:
    def __init__(self, status: ServiceStatus) -> None:
        self._status = status

    def full_status(self) -> ServiceStatus:
        return self._status


def test_every_status_value_reaches_the_reply() -> None:
    db = DatabaseArchive(name="main", error="", current_segment="000000010000000000000009",
                         last_archived="000000010000000000000007", last_archived_time=11.5, failed_count=2,
                         last_failed="000000010000000000000006", last_failed_time=10.25, lag_segments=1,
                         system_id="7301234567890123456", namespace_segments=42, nothing_archived=True,
                         in_recovery=True, archive_mode="always", archive_command="cairn wal-push %p",
                         archive_library="basic_archive", archive_foreign=True, pending_since=8.5,
                         archive_elsewhere="unix socket '/o.sock'",
                         ready_since=7.5, ready_unlisted="role 'cairn' may not run pg_ls_archive_statusdir()")
    archive = ArchiveSnapshot(last_segment="000000010000000000000007", last_time=12.0, pushed=5, failures=1,
                              last_failure="boom", last_failure_time=9.0, segments=40, databases=[db], namespaces=1)
    journal = JournalView("rescan pending: overflow", "rescan", ("overflow",), 33.0, 4, 7)
    source = SourceState(name="app", paths=("/srv/app",), configured=True, watch=True, journal=journal, last={},
                         running=None, next_runs={"full": 100.0}, sets=3,
                         last_failure=Failure(level="incremental", time=50.0, message="disk full", status="failed"),
                         rpo=60.0, last_success=40.0)
    daemon = DaemonState(version="1.2", pid=77, started=1.0, repository="/r", read_only=True, config_path="/c",
                         hostname="h", warnings=("another machine",))
    retention = RetentionState(schedule="0 3 * * *", next_run=200.0, last_run=150.0, last_result="freed 1 MiB",
                               host="h")
    reply = CairnServicer(_Service(ServiceStatus(daemon, [source], archive, retention))).Status(pb.StatusRequest(),
                                                                                              None)
    wire = {k: getattr(reply.daemon, k) for k in names(DaemonState)}
    assert dataclasses.asdict(daemon) == {**wire, "warnings": tuple(wire["warnings"])}
    s = reply.sources[0]
    assert (s.journal, s.journal_state, list(s.journal_reasons), s.oldest_unprotected_age, s.pending_paths,
            s.watches) == ("rescan pending: overflow", "rescan", ["overflow"], 33.0, 4, 7)
    assert [(r.level, r.time) for r in s.next_runs] == [("full", 100.0)] and s.sets == 3
    assert s.last_failure.message == "disk full" and s.rpo == 60.0 and s.last_success == 40.0
    assert {k: getattr(reply.archive.databases[0], k) for k in names(DatabaseArchive)} == dataclasses.asdict(db)
    assert (reply.archive.last_segment, reply.archive.pushed, reply.archive.wal_namespaces) == \
        ("000000010000000000000007", 5, 1)
    assert {k: getattr(reply.retention, k) for k in names(RetentionState)} == dataclasses.asdict(retention)


def test_no_retention_means_no_retention_field() -> None:
    daemon = DaemonState("1", 1, 0.0, "/r", False, "", "h")
    reply = CairnServicer(_Service(ServiceStatus(daemon, [], ArchiveSnapshot(), None))).Status(pb.StatusRequest(),
                                                                                            None)
    assert not reply.HasField("retention")


def test_the_open_window_and_the_one_thawed_at_start_reach_the_reply() -> None:
    from cairn.daemon.scheduling.jobs import BackupJob
    from cairn.daemon.windows.quiesce import HookResult, OpenWindow, WindowRecovery

    # every field of the open window is on the wire, besides the set's job and level
    assert names(OpenWindow) - {"source"} == set(pb.QuiesceWindow.DESCRIPTOR.fields_by_name) - {"job", "level"}
    window = OpenWindow(source="app", mode="cold", state="frozen", opened=100.0, frozen=101.5, deadline=1000.0,
                        max_window=900.0, levels=2, levels_started=2)
    job = BackupJob("app", "differential", "schedule")
    thaw = HookResult(("true",), 0, "", "", 0.1)
    recovered = WindowRecovery("app", "hot", 50.0, (thaw, thaw), thawed=60.0)
    journal = JournalView("")
    source = SourceState(name="app", paths=(), configured=True, watch=False, journal=journal, last={},
                         running=job, next_runs={}, sets=0, window=window, recovered=recovered)
    daemon = DaemonState(version="1", pid=1, started=1.0, repository="/r", read_only=False, config_path="",
                         hostname="h")
    reply = CairnServicer(_Service(ServiceStatus(daemon, [source], ArchiveSnapshot(), None))).Status(
        pb.StatusRequest(), None)
    w = reply.sources[0].window
    assert {k: getattr(w, k) for k in names(OpenWindow) - {"source"}} == \
        {k: v for k, v in dataclasses.asdict(window).items() if k != "source"}
    assert (w.job, w.level) == (job.id, "differential")
    r = reply.sources[0].recovered_window
    assert (r.mode, r.opened, r.thawed, r.thaw_hooks) == ("hot", 50.0, 60.0, 2)
    assert r.message == recovered.summary() and r.message.startswith("thawed the hot window left open since ")
