"""`cairn restore` beyond a plain streamed restore: --dry-run, --delta [--delete], --verify and
--databases, all written by the client from what the daemon sends (so they work from another
host too). On the daemon's host a delta is run by the daemon itself (`delta_by_daemon`): the
client proves the target is its own with a claim file, and falls back to its own delta when
the daemon refuses.

- A manifest (Restore with `manifest` set) lists the entries a restore would write, each file
  with its chunk ids and sizes, and no content. --dry-run prints it as its batches arrive,
  never holding it (or, with --delta, the differences from the target) and writes nothing.
- --delta compares the target with the manifest (cairn.fsio.delta: each chunk's byte range is
  hashed), fetches only the chunks that differ (RestoreChunks), writes them in place, fixes
  metadata and, with --delete, removes what the set does not hold. Its cost is what differs
  plus reading the tree once; with --quick, files whose size and mtime match the set are not
  read (rsync's quick check). The manifest is taken as its batches arrive, a window at a time
  (cairn.fsio.delta.DeltaStream), by the delta, its dry run and --verify alike: the client
  never holds the whole manifest.
- A delta into a target on a read-only file system is refused before any call, in one line.
- Whoever writes a delta holds the target's lock while it does (cairn.fsio.delta.target_lock):
  this client for its own delta (taken before the first call with --stream), else the daemon;
  a second delta into the target is refused. While this client writes a delta, SIGINT and
  SIGTERM only stop it (Guard): at the next chunk or file, its temporary files removed, then
  exit 130 or 143 with one line.
- --verify re-reads what was restored and compares content hashes and metadata with a fresh
  manifest; any difference is printed and the command fails (exit 1).
- --databases lays down each base-backup database of the set (its attachments 'db:NAME') as a
  data directory ready for recovery, beside the target by default: `<TARGET>-db-<NAME>`, or
  where `--db-target NAME=DIR` says; every place is checked (empty, or with --delta an earlier
  copy that the daemon mends as `restore-db --delta` does; writable; apart from the files target
  and from each other), and the daemon runs every check of each database's restore
  (check_databases: the WAL its consistent point needs is archived, ...), before anything is
  written: one failing check exits 1 with nothing written. Dumps are not laid down: a note says
  how to restore them (`restore-db --target-dsn`). The output then says what to start, in which order.
- --databases with --target-time, --target-end [--accept-wal-gap] or --target-timeline recovers
  every PostgreSQL database of the set to that target, --target-lsn only the one of a set holding
  exactly one (check_recovery_target); the daemon checks each database's target (reachable in
  its archive, not before the set) with the rest of check_databases, so one unreachable target
  refuses the whole restore before anything is written. Files and dumps stay at the set's point,
  and the output says so for each dump.
- restore-db --target-timeline: 'current' (the set's own, the default), 'latest' or an id goes
  to the daemon, which writes it as recovery_target_timeline; an id is first checked against
  the timeline's history file as wal-fetch serves it (check_timeline_reaches), before anything
  is written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from cairn.client import render
from cairn.client.failures import error_text
from cairn.errors import CorruptionError, FailedPreconditionError, InvalidArgumentError
from cairn.fsio import claims
from cairn.fsio.datadir import check_data_directory
from cairn.fsio.names import shown
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.protocol import HINT_KEY

if TYPE_CHECKING:  # imported where used: a delta the daemon runs (the usual case) needs neither
    from cairn.fsio.records import EntryMeta

POSTGRES = "postgres"  # the kind of a base-backup database; the others are dumps
CHUNKS_PER_CALL = 16384  # ids in one RestoreChunks request (32 bytes each, well below the message limit)


def fetch_with(conn: Any, args: argparse.Namespace) -> str:
    """The `cairn` command prefix a restored data directory's restore_command runs wal-fetch with,
    when this client reaches the daemon over TCP (it is on another host: the daemon's socket and
    its cairn are not here): this client's cairn with its address, TLS and token file. Empty over
    the daemon's socket (the daemon's own then) or with --restore-command. PostgreSQL runs it as
    the database's user, so a token must come from a file that user can read, never a command line."""
    if getattr(args, "restore_command", None) or conn.endpoint.socket:
        return ""
    if conn.endpoint.token and not args.token_file:
        raise InvalidArgumentError(
            "restore-db over TCP writes a restore_command that PostgreSQL runs to fetch WAL from the daemon: give the "
            "token with --token-file (a file the database's user can read), or pass your own --restore-command")
    words = [own_cairn(), "--address", args.address]
    for opt, value in (("--tls-ca", args.tls_ca), ("--tls-server-name", args.tls_server_name),
                       ("--token-file", args.token_file)):
        if value:
            words += [opt, os.path.abspath(value) if opt != "--tls-server-name" else value]
    return shlex.join(words)


def own_cairn() -> str:
    """This client's `cairn` program (beside its interpreter, else on PATH), as an absolute path."""
    beside = os.path.join(os.path.dirname(sys.executable), "cairn")
    if os.access(beside, os.X_OK):
        return beside
    import shutil

    found = shutil.which("cairn")
    return os.path.abspath(found) if found else beside


def restore_request(args: argparse.Namespace, manifest: bool = False) -> pb.RestoreRequest:
    return pb.RestoreRequest(set=args.set, source=args.source or "", paths=[os.fsencode(p) for p in args.paths],
                             include=args.include or [], exclude=args.exclude or [], manifest=manifest,
                             host=args.host or "")


class ManifestStream:
    """The manifest of the restore `args` describe, as its batches arrive: iterating it yields
    batches of entries (each batch once, none held here); `set_info`, `id_key` and the
    `problems` met fill in as they come (the set with the first batch)."""

    def __init__(self, conn: Any, args: argparse.Namespace, to_record: Any, guard: Guard | None = None,
                 tree_order: bool = False) -> None:
        """`guard` cancels the call when a signal stops a delta; with `tree_order` the paths asked
        are sorted so that each directory's entries come together (what a delta needs)."""
        self.conn, self.args, self.to_record, self.guard = conn, args, to_record, guard
        self.tree_order = tree_order
        self.set_info: pb.SetInfo | None = None
        self.id_key: bytes | None = None
        self.problems: list[str] = []

    def __iter__(self) -> Iterator[list[EntryMeta]]:
        from cairn.fsio.records import EntryMeta, Failed

        request = restore_request(self.args, manifest=True)
        if self.tree_order:
            ordered = sorted(request.paths, key=lambda p: [x for x in p.split(b"/") if x and x != b"."])
            del request.paths[:]
            request.paths.extend(ordered)
        call = self.conn.stub.Restore(request)
        if self.guard is not None:
            self.guard.watch(call)
        for batch in call:
            if batch.HasField("set"):
                self.set_info = batch.set
            if batch.chunk_id_key:
                self.id_key = bytes(batch.chunk_id_key)
            entries = []
            for r in batch.records:
                rec = self.to_record(r)
                if isinstance(rec, EntryMeta):
                    entries.append(rec)
                elif isinstance(rec, Failed):
                    self.problems.append(rec.message)
            yield entries


def extras_roots(args: argparse.Namespace) -> list[bytes] | None:
    """Where --delete looks for entries the set does not hold: the whole target, or the paths
    asked; with --include/--exclude nowhere (what a pattern left out is no extra)."""
    if args.include or args.exclude:
        return None
    from cairn.fsio.delta import extras_roots as delta_extras_roots

    return delta_extras_roots([os.fsencode(p) for p in args.paths])


def chunk_stream(conn: Any, args: argparse.Namespace, ids: list[bytes], received_ahead: Any,
                 guard: Guard | None = None) -> Iterator[tuple[bytes, bytes | CorruptionError]]:
    """(id, content) of each of `ids`, fetched in calls of CHUNKS_PER_CALL ids; a chunk the
    daemon cannot read comes as (id, CorruptionError) and the others still come. `guard`
    cancels the call at hand when a signal stops the restore."""
    for start in range(0, len(ids), CHUNKS_PER_CALL):
        part = ids[start:start + CHUNKS_PER_CALL]
        call = conn.stub.RestoreChunks(pb.RestoreChunksRequest(set=args.set, source=args.source or "", ids=part,
                                                               host=args.host or ""))
        if guard is not None:
            guard.watch(call)
        cur, pieces, failed = -1, [], False
        for reply in received_ahead(call):
            if reply.index != cur:
                if cur >= 0 and not failed:
                    yield part[cur], b"".join(pieces)
                cur, pieces, failed = reply.index, [], False
            if reply.error:
                failed = True
                yield part[cur], CorruptionError(reply.error)
            else:
                pieces.append(reply.data)
        if cur >= 0 and not failed:
            yield part[cur], b"".join(pieces)


def delta_restore(conn: Any, args: argparse.Namespace, out: Any, render: Any, to_record: Any,
                  received_ahead: Any, guard: Guard | None = None) -> tuple[int, str]:
    """--delta (and --delta --dry-run), run as the manifest's batches arrive (cairn.fsio.delta.DeltaStream:
    a window of it is held at a time, never the whole manifest). Returns (exit code, set id).
    With `guard` (cmd_restore's: it holds the target's lock by now) a signal stops the writing
    at the next chunk or file, every temporary file is removed, and Interrupted is raised."""
    from cairn.fsio.delta import DeltaStream

    stream = ManifestStream(conn, args, to_record, guard, tree_order=True)

    def chunks(ids: list[bytes]) -> Iterator[tuple[bytes, bytes | CorruptionError]]:
        return chunk_stream(conn, args, ids, received_ahead, guard)

    if args.dry_run:
        return _dry_run_delta(stream, chunks, args, out, render)
    with guard.writing() if guard is not None else contextlib.nullcontext():
        ds = DeltaStream(args.target, chunks, quick=args.quick, delete=args.delete, extras_under=extras_roots(args),
                         cancelled=guard.stopped if guard is not None else None, hold_dirs=bool(args.include))
        for batch in stream:
            ds.id_key = stream.id_key  # an encrypted repository's: it comes with the first batch
            ds.feed(batch)
        ds.finish()
    set_id = stream.set_info.id if stream.set_info is not None else ""
    st = ds.stats
    report = DeltaReport(ds.checked_files, ds.checked_bytes, st.files_written, st.bytes_written, st.entries_made,
                         st.meta_fixed, st.deleted, 0 if args.delete else ds.extras,
                         stream.problems + ds.errors + st.errors)
    return report_delta(report, args, out, render, set_id), set_id


def _dry_run_delta(stream: ManifestStream, chunks: Any, args: argparse.Namespace, out: Any,
                   render: Any) -> tuple[int, str]:
    """--delta --dry-run: the differences, printed as each window of the manifest is compared
    (--json: the same document, its changes written in pieces; the extras' paths are held for
    its end). Its bytes are what the delta writes."""
    from cairn.fsio.delta import DeltaStream

    doc = None
    extras: list[str] = []
    count = 0

    def show(lines: list[str], found: list[bytes]) -> None:
        nonlocal doc, count
        lines = [x for x in lines if args.delete or not x.startswith("delete ")]
        count += len(lines)
        if args.json:
            extras.extend(render.json_path(x) for x in found)
            if doc is None:
                doc = render.JsonObjectWithArray(out, _dry_run_head(stream, args), "changes")
            doc.extend(lines)
        elif lines:
            out("\n".join(f"would {line}" for line in lines))

    ds = DeltaStream(args.target, chunks, write=False, quick=args.quick, delete=args.delete,
                     extras_under=extras_roots(args), hold_dirs=bool(args.include), show=show)
    for batch in stream:
        ds.id_key = stream.id_key
        ds.feed(batch)
    ds.finish()
    set_id = stream.set_info.id if stream.set_info is not None else ""
    problems = stream.problems + ds.errors
    if args.json:
        doc = doc or render.JsonObjectWithArray(out, _dry_run_head(stream, args), "changes")
        doc.close({"bytes_to_write": ds.write_bytes, "extras": extras, "errors": problems})
    else:
        out(f"dry run: {count} changes, {render.human_bytes(ds.write_bytes)} to write into {shown(args.target)}; "
            "nothing written")
        if ds.extras and not args.delete:
            out(f"note: {ds.extras} entries the set does not hold would be kept (--delete removes them)")
    return _problems(problems, args.json), set_id


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a restore: `message` is its one line, `exit_status` 128 + the signal."""

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = 128 + signum


class Guard:
    """What `cairn restore` holds while it runs (a context manager, entered in the main thread).

    - SIGINT and SIGTERM raise Interrupted at once, except while the client writes a delta
      (`writing()`): then they only stop it. The delta sees `stopped()` at its next chunk or
      file read, the RestoreChunks call at hand is cancelled so no wait outlasts the signal,
      and the delta removes its temporary files before Interrupted is raised. So a signal
      never lands between a file's last chunk and its rename, and SIGTERM is not a silent death.
    - `lock_target` takes the target's delta lock (cairn.fsio.delta.target_lock) when this
      client is the one that writes the delta; it is held until the restore ends."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._writing = False
        self._calls: list[Any] = []
        self._held = contextlib.ExitStack()
        self._old: dict[int, Any] = {}
        self._made = ""  # a target lock_target made: removed again if the restore fails while it is empty

    def __enter__(self) -> Guard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self._held.close()
            if exc_type is not None and self._made:
                with contextlib.suppress(OSError):
                    os.rmdir(self._made)  # only when empty: a failure before anything was written leaves no trace
        finally:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        if not self._writing:
            raise Interrupted(signum)
        for call in self._calls:
            call.cancel()

    def stopped(self) -> bool:
        return self.signum != 0

    def watch(self, call: Any) -> None:
        """A call of the delta, cancelled when a signal arrives (those that ended are let go:
        a delta makes one for each window that needs chunks)."""
        self._calls = [c for c in self._calls if not (hasattr(c, "done") and c.done())]
        self._calls.append(call)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """The client writes a delta: signals only stop it (class docstring)."""
        self._writing = True
        try:
            yield
        except Exception as exc:  # AbortedError (stopped), the cancelled call's RpcError, ...
            if not self.signum:
                raise
            raise Interrupted(self.signum, "interrupted: the delta restore stopped before its end (its temporary "
                                           "files removed); the same command finishes it") from exc
        finally:
            self._writing = False
            self._calls.clear()

    def lock_target(self, target: str) -> None:
        """This client writes the delta into `target` (made if missing): hold its lock from now on."""
        try:
            os.makedirs(target)
            self._made = target
        except FileExistsError:
            pass
        from cairn.fsio.delta import target_lock

        self._held.enter_context(target_lock(target))


def check_writable_fs(target: str) -> None:
    """A delta into a target on a read-only file system is refused with one line (OSError, as
    a plain restore's claim file is), not a warning for every entry it could not mend."""
    place = os.path.abspath(target)
    while not os.path.lexists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)  # a missing target is made on its nearest existing parent's
    try:
        read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except OSError:
        return  # the delta itself says why it cannot use the target
    if read_only:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), target)


def delta_by_daemon(conn: Any, args: argparse.Namespace, out: Any, render: Any) -> tuple[int, str] | None:
    """--delta over a Unix socket, done by the daemon on this host: it reads the target and
    writes what differs itself (no manifest or content crosses gRPC). The client proves the
    target is its own with a claim file in it, as for a local restore. None when the daemon
    does not do it (refused, or another host): the client then runs the delta itself."""
    import grpc

    target = os.path.abspath(args.target)
    if not getattr(conn.endpoint, "socket", None) or os.path.islink(target) or not os.path.isdir(target):
        return None
    nonce = os.urandom(16).hex()
    claim = os.path.join(target, claims.CLAIM_PREFIX + nonce)
    try:
        claims.make_claim(claim, nonce)
    except OSError:  # a target this client cannot write in: its own delta reports what it cannot mend
        return None
    try:
        request = restore_request(args)
        request.local_claim, request.target_path = nonce, os.fsencode(target)
        request.delta, request.quick, request.delete = True, args.quick, args.delete
        set_id, result = "", None
        try:
            for batch in conn.stub.Restore(request):
                if batch.HasField("set"):
                    set_id = batch.set.id
                if batch.HasField("delta"):
                    result = batch.delta
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "local write" in (exc.details() or ""):
                return None
            raise
    finally:
        with contextlib.suppress(OSError):
            claims.drop_claim(claim)
    if result is None:
        return None
    report = DeltaReport(result.files_checked, result.bytes_checked, result.files_written, result.bytes_written,
                         result.entries_made, result.metadata_fixed, result.deleted, result.extras_kept,
                         list(result.errors), written_by="daemon")
    return report_delta(report, args, out, render, set_id), set_id


def check_db_delta(conn: Any, target: str, stream: bool) -> None:
    """restore-db --delta is run by the daemon on its host, into an existing directory: refuse
    what cannot be (before any RPC, and before `restore --databases --delta` writes files). The
    client runs on the daemon's host here, so it checks the data directory as the daemon will."""
    if stream or not getattr(conn.endpoint, "socket", None):
        raise InvalidArgumentError("--delta of a database is run by the daemon on its own host: run it there, "
                                   "over the daemon's socket (not with --stream)")
    if not os.path.isdir(target) or os.path.islink(target):
        raise InvalidArgumentError(f"restore target '{shown(target)}' is not an existing directory: --delta mends an "
                                   "earlier copy of the data directory")
    check_data_directory(target)


def delta_db_by_daemon(conn: Any, request: Any, target: str, json_output: bool, out: Any, render: Any) -> int:
    """restore-db --delta (`request` a RestoreDbRequest): the daemon mends the data directory
    `target` on this host; the client proves the target is its own with a claim file in it."""
    target = os.path.abspath(target)
    nonce = os.urandom(16).hex()
    claim = os.path.join(target, claims.CLAIM_PREFIX + nonce)
    claims.make_claim(claim, nonce)
    request.local_claim, request.target_path, request.delta = nonce, os.fsencode(target), True
    try:
        set_id, result = "", None
        for batch in conn.stub.RestoreDb(request):
            if batch.HasField("set"):
                set_id = batch.set.id
            if batch.HasField("delta"):
                result = batch.delta
    finally:
        with contextlib.suppress(OSError):
            claims.drop_claim(claim)
    if result is None:
        raise FailedPreconditionError("the daemon did not mend the data directory (an older daemon?)")
    report = DeltaReport(result.files_checked, result.bytes_checked, result.files_written, result.bytes_written,
                         result.entries_made, result.metadata_fixed, result.deleted, 0, list(result.errors),
                         written_by="daemon")
    args = argparse.Namespace(json=json_output, target=target)
    return report_delta(report, args, out, render, set_id)


@dataclass
class DeltaReport:
    """What a delta restore checked and changed, whoever ran it (the client, or the daemon)."""

    files_checked: int
    bytes_checked: int
    files_written: int
    bytes_written: int
    entries_made: int
    metadata_fixed: int
    deleted: int
    extras_kept: int
    errors: list[str]
    written_by: str = "client"


def report_delta(r: DeltaReport, args: argparse.Namespace, out: Any, render: Any, set_id: str) -> int:
    if args.json:
        out(render.dumps({"set": set_id or None, "target": os.path.abspath(args.target), "delta": True,
                          "files_checked": r.files_checked, "bytes_checked": r.bytes_checked,
                          "files_written": r.files_written, "bytes_written": r.bytes_written,
                          "entries_made": r.entries_made, "metadata_fixed": r.metadata_fixed,
                          "deleted": r.deleted, "extras_kept": r.extras_kept, "errors": r.errors,
                          "written_by": r.written_by}))
    else:
        out(f"delta-restored set {render.short_id(set_id)} into {shown(args.target)}: checked {r.files_checked} files "
            f"({render.human_bytes(r.bytes_checked)}); wrote {render.human_bytes(r.bytes_written)} "
            f"in {r.files_written} files, made {r.entries_made} entries, fixed metadata of {r.metadata_fixed}, "
            f"deleted {r.deleted}" + (" (by the daemon on this host)" if r.written_by == "daemon" else ""))
        if r.extras_kept:
            out(f"note: {r.extras_kept} entries the set does not hold were kept (pass --delete to remove them)")
    return _problems(r.errors, args.json)


def dry_run_listing(conn: Any, args: argparse.Namespace, out: Any, render: Any, to_record: Any) -> int:
    """--dry-run without --delta: every entry a restore would write, printed as the manifest's
    batches arrive (never held whole; --json is the same document, written in pieces)."""
    stream = ManifestStream(conn, args, to_record)
    doc = None
    count = files = total = 0
    for batch in stream:
        count += len(batch)
        files += sum(m.kind == "file" for m in batch)
        total += sum(m.size for m in batch if m.kind == "file")
        if args.json:
            if doc is None:
                doc = render.JsonObjectWithArray(out, _dry_run_head(stream, args), "entries")
            doc.extend({"path": render.json_path(m.path) or ".", "kind": m.kind, "size": m.size} for m in batch)
        elif batch:
            out("\n".join(f"would write {m.kind} {render.show_path(m.path) or '.'}"
                          + (f" ({render.human_bytes(m.size)})" if m.kind == "file" else "") for m in batch))
    set_id = stream.set_info.id if stream.set_info is not None else ""
    if args.json:
        doc = doc or render.JsonObjectWithArray(out, _dry_run_head(stream, args), "entries")
        doc.close({"bytes": total, "errors": stream.problems})
    else:
        out(f"dry run: {count} entries ({files} files, {render.human_bytes(total)}) from set "
            f"{render.short_id(set_id)} into {shown(args.target)}; nothing written")
    return _problems(stream.problems, args.json)


def _dry_run_head(stream: ManifestStream, args: argparse.Namespace) -> dict[str, Any]:
    set_id = stream.set_info.id if stream.set_info is not None else ""
    return {"set": set_id or None, "target": os.path.abspath(args.target), "dry_run": True}


def verify_target(conn: Any, args: argparse.Namespace, out: Any, render: Any, to_record: Any) -> int:
    """--verify: re-read the target and compare it with the set (content hashes and metadata), as
    the manifest's batches arrive (only the differences are held)."""
    from cairn.fsio.delta import DeltaStream

    stream = ManifestStream(conn, args, to_record, tree_order=True)
    diffs: list[str] = []
    ds = DeltaStream(args.target, lambda ids: iter(()), write=False, count=False,
                     extras_under=extras_roots(args) if args.delete else None,
                     show=lambda lines, _: diffs.extend(lines))
    for batch in stream:
        ds.id_key = stream.id_key
        ds.feed(batch)
    ds.finish()
    diffs += stream.problems + ds.errors
    set_info = stream.set_info
    if diffs:
        for line in diffs:
            print(f"cairn: verify: {line.replace('write ', 'differs: ', 1)}", file=sys.stderr)
        print(f"cairn: error: verify failed: {len(diffs)} entries of {shown(args.target)} differ from set "
              f"{render.short_id(set_info.id if set_info else '')}", file=sys.stderr)
        return 1
    if args.json:
        out(render.dumps({"verified": True, "target": os.path.abspath(args.target), "files": ds.checked_files,
                          "bytes": ds.checked_bytes}))
    else:
        out(f"verified {shown(args.target)}: {ds.checked_files} files, {render.human_bytes(ds.checked_bytes)} "
            "re-read, content hashes and metadata match the set")
    return 0


def _problems(problems: list[str], json_output: bool = False) -> int:
    """Warn about the entries a delta could not write and fail (exit 1); with --json the report on
    stdout lists them, and the error is a JSON object on stderr, as every command's is."""
    if not problems:
        return 0
    for line in [] if json_output else render.restore_problem_lines(problems):  # --json: the report
        print(f"cairn: warning: {line}", file=sys.stderr)
    where = "the report lists them" if json_output else "see the warnings above"
    print(error_text(f"{len(problems)} entries could not be restored ({where})",
                     render.restore_problem_hint(problems, delta=True), 1, json_output), file=sys.stderr)
    return 1


# ---- databases ----


def database_records(set_info: pb.SetInfo) -> list[dict[str, Any]]:
    """The database records a set's extra metadata holds ('db:NAME' attachments), each with its
    `name` and `kind` ('postgres' when an older set recorded none)."""
    try:
        extra = json.loads(set_info.extra_json or "{}")
    except ValueError:
        return []
    records: list[Any] = []
    for key in ("database", "databases"):
        value = extra.get(key) if isinstance(extra, dict) else None
        if isinstance(value, dict) and "name" in value:
            records.append(value)
        elif isinstance(value, dict):
            records += [dict(v, name=v.get("name", k)) for k, v in value.items() if isinstance(v, dict)]
        elif isinstance(value, list):
            records += [v for v in value if isinstance(v, dict)]
    out: list[dict[str, Any]] = []
    for r in records:
        name = r.get("name")
        attachment = r.get("attachment") or ""
        if isinstance(name, str) and name and attachment.startswith("db:") and all(o["name"] != name for o in out):
            out.append(dict(r, kind=r.get("kind") or POSTGRES))
    return out


def databases_of(set_info: pb.SetInfo) -> list[str]:
    """Names of the databases a set holds (its 'db:NAME' attachments, as its extra metadata records them)."""
    return [r["name"] for r in database_records(set_info)]


def dump_note(set_id: str, name: str, kind: str, restorable: bool = True) -> dict[str, str]:
    """What --databases says of a dump it leaves alone: a dump is restored into a running
    database, not laid down as a directory. `restorable`: the daemon can restore it into a
    database (--target-dsn); when it cannot (a command dump whose database it has no restore
    command for, as on a recovery daemon), `restore` is the command that writes its files."""
    files = f"cairn restore-db {set_id} --database {name} --target DIR"
    return {"name": name, "kind": kind,
            "restore": f"cairn restore-db {set_id} --database {name} --target-dsn DSN" if restorable else files,
            "files": files}


def database_targets(target: str, names: list[str], places: list[str] | None,
                     dumps: dict[str, str] | None = None, delta: bool = False) -> dict[str, str]:
    """Where each database goes: `--db-target NAME=DIR`, else `<TARGET>-db-<NAME>` beside the target.

    Everything is checked before anything is written: `names` are the set's base-backup
    databases (`dumps`, name -> kind, are never laid down, so they take no --db-target); no
    place may be the files target or another database's place, or lie inside or around one;
    every place must be missing or an empty directory, or with `delta` a directory (an earlier
    copy that the daemon mends: the daemon checks it is a data directory)."""
    chosen: dict[str, str] = {}
    for item in places or []:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise InvalidArgumentError(f"invalid --db-target '{item}': expected NAME=DIR")
        if dumps and name in dumps:
            raise InvalidArgumentError(f"--db-target names database '{name}', a dump (kind {dumps[name]}): it is "
                                       "not laid down in a directory",
                                       hint=f"restore it with cairn restore-db SET --database {name} "
                                            "--target-dsn DSN")
        if name not in names:
            held = names + sorted(dumps or {})
            raise InvalidArgumentError(f"--db-target names database '{name}', which the set does not hold"
                                       + (f" (it holds {', '.join(held)})" if held else ""))
        if name in chosen:
            raise InvalidArgumentError(f"--db-target names database '{name}' twice")
        chosen[name] = os.path.abspath(where)
    base = os.path.abspath(target).rstrip("/")
    for name in names:
        chosen.setdefault(name, f"{base}-db-{name}")
    _check_apart(base, chosen)
    for name, where in chosen.items():
        if delta and os.path.isdir(where) and not os.path.islink(where):
            _check_writable(where, name)
            continue
        if os.path.lexists(where) and (not os.path.isdir(where) or os.listdir(where)):
            raise FailedPreconditionError(f"database target '{where}' for '{name}' is not an empty directory",
                                          hint="choose another place with --db-target NAME=DIR")
        _check_writable(where, name)
    return chosen


def _check_writable(where: str, name: str) -> None:
    """Refuse (FailedPreconditionError) a database place this client cannot make or write: the
    place itself when it exists, else the nearest directory above it that does (where it is
    made); a read-only file system too."""
    place = where
    while not os.path.lexists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)
    why = ""
    if not os.path.isdir(place):
        why = f"'{place}' is not a directory"
    else:
        try:
            if os.statvfs(place).f_flag & os.ST_RDONLY:
                why = f"'{place}' is on a read-only file system"
        except OSError as exc:
            why = f"'{place}': {exc.strerror}"
        if not why and not os.access(place, os.W_OK | os.X_OK):
            why = f"'{place}' is not writable"
    if why:
        raise FailedPreconditionError(f"database target '{where}' for '{name}' cannot be written: {why}",
                                      hint="choose another place with --db-target NAME=DIR")


TARGET_FLAGS = ("target_time", "target_lsn", "target_end", "accept_wal_gap", "target_timeline")


def target_flags(args: argparse.Namespace) -> list[str]:
    """The point-in-time options given to `restore` (`--target-time`, ...), in TARGET_FLAGS' order."""
    return ["--" + f.replace("_", "-") for f in TARGET_FLAGS if getattr(args, f, None) not in (None, False)]


def db_request(args: argparse.Namespace, name: str, where: str, fetch: str, timeline: str,
               **more: Any) -> pb.RestoreDbRequest:
    """The RestoreDbRequest of `restore --databases` for database `name` in `where`, with the
    recovery target the options give (the same for every PostgreSQL database of the set)."""
    return pb.RestoreDbRequest(set=args.set, source=args.source or "", database=name,
                               target_path=os.fsencode(where), host=args.host or "", fetch_with=fetch,
                               target_time=getattr(args, "target_time", None) or "",
                               target_lsn=getattr(args, "target_lsn", None) or "",
                               target_end=bool(getattr(args, "target_end", False)),
                               accept_wal_gap=bool(getattr(args, "accept_wal_gap", False)),
                               target_timeline=timeline, **more)


def check_recovery_target(conn: Any, args: argparse.Namespace, set_id: str, held: list[dict[str, Any]],
                          timeline: str) -> None:
    """Refuse (InvalidArgumentError) a point-in-time option of `restore --databases` that cannot
    apply to the set's databases `held`, before anything is written: a target for a set without a
    PostgreSQL base backup; --target-lsn unless the set holds exactly one (an LSN is a position in
    one cluster's WAL); a --target-timeline id that one of them cannot follow
    (check_timeline_reaches)."""
    flags = target_flags(args)
    if not flags:
        return
    names = [r["name"] for r in held if r["kind"] == POSTGRES]
    if not names:
        raise InvalidArgumentError(f"{flags[0]} moves PostgreSQL base backups in time, and set '{set_id}' holds "
                                   "none (its dumps stay at the set's point)")
    if args.target_lsn and len(names) != 1:
        raise InvalidArgumentError(f"--target-lsn is a position in one cluster's WAL, and set '{set_id}' holds "
                                   f"{len(names)} PostgreSQL databases ({', '.join(names)})",
                                   hint="give --target-time or --target-end, or restore one database with "
                                        "cairn restore-db SET --database NAME --target-lsn L")
    if timeline not in TIMELINE_CHOICES:
        for rec in held:
            if rec["kind"] == POSTGRES:
                check_timeline_reaches(conn, rec, int(timeline))


def check_databases(conn: Any, args: argparse.Namespace, places: dict[str, str], fetch: str,
                    mended: set[str], timeline: str = "current") -> None:
    """Ask the daemon to run every check a restore of each database in `places` makes before it
    writes (RestoreDbRequest.check_only: the set holds it as a base backup; the WAL its consistent
    point needs is archived; the recovery target, if any, is after the set's consistent point and
    reachable in the archive; a place the daemon on this host will write is none of its own; ...),
    all of them before anything of the restore is written: a failing one raises the daemon's
    error, naming the database (added in front when the daemon's words do not) or its place, and
    nothing is written. `mended`: the places the daemon mends (--delta)."""
    import grpc

    local = bool(conn.endpoint.socket) and not args.stream  # the daemon is asked to write them
    for name, where in places.items():
        request = db_request(args, name, where, fetch, timeline, check_only=True,
                             check_local=local or name in mended)
        call = conn.stub.RestoreDb(request)
        try:
            next(iter(call), None)  # one batch, the set: the checks passed
        except grpc.RpcError as exc:
            details = exc.details() or ""
            kind = {grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
                    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError}.get(exc.code())
            if kind is None or f"'{name}'" in details:
                raise
            hint = next((v for k, v in exc.trailing_metadata() or () if k == HINT_KEY), None)
            raise kind(f"database '{name}': {details}", hint=hint) from None
        finally:
            call.cancel()  # a daemon that does not know check_only would go on sending the directory


def _check_apart(target: str, chosen: dict[str, str]) -> None:
    """Refuse two places of a restore that are the same directory or lie one inside the other
    (compared with links resolved, as far as they exist)."""
    spots = [("the files target", target)] + [(f"the place of database '{n}'", w) for n, w in chosen.items()]
    real = [(what, where, os.path.realpath(where)) for what, where in spots]
    for i, (what_a, where_a, real_a) in enumerate(real):
        for what_b, where_b, real_b in real[i + 1:]:
            if real_a == real_b:
                relation = "is"
            elif real_b.startswith(real_a.rstrip("/") + "/"):
                relation = "lies inside"
            elif real_a.startswith(real_b.rstrip("/") + "/"):
                relation = "holds"
            else:
                continue
            raise InvalidArgumentError(f"{what_b} '{where_b}' {relation} {what_a} '{where_a}': every database needs "
                                       "a directory of its own, apart from the files and the other databases",
                                       hint="choose other places with --db-target NAME=DIR")


# ---- recovery timeline (restore-db --target-timeline) ----

TIMELINE_CHOICES = ("current", "latest")


def check_timeline(value: str) -> str:
    """'current', 'latest' or a timeline id (a positive decimal number); InvalidArgumentError else."""
    text = value.strip().lower()
    if text in TIMELINE_CHOICES:
        return text
    if text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= 0xFFFFFFFF:
        return str(int(text))
    raise InvalidArgumentError(f"invalid --target-timeline '{value}': expected current, latest or a timeline "
                               "id like 2")


def recovery_target(args: argparse.Namespace, rec: dict[str, Any] | None, timeline: str) -> tuple[str, str]:
    """(what a restored data directory recovers to, for --json: 'immediate', 'time T', 'lsn L'
    or 'end'; the line that says it) for restore-db's options."""
    key, what = recovery_point(args, rec, timeline)
    return key, f"PostgreSQL started on {shown(args.target)} recovers to {what}, then promotes"


def recovery_point(args: argparse.Namespace, rec: dict[str, Any] | None, timeline: str) -> tuple[str, str]:
    """(the --json key of recovery_target; its words, e.g. "time 'T' (every commit up to it) on the
    set's own timeline") for the options of restore-db or `restore --databases`."""
    on = {"current": "the set's own timeline", "latest": "the newest timeline in the archive"}.get(
        timeline, f"timeline {timeline}")
    if args.target_end and getattr(args, "accept_wal_gap", False):
        key, what = "end", ("the end of the WAL archive, or the first segment missing from it (--accept-wal-gap: "
                            "what was archived after a gap is not replayed)")
    elif args.target_end and timeline == "current" and not getattr(args, "restore_command", None):  # gaps refused
        key, what = "end", "the end of the WAL archive (every archived segment is replayed)"
    elif args.target_end:
        key, what = "end", ("the end of the WAL archive (archived segments are replayed up to the first one missing, "
                            "if any: 'cairn verify' names gaps)")
    elif args.target_time:
        key, what = f"time {args.target_time}", f"time '{args.target_time}' (every commit up to it)"
    elif args.target_lsn:
        key, what = f"lsn {args.target_lsn}", f"LSN {args.target_lsn} (inclusive)"
    else:
        point = f" (LSN {rec['stop_lsn']})" if rec and rec.get("stop_lsn") else ""
        key, what = "immediate", f"the set's consistent point{point}"
    return key, f"{what} on {on}"


def _lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def check_timeline_reaches(conn: Any, rec: dict[str, Any], timeline: int) -> None:
    """Refuse (InvalidArgumentError) a timeline id recovery of the set's database cannot follow:
    older than the set's own timeline, absent from the archive (no history file), or one that
    branched off the set's timeline before the set's consistent point. Reads the timeline's
    history file from the archive as wal-fetch serves it to recovery."""
    import grpc

    first = str((rec.get("wal") or {}).get("first") or "")
    try:
        own = int(first[:8], 16) if len(first) == 24 else 1
    except ValueError:
        own = 1
    name = rec.get("name", "?")
    if timeline == own:
        return
    if timeline < own:
        raise InvalidArgumentError(f"timeline {timeline} is older than timeline {own} of database '{name}' in "
                                   "this set: recovery cannot follow it", hint="give --target-timeline current")
    history = f"{timeline:08X}.history"
    namespace = str(rec.get("system_identifier") or "")
    try:
        data = b"".join(r.data for r in conn.stub.WalFetch(pb.WalFetchRequest(name=history,
                                                                             wal_namespace=namespace)))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        raise InvalidArgumentError(f"timeline {timeline} of database '{name}' is not in the archive (no {history})",
                                   hint="give --target-timeline current or latest") from None
    stop = _lsn(str(rec.get("stop_lsn") or "0/0"))
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) == own and "/" in parts[1]:
            if _lsn(parts[1]) < stop:
                raise InvalidArgumentError(
                    f"timeline {timeline} branched off timeline {own} at {parts[1]}, before the consistent point "
                    f"{rec.get('stop_lsn')} of database '{name}' in this set: recovery cannot follow it",
                    hint="choose a set taken before the branch, or --target-timeline current")
            return
    raise InvalidArgumentError(f"timeline {timeline} does not descend from timeline {own} of database '{name}' in "
                               "this set: recovery cannot follow it", hint="give --target-timeline current")
