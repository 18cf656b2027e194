"""How the servicer frames streams: restore batches, tolerant parsing, progress coalescing."""

from __future__ import annotations

import os
import threading
import time

import pytest
from cairn.daemon.rpc.server import _tolerant
from cairn.daemon.rpc.servicer import BATCH_BYTES, DATA_PIECE, Malformed, restore_batches
from cairn.daemon.scheduling.jobs import JobManager
from cairn.fsio.records import Data, EntryMeta, Failed, Hole
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.store.errors import BusyError, InvalidArgumentError
from cairn.store.model import Progress


def test_restore_batches_split_data_keep_order_and_name_the_set_first():
    big = os.urandom(3 * DATA_PIECE + 123)
    records = [
        EntryMeta(path=b"dir", kind="dir", mode=0o755),
        EntryMeta(path=b"dir/\xff-not-utf8", kind="file", size=len(big) + 10, xattrs={b"user.k": b"v"}),
        Data(big),
        Hole(10),
        EntryMeta(path=b"broken", kind="file", size=5),
        Failed("unable to read chunk 'ab12..': checksum mismatch"),
        EntryMeta(path=b"link", kind="symlink", target=b"dir/\xff-not-utf8"),
    ]
    batches = list(restore_batches(pb.SetInfo(id="s1"), iter(records)))
    assert batches[0].set.id == "s1"
    assert all(not b.HasField("set") for b in batches[1:])
    flat = [r for b in batches for r in b.records]
    data = [r.data for r in flat if r.WhichOneof("record") == "data"]
    assert b"".join(data) == big
    assert max(len(d) for d in data) <= DATA_PIECE
    assert all(b.ByteSize() <= BATCH_BYTES + 4096 for b in batches)
    kinds = [r.WhichOneof("record") for r in flat]
    assert kinds == ["entry", "entry"] + ["data"] * len(data) + ["hole", "entry", "failed", "entry"]
    assert flat[1].entry.path == b"dir/\xff-not-utf8"
    assert {(x.name, x.value) for x in flat[1].entry.xattrs} == {(b"user.k", b"v")}
    assert flat[-1].entry.target == b"dir/\xff-not-utf8"


def test_restore_batches_close_the_source_iterator_when_the_client_goes_away():
    closed = threading.Event()

    def records():
        try:
            while True:
                yield Data(b"x" * 1000)
        finally:
            closed.set()

    stream = restore_batches(pb.SetInfo(id="s"), records())
    next(stream)
    stream.close()
    assert closed.is_set()


def test_an_empty_restore_still_sends_one_batch_with_the_set():
    assert [b.set.id for b in restore_batches(pb.SetInfo(id="e"), iter(()))] == ["e"]


def test_unparseable_requests_become_malformed_placeholders_that_raise_invalid_argument():
    parse = _tolerant(pb.ListSetsRequest, "/cairn.v1.Cairn/ListSets")
    assert parse(pb.ListSetsRequest(source="app").SerializeToString()).source == "app"
    bad = parse(b"\x0a\xff\xff\xff\xff\x0f")
    assert isinstance(bad, Malformed)
    with pytest.raises(InvalidArgumentError, match="malformed request message for /cairn.v1.Cairn/ListSets"):
        bad.raise_error()


def test_one_backup_per_source_and_the_busy_message_says_since_when():
    jobs = JobManager()
    release = threading.Event()

    def slow(progress, cancel):
        progress(Progress(phase="scan", files_done=1))
        release.wait(5)
        return None

    job = jobs.start_backup("app", "full", "test", slow)
    with pytest.raises(BusyError, match=r"^a backup of source 'app' is already running \(started \d+s ago\)$"):
        jobs.start_backup("app", "incremental", "test", slow)
    other = jobs.start_backup("db", "full", "test", lambda p, c: None)  # other sources are free
    assert other.wait(5)
    snap = job.wait_update(0, timeout=5)
    assert snap.progress is not None and snap.progress.phase == "scan"
    release.set()
    assert job.wait(5) and job.error is None
    again = jobs.start_backup("app", "full", "test", lambda p, c: None)  # free again once done
    assert again.wait(5)


def test_a_job_ends_for_its_watchers_only_after_the_completion_hook_ran():
    """What the hook records (the source's health, its metrics) is there when a client's call
    learns that its backup ended: a client reading metrics right after never sees the old ones."""
    recorded: list[tuple[str, object]] = []

    def hook(job) -> None:
        time.sleep(0.3)  # a slow save of the health record
        recorded.append((job.source, job.error))

    jobs = JobManager(on_done=hook)
    ok = jobs.start_backup("app", "full", "test", lambda p, c: None)
    assert ok.wait(5) and recorded == [("app", None)]
    failed = jobs.start_backup("db", "full", "test", lambda p, c: (_ for _ in ()).throw(InvalidArgumentError("no")))
    assert failed.wait(5) and len(recorded) == 2 and isinstance(recorded[1][1], InvalidArgumentError)
    snap = failed.wait_update(0, timeout=5)
    assert snap.done


def test_shutdown_cancels_running_jobs_and_refuses_new_ones():
    jobs = JobManager()
    seen_cancel = threading.Event()

    def until_cancelled(progress, cancel):
        cancel.wait(5)
        seen_cancel.set()
        raise InvalidArgumentError("stopped")

    job = jobs.start_backup("app", "full", "test", until_cancelled)
    jobs.shutdown()
    assert jobs.wait_idle(5)
    assert seen_cancel.is_set() and job.done and isinstance(job.error, InvalidArgumentError)
    with pytest.raises(Exception, match="shutting down"):
        jobs.start_backup("app", "full", "test", until_cancelled)


def test_a_backup_cancelled_by_shutdown_says_the_daemon_is_stopping(caplog):
    """Status keeps it as the source's last failure, "aborted", saying why; the log says the stop
    interrupted it (a warning), not that the backup failed (an error)."""
    from cairn.store.errors import AbortedError

    jobs = JobManager()

    def until_cancelled(progress, cancel):
        cancel.wait(5)
        raise AbortedError("backup cancelled")

    job = jobs.start_backup("app", "full", "test", until_cancelled)
    jobs.shutdown()
    assert jobs.wait_idle(5) and isinstance(job.error, AbortedError)
    assert job.error.message == "backup cancelled: the daemon is stopping"
    assert "nothing of this set was committed" in job.error.hint
    assert "full backup of source 'app' (test) interrupted by the daemon's stop: nothing of it was committed; " \
        "the repository is consistent" in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_a_backup_call_follows_its_job_even_when_the_progress_estimate_cannot_be_made():
    """The estimate's listing of sets is for progress only: a store error there (a refused or
    failed listing) must not end the call with an error while the job goes on and commits."""
    from cairn.daemon.rpc.servicer import CairnServicer
    from cairn.store.errors import BackendError
    from cairn.store.model import BackupSet, SetStats

    jobs = JobManager()
    committed = BackupSet(id="ab" * 32, source="app", level="full", requested_level="full", base=None, time_start=1.0,
                          time_end=2.0, hostname="h", paths=("/src",), tree="00" * 32, stats=SetStats())

    class Service:
        hostname = "h"

        def start_backup(self, source, level, tags, reason):
            return jobs.start_backup(source, level or "full", reason, lambda progress, cancel: committed)

        def list_sets(self, source, host=""):
            raise BackendError("unable to list sets objects at s3://b/p: AccessDenied (HTTP 403)")

    class Context:
        def is_active(self) -> bool:
            return True

    events = list(CairnServicer(Service()).Backup(pb.BackupRequest(source="app", level="full"), Context()))
    assert events[0].HasField("started") and events[-1].set.id == committed.id


def test_a_listing_is_served_in_batches_as_it_is_read():
    """ListTree sends each batch of LIST_BATCH entries as soon as it is read: a listing is never
    held whole (a directory of 200,000 entries held whole grew the daemon by 300 MB, kept), the
    set comes with the first batch and the problems met with the last."""
    from cairn.daemon.rpc.servicer import LIST_BATCH, CairnServicer
    from cairn.store.model import BackupSet, SetStats, TreeEntry

    s = BackupSet(id="cd" * 32, source="app", level="full", requested_level="full", base=None, time_start=1.0,
                  time_end=2.0, hostname="h", paths=("/src",), tree="00" * 32, stats=SetStats())
    read = [0]

    class Service:
        def list_tree(self, ref, source, path, recursive, host="", problems=None):
            def entries():
                for i in range(2 * LIST_BATCH + 7):
                    read[0] += 1
                    yield TreeEntry(path=f"d/f{i}", name=f"f{i}", kind="file", mode=0o644, uid=0, gid=0,
                                    mtime_ns=0, size=i, target="")
                problems.append("unable to list 'd/x/': checksum mismatch")
            return s, entries()

        def dsn_restorable(self, s):
            return []

    replies = CairnServicer(Service()).ListTree(pb.ListTreeRequest(set="latest", recursive=True), object())
    first = next(replies)
    assert first.set.id == s.id and len(first.entries) == LIST_BATCH
    assert read[0] <= LIST_BATCH + 1  # sent before the rest was read
    rest = list(replies)
    assert [len(r.entries) for r in rest] == [LIST_BATCH, 7]
    assert list(rest[-1].problems) == ["unable to list 'd/x/': checksum mismatch"]
    assert not any(r.problems for r in [first, *rest[:-1]]) and not any(r.HasField("set") for r in rest)
