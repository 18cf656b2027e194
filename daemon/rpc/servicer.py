"""The Cairn gRPC servicer: the one place where wire messages meet domain types.

Each RPC converts its request to arguments of `CairnService`, calls it, and converts the
domain result back. Every failure leaves through `errors.status_for`, so status codes are
decided in one place. Paths cross the wire as bytes (os.fsencode/os.fsdecode), so names that
are not UTF-8 survive. Streams are batched: a restore batch carries at most about 1 MiB of
file data, and no data record is larger than 1 MiB. A WalPush is spooled to disk, never held
in the heap (in a memory file only while the state directory has no room: `WalSpool`), and
refused once it passes daemon.max_wal_size.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import logging
import math
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import grpc
from cairn.daemon.databases.postgres import restoredb
from cairn.daemon.databases.postgres.walarchive import ArchiveSnapshot
from cairn.daemon.operations.service import CairnService
from cairn.daemon.operations.status import SourceState, set_status
from cairn.daemon.rpc.errors import HINT_KEY, hint_for, status_for
from cairn.daemon.scheduling.jobs import BackupJob
from cairn.daemon.scheduling.retention import parse_option_duration
from cairn.fsio import claims
from cairn.fsio.names import text_safe
from cairn.fsio.records import Data, LaneGauge, Record
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairn.proto.wire import add_record, put_mtime
from cairn.protocol import BATCH_BYTES, BATCH_RECORDS, DATA_PIECE
from cairn.store.content.crypto import KEYFILE_LEN, Secret
from cairn.store.content.locks import holder
from cairn.store.errors import AbortedError, CairnError, FailedPreconditionError, InvalidArgumentError
from cairn.store.maintenance.repair import IndexRepairReport
from cairn.store.model import (
    BackupSet,
    CheckProblem,
    CheckReport,
    Progress,
    PrunePolicy,
    PruneReport,
    TreeEntry,
)

log = logging.getLogger(__name__)

LIST_BATCH = 1000
# A source's journal reasons in one status reply: every directory past a watch cap is a reason,
# and 67,000 of them outgrew gRPC's 4 MiB message, so `cairn status` failed outright. The rest
# are counted in one last reason (the text summary counts them all by cause).
STATUS_REASONS = 1000
PROGRESS_INTERVAL = 0.1


class Malformed:
    """Stands in for a request message that could not be parsed (see server.tolerant)."""

    def __init__(self, method: str, error: str) -> None:
        self.method = method
        self.error = error

    def raise_error(self) -> None:
        raise InvalidArgumentError(f"malformed request message for {self.method}: {self.error}")


def texts(messages: list[str]) -> list[str]:
    """Messages for a repeated string field (valid UTF-8: see fsio/names.text_safe)."""
    return [text_safe(m) for m in messages]


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str, service: Any = None) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("rpc %s failed", method, exc_info=exc)
    # a write-only host asks a host with a full key to run what a hint names (store/snapshots/writeonly.py)
    hint = hint_for(exc, getattr(getattr(service, "repo", None), "hint_for_host", None))
    if hint:
        context.set_trailing_metadata(((HINT_KEY, hint.encode("ascii", "backslashreplace").decode()),))
    context.abort(code, text_safe(message))


def rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map any failure of an RPC method (plain or streaming) to its status code."""
    name = fn.__name__
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                if isinstance(request, Malformed):
                    request.raise_error()
                yield from fn(self, request, context)
            except Exception as exc:
                _abort(context, exc, name, self.service)

        return streaming

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if isinstance(request, Malformed):
                request.raise_error()
            return fn(self, request, context)
        except Exception as exc:
            _abort(context, exc, name, self.service)

    return unary


class CairnServicer(pb_grpc.CairnServicer):
    """Implements cairn.v1.Cairn on top of a CairnService."""

    def __init__(self, service: CairnService) -> None:
        self.service = service

    @rpc
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        status = self.service.full_status()
        daemon = status.daemon
        reply = pb.StatusReply(
            daemon=pb.DaemonInfo(
                version=daemon.version,
                pid=daemon.pid,
                started=daemon.started,
                repository=daemon.repository,
                read_only=daemon.read_only,
                config_path=daemon.config_path,
                hostname=daemon.hostname,
                warnings=list(daemon.warnings),
            )
        )
        for src in status.sources:
            out = reply.sources.add(
                name=src.name,
                paths=[os.fsencode(p) for p in src.paths],
                configured=src.configured,
                watch=src.watch,
                journal=src.journal.text,
                sets=src.sets,
                journal_state=src.journal.state,
                journal_reasons=bounded_reasons(src.journal.reasons),
                pending_paths=src.journal.pending_paths,
                watches=src.journal.watches,
                host=src.host,
            )
            if src.journal.oldest_unprotected_age is not None:
                out.oldest_unprotected_age = src.journal.oldest_unprotected_age
            for level, s in src.last.items():
                out.last.add(level=level, set=set_info(s))
            for level, when in sorted(src.next_runs.items(), key=lambda kv: kv[1]):
                out.next_runs.add(level=level, time=when)
            if src.running is not None:
                out.running.CopyFrom(job_info(src.running))
            _add_health(out, src)
            _add_window(out, src)
        reply.archive.CopyFrom(archive_status(status.archive))
        gc = status.retention
        if gc is not None:
            reply.retention.CopyFrom(pb.RetentionStatus(schedule=gc.schedule, next_run=gc.next_run,
                                                        last_run=gc.last_run, last_result=gc.last_result,
                                                        host=gc.host))
        return reply

    @rpc
    def Backup(self, request: pb.BackupRequest, context: grpc.ServicerContext) -> Iterator[pb.BackupEvent]:
        job = self.service.start_backup(request.source, request.level, tuple(request.tags), reason="client")
        yield pb.BackupEvent(started=job_info(job))
        try:  # only for progress: the job runs whatever this finds, so its failure must not end the call
            estimate = backup_estimate(job.level, self.service.list_sets(job.source, host=self.service.hostname))
        except CairnError as e:
            log.warning("no estimate for the progress of the backup of '%s': %s", job.source, e)
            estimate = None
        version = 0
        while True:
            snap = job.wait_update(version, timeout=1.0)
            if not context.is_active():
                log.info("client stopped following the backup of '%s'; it goes on", job.source)
                return
            if snap.version != version and snap.progress is not None and not snap.done:
                yield pb.BackupEvent(progress=with_estimate(progress_msg(snap.progress), estimate))
                job.wait(PROGRESS_INTERVAL)  # throttles progress; returns at once when the job ends
            version = snap.version
            if snap.done:
                break
        if job.error is not None:
            raise job.error
        yield pb.BackupEvent(set=set_info(job.result))

    @rpc
    def ListSets(self, request: pb.ListSetsRequest, context: grpc.ServicerContext) -> pb.ListSetsReply:
        sets = self.service.list_sets(request.source, host=request.host)
        unreadable = sorted(self.service.unreadable_sets().items())
        return pb.ListSetsReply(sets=[set_info(s) for s in sets], unreadable=[f"{n}: {why}" for n, why in unreadable],
                                unreadable_advice=self.service.unreadable_advice() if unreadable else "")

    @rpc
    def ListTree(self, request: pb.ListTreeRequest, context: grpc.ServicerContext) -> Iterator[pb.ListTreeReply]:
        problems: list[str] = []
        s, entries = self.service.list_tree(request.set, request.source, os.fsdecode(request.path), request.recursive,
                                            host=request.host, problems=problems)
        # batches as the entries are read: a listing is never held whole (a directory of 200,000
        # entries held whole grew the daemon by 300 MB, which it kept); the problems met come
        # with the last batch, the set with the first
        reply = pb.ListTreeReply(set=set_info(s), dsn_restorable=self.service.dsn_restorable(s), dumps_known=True)
        for e in entries:
            if len(reply.entries) >= LIST_BATCH:
                yield reply
                reply = pb.ListTreeReply()
            reply.entries.append(tree_entry(e))
        reply.problems.extend(texts(problems))
        yield reply

    @rpc
    def Diff(self, request: pb.DiffRequest, context: grpc.ServicerContext) -> Iterator[pb.DiffReply]:
        sa, sb, changes = self.service.diff_stream(request.a, request.b, request.source, host=request.host,
                                                   grouped=request.grouped)
        yield pb.DiffReply(a=set_info(sa), b=set_info(sb))
        # batches as the changes are found, never the whole diff; a batch holds changes of one
        # kind, so the order of the changes is that of the batches
        field, paths = "", []
        for change, path in changes:
            if paths and (change != field or len(paths) >= LIST_BATCH):
                yield pb.DiffReply(**{field: paths})
                paths = []
            field = change
            paths.append(os.fsencode(path))
        if paths:
            yield pb.DiffReply(**{field: paths})

    @rpc
    def Restore(self, request: pb.RestoreRequest, context: grpc.ServicerContext) -> Iterator[pb.RestoreBatch]:
        if request.local_claim and not request.manifest:  # the daemon writes: never into its own places
            self.service.refuse_own_places(os.fsdecode(request.target_path), delete=request.delta and request.delete)
        if request.local_claim and request.delta and not request.manifest:
            s, ds, problems = self.service.delta_local(
                request.set, request.source, [os.fsdecode(x) for x in request.paths], tuple(request.include),
                tuple(request.exclude), os.fsdecode(request.target_path), request.local_claim, request.quick,
                request.delete, cancelled=lambda: not context.is_active(), host=request.host)
            st = ds.stats
            yield pb.RestoreBatch(set=set_info(s), delta=pb.DeltaWriteResult(
                files_checked=ds.checked_files, bytes_checked=ds.checked_bytes, files_written=st.files_written,
                bytes_written=st.bytes_written, entries_made=st.entries_made, metadata_fixed=st.meta_fixed,
                deleted=st.deleted, extras_kept=0 if request.delete else ds.extras,
                errors=texts(problems + ds.errors + st.errors)))
            return
        local = bool(request.local_claim) and not request.manifest
        if local:  # refused before the set is read: the client then streams
            claims.check_claim(os.fsdecode(request.target_path), request.local_claim, same_powers=True)
        paths = [os.fsdecode(p) for p in request.paths]
        lanes = LaneGauge() if local else None  # the daemon's own writer takes large files as lanes
        s, records = self.service.restore_stream(request.set, request.source, paths, tuple(request.include),
                                                 tuple(request.exclude), request.manifest, lanes=lanes,
                                                 host=request.host)
        totals = None if request.manifest else \
            self.service.restore_totals(s, paths, tuple(request.include), tuple(request.exclude))
        if local:
            yield from local_batches(s, records, request.target_path, request.local_claim, totals, context, "restore",
                                     lanes=lanes)
            return
        yield from restore_batches(set_info(s), records, totals,
                                   id_key=self.service.repo.chunk_id_key if request.manifest else None)

    @rpc
    def RestoreChunks(self, request: pb.RestoreChunksRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.RestoreChunksReply]:
        chunks = self.service.restore_chunks(request.set, request.source, list(request.ids), host=request.host)
        try:
            for i, data in enumerate(chunks):
                if isinstance(data, CairnError):  # this chunk only: the client mends every other file
                    yield pb.RestoreChunksReply(index=i, error=text_safe(data.message))
                    continue
                for start in range(0, max(len(data), 1), DATA_PIECE):
                    yield pb.RestoreChunksReply(index=i, data=data[start : start + DATA_PIECE])
        finally:
            chunks.close()

    @rpc
    def RestoreDb(self, request: pb.RestoreDbRequest, context: grpc.ServicerContext) -> Iterator[pb.RestoreBatch]:
        if request.check_only:  # the checks alone: nothing is read from the data directory or written
            if request.check_local:  # the daemon will write there: never into its own places
                self.service.refuse_own_places(os.fsdecode(request.target_path))
            s = self.service.check_restore_db(
                request.set, request.source, request.database, request.target_time, request.target_lsn,
                os.fsdecode(request.target_path), request.restore_command,
                target_timeline=request.target_timeline or "current", host=request.host,
                fetch_with=request.fetch_with, target_end=request.target_end, accept_wal_gap=request.accept_wal_gap)
            yield pb.RestoreBatch(set=set_info(s))
            return
        if request.local_claim:  # the daemon writes: never into its own places (a delta removes extras)
            self.service.refuse_own_places(os.fsdecode(request.target_path), delete=request.delta)
        if request.delta:
            if not request.local_claim:
                raise InvalidArgumentError("restore-db --delta is run by the daemon on its own host: reach it by its "
                                           "socket, from that host")
            s, p, st, problems = self.service.restore_db_delta(
                request.set, request.source, request.database, request.target_time, request.target_lsn,
                os.fsdecode(request.target_path), request.local_claim, request.restore_command,
                target_timeline=request.target_timeline or "current", host=request.host,
                fetch_with=request.fetch_with, quick=request.quick, cancelled=lambda: not context.is_active(),
                target_end=request.target_end, accept_wal_gap=request.accept_wal_gap)
            yield pb.RestoreBatch(set=set_info(s), delta=pb.DeltaWriteResult(
                files_checked=p.checked_files, bytes_checked=p.checked_bytes, files_written=st.files_written,
                bytes_written=st.bytes_written, entries_made=st.entries_made, metadata_fixed=st.meta_fixed,
                deleted=st.deleted, errors=texts(problems)))
            return
        if request.local_claim:
            claims.check_claim(os.fsdecode(request.target_path), request.local_claim)
        lanes = LaneGauge() if request.local_claim else None
        s, records = self.service.restore_db(
            request.set, request.source, request.database, request.target_time, request.target_lsn,
            os.fsdecode(request.target_path), request.restore_command, lanes=lanes,
            target_timeline=request.target_timeline or "current", host=request.host,
            fetch_with=request.fetch_with, target_end=request.target_end, accept_wal_gap=request.accept_wal_gap,
        )
        totals = self.service.restore_db_totals(s, request.database)
        if request.local_claim:
            yield from local_batches(s, records, request.target_path, request.local_claim, totals, context,
                                     "restore-db", lanes=lanes)
            return
        yield from restore_batches(set_info(s), records, totals)

    @rpc
    def RestoreDbToDsn(self, request: pb.RestoreDbToDsnRequest,
                       context: grpc.ServicerContext) -> Iterator[pb.RestoreDbToDsnEvent]:
        cancel = threading.Event()
        context.add_callback(cancel.set)  # the client went away: stop the restore tool

        def run(progress: Callable[[Progress], None]) -> Any:
            return self.service.restore_db_to_dsn(request.set, request.source, request.database,
                                                  request.target_dsn, progress, cancel, host=request.host)

        for item in run_with_progress(run, context):
            if isinstance(item, Progress):
                yield pb.RestoreDbToDsnEvent(progress=progress_msg(item))
            else:
                s, r = item
                yield pb.RestoreDbToDsnEvent(result=pb.RestoreDbToDsnResult(
                    set=set_info(s), database=r.database, kind=r.kind, tool=r.tool, bytes=r.bytes,
                    seconds=r.seconds))

    @rpc
    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> Iterator[pb.VerifyEvent]:
        def check(progress: Callable[[Progress], None]) -> CheckReport:
            return self.service.verify(request.set, request.source, request.read_data, progress,
                                       host=request.host, subset=request.read_data_subset)

        for item in run_with_progress(check, context, what="verify", stopping=self.service.stopping):
            if isinstance(item, Progress):
                yield pb.VerifyEvent(progress=progress_msg(item))
            else:
                yield pb.VerifyEvent(report=check_report(item))

    @rpc
    def Prune(self, request: pb.PruneRequest, context: grpc.ServicerContext) -> pb.PruneReply:
        policy = PrunePolicy(
            keep_full=request.keep_full if request.HasField("keep_full") else None,
            keep_differential=request.keep_differential if request.HasField("keep_differential") else None,
            keep_incremental=request.keep_incremental if request.HasField("keep_incremental") else None,
            forget=tuple(request.forget),
            **retention_rules(request),
        )
        report = self.service.prune(policy, request.dry_run, request.source, wal_keep=request.wal_keep)
        return prune_reply(report)

    @rpc
    def Unlock(self, request: pb.UnlockRequest, context: grpc.ServicerContext) -> pb.UnlockReply:
        removed, kept = self.service.unlock(request.host, request.remove_all)

        def info(doc: dict) -> pb.LockInfo:
            pid = doc.get("pid")
            return pb.LockInfo(name=str(doc.get("name", "")), host=holder(doc),
                               pid=pid if isinstance(pid, int) and pid >= 0 else 0,
                               purpose=str(doc.get("purpose", "")), time=float(doc.get("time", 0) or 0),
                               description=str(doc.get("description", "")))

        return pb.UnlockReply(removed=[info(d) for d in removed], kept=[info(d) for d in kept])

    @rpc
    def RepairIndex(self, request: pb.RepairIndexRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.RepairIndexEvent]:
        def repair(progress: Callable[[Progress], None]) -> IndexRepairReport:
            return self.service.repair_index(request.read_data, request.dry_run, progress)

        for item in run_with_progress(repair, context, what="repair index"):
            if isinstance(item, Progress):
                yield pb.RepairIndexEvent(progress=progress_msg(item))
            else:
                yield pb.RepairIndexEvent(report=repair_index_report(item))

    @rpc
    def RepairSets(self, request: pb.RepairSetsRequest, context: grpc.ServicerContext) -> pb.RepairSetsReply:
        report = self.service.repair_sets(request.dry_run)
        return pb.RepairSetsReply(removed=[pb.RemovedSet(set=name, reason=why) for name, why in report.removed],
                                  kept=report.kept, newer=list(report.newer), dry_run=report.dry_run,
                                  refused=[pb.RemovedSet(set=name, reason=why) for name, why in report.refused],
                                  restored=[pb.RemovedSet(set=name, reason=why) for name, why in report.restored])

    @rpc
    def RepairWal(self, request: pb.RepairWalRequest, context: grpc.ServicerContext) -> pb.RepairWalReply:
        report = self.service.repair_wal(request.dry_run)
        return pb.RepairWalReply(removed=[pb.RemovedWal(name=name, reason=why) for name, why in report.removed],
                                 kept=report.kept, dry_run=report.dry_run,
                                 refused=[pb.RemovedWal(name=name, reason=why) for name, why in report.refused])

    def WalPush(self, request_iterator: Iterator[pb.WalPushRequest], context: grpc.ServicerContext) -> pb.WalPushReply:
        daemon = self.service.config.daemon
        try:
            self.service.require_wal_writable()
            # Spooled to an unnamed file in the private state directory (gone with the process,
            # even on kill -9) and handed to the store as a read-only mapping: the pushed bytes
            # live in the page cache, not in the daemon's heap, whatever the segment size.
            with _spool_file(daemon.state_dir) as spool:
                meta: dict[str, str] = {}
                name, size = spool_wal(request_iterator, spool, daemon.max_wal_size, meta)
                with _mapped(spool, size) as data:
                    stored, namespace = self.service.put_wal_in(name, data, meta.get("wal_namespace", ""))
                    return pb.WalPushReply(stored=stored, wal_namespace=namespace)
        except Exception as exc:
            _abort(context, exc, "WalPush")

    @rpc
    def CheckDb(self, request: pb.CheckDbRequest, context: grpc.ServicerContext) -> pb.CheckDbReply:
        if not math.isfinite(request.timeout) or request.timeout < 0:  # a NaN or negative wait never ends well
            raise InvalidArgumentError(f"invalid timeout {request.timeout!r}: expected a number of seconds above 0")
        result = self.service.check_db(request.database, request.timeout or None)
        return pb.CheckDbReply(ok=result.ok, segment=result.segment, seconds=result.seconds,
                               steps=[pb.CheckDbStep(name=s.name, ok=s.ok, detail=s.detail) for s in result.steps])

    @rpc
    def WalFetch(self, request: pb.WalFetchRequest, context: grpc.ServicerContext) -> Iterator[pb.WalFetchReply]:
        if request.local_claim:
            written = self.service.write_wal_local(request.name, request.wal_namespace,
                                                   os.fsdecode(request.target_path), request.local_claim)
            yield pb.WalFetchReply(local_bytes=written)
            return
        data = self.service.get_wal(request.name, request.wal_namespace)
        for start in range(0, max(len(data), 1), DATA_PIECE):
            yield pb.WalFetchReply(data=data[start : start + DATA_PIECE])

    @rpc
    def KeyList(self, request: pb.KeyListRequest, context: grpc.ServicerContext) -> pb.KeyListReply:
        return pb.KeyListReply(keys=[pb.RepositoryKeyInfo(**k) for k in self.service.list_keys()])

    @rpc
    def KeyAdd(self, request: pb.KeyAddRequest, context: grpc.ServicerContext) -> pb.KeyAddReply:
        which = request.WhichOneof("secret")
        if which == "passphrase" and request.passphrase:
            secret = Secret("passphrase", request.passphrase)
        elif which == "key_file" and len(request.key_file) == KEYFILE_LEN:
            secret = Secret("keyfile", request.key_file)
        else:
            raise InvalidArgumentError("a key needs a non-empty passphrase or the 32 bytes of a key file")
        return pb.KeyAddReply(id=self.service.add_key(secret, write_only=request.write_only))

    @rpc
    def KeyRemove(self, request: pb.KeyRemoveRequest, context: grpc.ServicerContext) -> pb.KeyRemoveReply:
        return pb.KeyRemoveReply(id=self.service.remove_key(request.id))

    @rpc
    def Copy(self, request: pb.CopyRequest, context: grpc.ServicerContext) -> Iterator[pb.CopyEvent]:
        which = request.WhichOneof("secret")
        if which == "passphrase" and request.passphrase:
            secret = Secret("passphrase", request.passphrase)
        elif which == "key_file" and len(request.key_file) == KEYFILE_LEN:
            secret = Secret("keyfile", request.key_file)
        else:
            raise InvalidArgumentError("a copy needs the destination's passphrase or the 32 bytes of its key file")

        def run(progress: Callable[[Progress], None]) -> Any:
            return self.service.copy(request.to, secret, list(request.sets), request.source, progress,
                                     host=request.host)

        for item in run_with_progress(run, context, what="copy"):
            if isinstance(item, Progress):
                yield pb.CopyEvent(progress=progress_msg(item))
            else:
                yield pb.CopyEvent(result=pb.CopyResult(
                    copied=[pb.CopySetPair(source_set=a, copied_set=b) for a, b in item.copied],
                    present=[pb.CopySetPair(source_set=a, copied_set=b) for a, b in item.present],
                    wal_copied=item.wal_copied, wal_present=item.wal_present, bytes_read=item.bytes_read,
                    bytes_added=item.bytes_added, warnings=texts(item.warnings),
                    failed=[pb.CopySetFailure(source_set=a, error=why) for a, why in item.failed]))


def _add_health(out: pb.SourceStatus, src: SourceState) -> None:
    """The last failure, RPO and last success of a source (daemon/runtime/health.py)."""
    failure = src.last_failure
    if failure is not None:
        out.last_failure.CopyFrom(pb.SourceFailure(level=failure.level, time=failure.time,
                                                   message=text_safe(failure.message), status=failure.status))
    out.rpo = src.rpo or 0.0
    out.last_success = src.last_success
    out.unprotected_tracked = src.unprotected_tracked
    if src.unprotected_since is not None:
        out.unprotected_since = src.unprotected_since


def _add_window(out: pb.SourceStatus, src: SourceState) -> None:
    """The source's quiesce window open now, with the set it holds, and one this start thawed."""
    w = src.window
    if w is not None:
        job = src.running
        out.window.CopyFrom(pb.QuiesceWindow(
            mode=w.mode, state=w.state, opened=w.opened, frozen=w.frozen, deadline=w.deadline,
            max_window=w.max_window, levels=w.levels, levels_started=w.levels_started,
            job=job.id if job is not None else "", level=job.level if job is not None else ""))
    r = src.recovered
    if r is not None:
        out.recovered_window.CopyFrom(pb.RecoveredWindow(mode=r.mode, opened=r.started or 0.0, thawed=r.thawed,
                                                         thaw_hooks=len(r.results), message=text_safe(r.summary())))


NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_spool_moved = threading.Event()  # the last push that had to move found no room in the state directory


class WalSpool:
    """The bytes of one WalPush: in an unnamed file in the state directory, moved into an
    anonymous memory file (memfd) when that directory's file system has no room for them (a
    full /var must not stop WAL archiving: PostgreSQL's own disk fills next). Either is mapped
    read-only for the store; the memory goes with the push."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.size = 0
        self._file: BinaryIO
        try:
            self._file = tempfile.TemporaryFile(dir=directory, prefix="walpush-", buffering=0)
            self.in_memory = False
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            self._file = _memory_file()
            self.in_memory = True

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self._file.write(view)  # unbuffered: one write(2), `n` bytes of it are in
            except OSError as exc:
                if exc.errno not in NO_ROOM or self.in_memory:
                    raise
                self._to_memory()
                continue
            view = view[n:]
            self.size += n

    def _to_memory(self) -> None:
        mem = _memory_file()
        try:
            self._file.seek(0)
            left = self.size
            while left:
                chunk = self._file.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError(errno.EIO, "the spooled bytes could not be read back")
                view = memoryview(chunk)
                while view:
                    view = view[mem.write(view):]
                left -= len(chunk)
        except BaseException:
            mem.close()
            raise
        self._file.close()
        self._file, self.in_memory = mem, True
        if not _spool_moved.is_set():
            _spool_moved.set()
            log.warning("no room in '%s' to spool WAL pushes: they are held in memory until there is",
                        self.directory)

    def flush(self) -> None:
        """Every byte is in already (unbuffered); a push spooled wholly in the state directory
        after one that was not says so once."""
        if not self.in_memory and _spool_moved.is_set():
            _spool_moved.clear()
            log.info("WAL pushes are spooled in '%s' again", self.directory)

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


def _memory_file() -> BinaryIO:
    fd = os.memfd_create("walpush", os.MFD_CLOEXEC)
    return os.fdopen(fd, "w+b", buffering=0)


@contextlib.contextmanager
def _spool_file(directory: str) -> Iterator[WalSpool]:
    """A WalSpool in `directory`; an OSError while spooling is one clear error."""
    try:
        spool = WalSpool(directory)
        try:
            yield spool
        finally:
            spool.close()
    except OSError as exc:
        raise FailedPreconditionError(
            f"unable to spool a WAL push in '{directory}': {exc.strerror or exc}"
        ) from exc


def spool_wal(requests: Iterator[Any], spool: WalSpool, limit: int,
              meta: dict[str, str] | None = None) -> tuple[str, int]:
    """Write the data of a WalPush stream to `spool`; return the name (from the first message)
    and the size. More than `limit` bytes is refused as soon as the stream passes it. `meta`
    receives the first message's wal_namespace."""
    name, size = "", 0
    for req in requests:
        if isinstance(req, Malformed):
            req.raise_error()
        if req.name and not name:
            name = req.name
            if meta is not None:
                meta["wal_namespace"] = getattr(req, "wal_namespace", "")
        size += len(req.data)
        if size > limit:
            raise InvalidArgumentError(
                f"WAL file '{name}' is larger than daemon.max_wal_size ({limit} bytes)",
                hint="raise daemon.max_wal_size to the server's wal_segment_size",
            )
        spool.write(req.data)
    if not name:
        raise InvalidArgumentError("WalPush without a segment name: the first message must name it")
    spool.flush()
    return name, size


@contextlib.contextmanager
def _mapped(f: WalSpool, size: int) -> Iterator[Any]:
    """The first `size` bytes of `f` as a read-only buffer (a file mapping; b"" when empty)."""
    if size == 0:
        yield b""
        return
    view = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        yield view
    finally:
        try:
            view.close()
        except BufferError:
            pass  # a slice is still referenced somewhere: unmapped when it is released


def run_with_progress(fn: Callable[[Callable[[Progress], None]], Any], context: grpc.ServicerContext,
                      what: str = "call", stopping: Callable[[], bool] = lambda: False) -> Iterator[Any]:
    """Run fn(progress) in a thread; yield its latest Progress while it runs, then its result.

    When the call ends first (the client went away, cancelled, or its deadline passed), the
    next progress report raises AbortedError inside fn, so the work stops at its next
    progress point instead of running on for nobody. A call the daemon's stop ends
    (`stopping()` true) is said to be interrupted by the stop, not left by its client.
    """
    cond = threading.Condition()
    state: dict[str, Any] = {"progress": None, "version": 0, "done": False, "result": None, "error": None}
    gone = threading.Event()

    def ended() -> None:  # runs when the call ends, for whatever reason
        with cond:
            if state["done"]:
                return
            gone.set()
            cond.notify_all()
        if stopping():
            log.info("the daemon's stop ends a running %s", what)
        else:
            log.info("the client of a running %s went away: stopping it", what)

    def publish(p: Progress) -> None:
        if gone.is_set():
            if stopping():
                raise AbortedError(f"{what} interrupted by the daemon's stop")
            raise AbortedError(f"{what} cancelled: its client went away")
        with cond:
            state["progress"] = p
            state["version"] += 1
            cond.notify_all()

    def work() -> None:
        try:
            result, error = fn(publish), None
        except BaseException as exc:  # handed to the RPC thread
            result, error = None, exc
        with cond:
            state.update(result=result, error=error, done=True)
            state["version"] += 1
            cond.notify_all()

    if not context.add_callback(ended):
        return  # the call ended before it started: nothing to run
    threading.Thread(target=work, name="rpc-work", daemon=True).start()
    seen = 0
    while True:
        with cond:
            cond.wait_for(functools.partial(_changed, state, seen, gone), timeout=1.0)
            seen, done, progress = state["version"], state["done"], state["progress"]
        if done:
            break
        if gone.is_set() or not context.is_active():
            gone.set()
            return
        if progress is not None:
            yield progress
            with cond:  # throttles progress; returns at once when the work ends (its result is not held back)
                cond.wait_for(functools.partial(_ended, state, gone), timeout=PROGRESS_INTERVAL)
    if state["error"] is not None:
        raise state["error"]
    yield state["result"]


def _changed(state: dict[str, Any], seen: int, gone: threading.Event) -> bool:
    return state["version"] != seen or gone.is_set()


def _ended(state: dict[str, Any], gone: threading.Event) -> bool:
    return state["done"] or gone.is_set()


# ---- domain -> wire ----


def backup_estimate(level: str, sets: list[BackupSet]) -> tuple[int, int] | None:
    """(files, bytes) a set of a source will count and read, estimated from its newest set.

    A full reads every file: its files and bytes are measured against the newest set's totals.
    An incremental or differential reads only what changed, which no earlier set predicts, but it
    counts every file of the tree (a journal-driven one counts carried subtrees from the base):
    its files are measured against the newest set's file count, its bytes against nothing (0).
    None when there is no set with files to go by.
    """
    if not sets or not sets[-1].stats.files:
        return None
    newest = sets[-1].stats
    if level != "full":
        return newest.files, 0
    return (newest.files, newest.bytes_total) if newest.bytes_total else None


def with_estimate(p: pb.Progress, estimate: tuple[int, int] | None) -> pb.Progress:
    """`p` with estimated totals where the store reported none (never below what is done; a
    bytes estimate of 0 leaves the bytes without a total)."""
    if estimate is not None and not p.files_total and not p.bytes_total:
        p.files_total = max(estimate[0], p.files_done)
        p.bytes_total = max(estimate[1], p.bytes_done) if estimate[1] else 0
        p.totals_estimated = True
    return p


def progress_msg(p: Progress) -> pb.Progress:
    return pb.Progress(
        phase=p.phase,
        files_done=p.files_done,
        files_total=p.files_total,
        bytes_done=p.bytes_done,
        bytes_total=p.bytes_total,
        current_path=os.fsencode(p.current_path),
    )


def retention_rules(request: pb.PruneRequest) -> dict[str, Any]:
    """The retention rules of a PruneRequest as PrunePolicy fields (durations parsed here)."""
    rules: dict[str, Any] = {}
    for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        if request.HasField(f"keep_{name}"):
            rules[f"keep_{name}"] = getattr(request, f"keep_{name}")
    if request.keep_within:
        rules["keep_within"] = parse_option_duration("--keep-within", request.keep_within)
    for tag in request.keep_tags:
        if not tag or any(c.isspace() for c in tag):
            raise InvalidArgumentError(f"invalid tag '{tag}': tags are non-empty and without spaces")
    rules["keep_tags"] = tuple(request.keep_tags)
    rules["host"] = request.host
    return rules


def prune_reply(report: PruneReport) -> pb.PruneReply:
    return pb.PruneReply(
        forgotten=list(report.forgotten),
        kept=list(report.kept),
        packs_deleted=report.packs_deleted,
        packs_rewritten=report.packs_rewritten,
        bytes_freed=report.bytes_freed,
        dry_run=report.dry_run,
        decisions=[pb.RetentionDecision(set=d.set_id, keep=d.keep, reasons=list(d.reasons), host=d.host,
                                        source=d.source, level=d.level, time=d.time) for d in report.decisions],
        wal_forgotten=list(report.wal_forgotten),
        waiting_packs=report.waiting_packs,
        waiting_bytes=report.waiting_bytes,
        waiting_on=list(report.waiting_on),
    )


def repair_index_report(r: IndexRepairReport) -> pb.RepairIndexReport:
    return pb.RepairIndexReport(
        packs_listed=r.packs_listed, packs_read=r.packs_read, missing_packs=list(r.missing_packs),
        entries_missing=r.entries_missing, damaged_packs=list(r.damaged_packs), entries_damaged=r.entries_damaged,
        unindexed_packs=list(r.unindexed_packs), blobs_added=r.blobs_added, blobs_indexed=r.blobs_indexed,
        index_files_replaced=r.index_files_replaced, damaged_index_files=list(r.damaged_index_files),
        index_file=r.index_file, read_data=r.read_data, dry_run=r.dry_run, blobs_copied=r.blobs_copied,
        trees_restored=r.trees_restored,
    )


def set_info(s: BackupSet) -> pb.SetInfo:
    st = s.stats
    return pb.SetInfo(
        id=s.id,
        source=s.source,
        level=s.level,
        requested_level=s.requested_level,
        base=s.base or "",
        time_start=s.time_start,
        time_end=s.time_end,
        hostname=s.hostname,
        paths=[os.fsencode(p) for p in s.paths],
        stats=pb.SetStats(
            files=st.files,
            dirs=st.dirs,
            bytes_total=st.bytes_total,
            added=st.added,
            modified=st.modified,
            deleted=st.deleted,
            bytes_read=st.bytes_read,
            bytes_added=st.bytes_added,
            chunks_added=st.chunks_added,
            fuzzy=len(st.fuzzy_paths),
            files_walked=st.files_walked,
        ),
        tags=list(s.tags),
        note=s.note,
        status=set_status(s),
        extra_json=json.dumps(s.extra, sort_keys=True, default=str),
        fuzzy_paths=[os.fsencode(p) for p in st.fuzzy_paths],
    )


def archive_status(a: ArchiveSnapshot) -> pb.ArchiveStatus:
    """walarchive.ArchiveSnapshot -> wire."""
    msg = pb.ArchiveStatus(
        last_segment=a.last_segment,
        last_time=a.last_time,
        pushed=a.pushed,
        failures=a.failures,
        last_failure=a.last_failure,
        last_failure_time=a.last_failure_time,
        segments=a.segments,
        wal_namespaces=a.namespaces,
    )
    for d in a.databases:
        msg.databases.add(name=d.name, error=d.error, current_segment=d.current_segment,
                          last_archived=d.last_archived, last_archived_time=d.last_archived_time,
                          failed_count=d.failed_count, last_failed=d.last_failed,
                          last_failed_time=d.last_failed_time, lag_segments=d.lag_segments,
                          system_id=d.system_id, namespace_segments=d.namespace_segments,
                          nothing_archived=d.nothing_archived, in_recovery=d.in_recovery,
                          archive_mode=d.archive_mode, archive_command=d.archive_command,
                          archive_library=d.archive_library, archive_foreign=d.archive_foreign,
                          pending_since=d.pending_since, ready_since=d.ready_since,
                          ready_unlisted=d.ready_unlisted, archive_elsewhere=d.archive_elsewhere)
    return msg


def job_info(job: BackupJob) -> pb.JobInfo:
    info = pb.JobInfo(id=job.id, source=job.source, level=job.level, reason=job.reason, started=job.started)
    progress = job.progress
    if progress is not None:
        info.progress.CopyFrom(progress_msg(progress))
    return info


def tree_entry(e: TreeEntry) -> pb.TreeEntry:
    out = pb.TreeEntry(
        path=os.fsencode(e.path),
        name=os.fsencode(e.name),
        kind=e.kind,
        mode=e.mode,
        uid=e.uid,
        gid=e.gid,
        size=e.size,
        target=os.fsencode(e.target),
    )
    put_mtime(out, e.mtime_ns)
    return out


def _problem(p: CheckProblem) -> pb.CheckProblem:
    return pb.CheckProblem(
        message=text_safe(p.message), object_id=p.object_id, sets=list(p.sets), paths=[os.fsencode(x) for x in p.paths]
    )


def check_report(r: CheckReport) -> pb.CheckReport:
    return pb.CheckReport(
        ok=r.ok,
        errors=[_problem(p) for p in r.errors],
        warnings=[_problem(p) for p in r.warnings],
        notes=[_problem(p) for p in r.notes],
        sets_checked=r.sets_checked,
        packs_checked=r.packs_checked,
        chunks_checked=r.chunks_checked,
        bytes_read=r.bytes_read,
        advice=r.advice,
    )


def restore_batches(first: pb.SetInfo, records: Iterator[Record],
                    totals: tuple[int, int] | None = None, id_key: bytes | None = None) -> Iterator[pb.RestoreBatch]:
    """Pack restore records into batches of about BATCH_BYTES; the first batch names the set
    (and, when known, the files and bytes the restore writes, and for a manifest of an
    encrypted repository the chunk id key)."""
    batch, size = pb.RestoreBatch(set=first, chunk_id_key=id_key or b""), 0
    if totals is not None:
        batch.files_total, batch.bytes_total = totals
    try:
        for rec in records:
            if isinstance(rec, Data):
                pieces = [rec.data[i : i + DATA_PIECE] for i in range(0, len(rec.data), DATA_PIECE)]
                for piece in pieces:
                    if size and size + len(piece) > BATCH_BYTES:
                        yield batch
                        batch, size = pb.RestoreBatch(), 0
                    batch.records.add(data=piece)
                    size += len(piece) + 8
                continue
            if size >= BATCH_BYTES or len(batch.records) >= BATCH_RECORDS:
                yield batch
                batch, size = pb.RestoreBatch(), 0
            size += add_record(batch, rec)
        yield batch
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()


def bounded_reasons(reasons: tuple[str, ...] | list[str]) -> list[str]:
    """At most STATUS_REASONS of `reasons`, the rest counted in one more."""
    if len(reasons) <= STATUS_REASONS:
        return list(reasons)
    more = len(reasons) - STATUS_REASONS
    return [*reasons[:STATUS_REASONS], f"and {more} more reasons, not listed (the journal line counts them by cause)"]


def local_batches(s: Any, records: Iterator[Any], target_path: bytes, claim: str, totals: tuple[int, int] | None,
                  context: grpc.ServicerContext, what: str,
                  lanes: LaneGauge | None = None) -> Iterator[pb.RestoreBatch]:
    """A local restore (restoredb.write_local into the client's claimed target): progress
    batches while the daemon writes, then one batch with what it wrote."""
    def run(publish: Callable[[Progress], None]) -> Any:
        def progress(p: Progress) -> None:
            with contextlib.suppress(AbortedError):  # a client gone is seen by `cancelled`
                publish(p)
        return restoredb.write_local(records, os.fsdecode(target_path), claim,
                                     cancelled=lambda: not context.is_active(), progress=progress, lanes=lanes)

    files_total, bytes_total = totals or (0, 0)
    for item in run_with_progress(run, context, what):
        if isinstance(item, Progress):  # before the result: what was written so far
            msg = progress_msg(item)
            msg.files_total, msg.bytes_total = max(files_total, msg.files_done), max(bytes_total, msg.bytes_done)
            yield pb.RestoreBatch(progress=msg)
            continue
        st = item
        yield pb.RestoreBatch(set=set_info(s), local=pb.LocalWriteResult(
            files=st.files, dirs=st.dirs, links=st.links, bytes=st.bytes, errors=texts(st.errors),
            notices=texts(st.notices), xattrs_skipped=st.xattrs_skipped))
