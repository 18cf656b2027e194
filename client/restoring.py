"""`cairn restore` beyond a plain streamed restore: --dry-run, --delta [--delete], --verify and
--databases, all written by the client from what the daemon sends (so they work from another
host too). On the daemon's host a delta is run by the daemon itself (`delta_by_daemon`): the
client proves the target is its own with a claim file, and falls back to its own delta when
the daemon refuses.

- A manifest (Restore with `manifest` set) lists the entries a restore would write, each file
  with its chunk ids and sizes, and no content. --dry-run prints it (or, with --delta, the
  differences from the target) and writes nothing.
- --delta compares the target with the manifest (cairn.fsio.delta: each chunk's byte range is
  hashed), fetches only the chunks that differ (RestoreChunks), writes them in place, fixes
  metadata and, with --delete, removes what the set does not hold. Its cost is what differs
  plus reading the tree once; with --quick, files whose size and mtime match the set are not
  read (rsync's quick check).
- --verify re-reads what was restored and compares content hashes and metadata with a fresh
  manifest; any difference is printed and the command fails (exit 1).
- --databases lays down each database of the set (its attachments 'db:NAME') as a data
  directory ready for recovery, beside the target by default: `<TARGET>-db-<NAME>`, or where
  `--db-target NAME=DIR` says; the output then says what to start, in which order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cairn.errors import FailedPreconditionError, InvalidArgumentError
from cairn.fsio import claims
from cairn.fsio.delta import DeltaPlan, mend, plan
from cairn.fsio.delta import extras_roots as delta_extras_roots
from cairn.fsio.records import EntryMeta, Failed
from cairn.proto.cairn.v1 import cairn_pb2 as pb

CHUNKS_PER_CALL = 16384  # ids in one RestoreChunks request (32 bytes each, well below the message limit)


def restore_request(args: argparse.Namespace, manifest: bool = False) -> pb.RestoreRequest:
    return pb.RestoreRequest(set=args.set, source=args.source or "", paths=[os.fsencode(p) for p in args.paths],
                             include=args.include or [], exclude=args.exclude or [], manifest=manifest)


def fetch_manifest(conn: Any, args: argparse.Namespace, to_record: Any) -> tuple[pb.SetInfo | None, list[EntryMeta],
                                                                                     list[str]]:
    """(set, entries, problems) of the restore `args` describe, without content."""
    set_info = None
    entries: list[EntryMeta] = []
    problems: list[str] = []
    for batch in conn.stub.Restore(restore_request(args, manifest=True)):
        if batch.HasField("set"):
            set_info = batch.set
        for r in batch.records:
            rec = to_record(r)
            if isinstance(rec, EntryMeta):
                entries.append(rec)
            elif isinstance(rec, Failed):
                problems.append(rec.message)
    return set_info, entries, problems


def extras_roots(args: argparse.Namespace) -> list[bytes]:
    """Where --delete looks for entries the set does not hold: the whole target, or the paths asked."""
    return delta_extras_roots([os.fsencode(p) for p in args.paths])


def chunk_stream(conn: Any, args: argparse.Namespace, ids: list[bytes], received_ahead: Any) -> Iterator[
        tuple[bytes, bytes]]:
    """(id, content) of each of `ids`, fetched in calls of CHUNKS_PER_CALL ids."""
    for start in range(0, len(ids), CHUNKS_PER_CALL):
        part = ids[start:start + CHUNKS_PER_CALL]
        call = conn.stub.RestoreChunks(pb.RestoreChunksRequest(set=args.set, source=args.source or "", ids=part))
        cur, pieces = -1, []
        for reply in received_ahead(call):
            if reply.index != cur:
                if pieces:
                    yield part[cur], b"".join(pieces)
                cur, pieces = reply.index, []
            pieces.append(reply.data)
        if pieces or cur >= 0:
            yield part[cur], b"".join(pieces)


def delta_restore(conn: Any, args: argparse.Namespace, out: Any, render: Any, to_record: Any,
                  received_ahead: Any) -> tuple[int, str]:
    """--delta (and --delta --dry-run). Returns (exit code, set id)."""
    set_info, entries, problems = fetch_manifest(conn, args, to_record)
    set_id = set_info.id if set_info is not None else ""
    if args.dry_run:
        p = plan(args.target, entries, extras_under=extras_roots(args), quick=args.quick)
        return _report_dry_run(p, args, out, render, set_id, problems + p.errors), set_id
    p, st = mend(args.target, entries, lambda ids: chunk_stream(conn, args, ids, received_ahead), quick=args.quick,
                 delete=args.delete, extras_under=extras_roots(args))
    kept = 0 if args.delete else len(p.extras)
    report = DeltaReport(p.checked_files, p.checked_bytes, st.files_written, st.bytes_written, st.entries_made,
                         st.meta_fixed, st.deleted, kept, problems + p.errors + st.errors)
    return report_delta(report, args, out, render, set_id), set_id


def delta_by_daemon(conn: Any, args: argparse.Namespace, out: Any, render: Any) -> tuple[int, str] | None:
    """--delta over a Unix socket, done by the daemon on this host: it reads the target and
    writes what differs itself (no manifest or content crosses gRPC). The client proves the
    target is its own with a claim file in it, as for a local restore. None when the daemon
    does not do it (refused, or another host): the client then runs the delta itself."""
    import grpc

    target = os.path.abspath(args.target)
    if not getattr(conn.endpoint, "socket", None) or os.path.islink(target) or not os.path.isdir(target):
        return None
    nonce = secrets.token_hex(16)
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
            os.unlink(claim)
    if result is None:
        return None
    report = DeltaReport(result.files_checked, result.bytes_checked, result.files_written, result.bytes_written,
                         result.entries_made, result.metadata_fixed, result.deleted, result.extras_kept,
                         list(result.errors), written_by="daemon")
    return report_delta(report, args, out, render, set_id), set_id


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
        out(f"delta-restored set {render.short_id(set_id)} into {args.target}: checked {r.files_checked} files "
            f"({render.human_bytes(r.bytes_checked)}); wrote {render.human_bytes(r.bytes_written)} "
            f"in {r.files_written} files, made {r.entries_made} entries, fixed metadata of {r.metadata_fixed}, "
            f"deleted {r.deleted}" + (" (by the daemon on this host)" if r.written_by == "daemon" else ""))
        if r.extras_kept:
            out(f"note: {r.extras_kept} entries the set does not hold were kept (pass --delete to remove them)")
    return _problems(r.errors)


def _report_dry_run(p: DeltaPlan, args: argparse.Namespace, out: Any, render: Any, set_id: str,
                    problems: list[str]) -> int:
    lines = [x for x in p.changes() if args.delete or not x.startswith("delete ")]
    if args.json:
        out(render.dumps({"set": set_id or None, "target": os.path.abspath(args.target), "dry_run": True,
                          "changes": lines, "bytes_to_write": p.write_bytes,
                          "extras": [render.json_path(x) for x in p.extras], "errors": problems}))
    else:
        for line in lines:
            out(f"would {line}")
        out(f"dry run: {len(lines)} changes, {render.human_bytes(p.write_bytes)} to write into {args.target}; "
            "nothing written")
        if p.extras and not args.delete:
            out(f"note: {len(p.extras)} entries the set does not hold would be kept (--delete removes them)")
    return _problems(problems)


def dry_run_listing(conn: Any, args: argparse.Namespace, out: Any, render: Any, to_record: Any) -> int:
    """--dry-run without --delta: every entry a restore would write."""
    set_info, entries, problems = fetch_manifest(conn, args, to_record)
    set_id = set_info.id if set_info is not None else ""
    total = sum(m.size for m in entries if m.kind == "file")
    if args.json:
        out(render.dumps({"set": set_id or None, "target": os.path.abspath(args.target), "dry_run": True,
                          "entries": [{"path": render.json_path(m.path), "kind": m.kind, "size": m.size}
                                      for m in entries], "bytes": total, "errors": problems}))
    else:
        for m in entries:
            size = f" ({render.human_bytes(m.size)})" if m.kind == "file" else ""
            out(f"would write {m.kind} {render.show_path(m.path)}{size}")
        files = sum(m.kind == "file" for m in entries)
        out(f"dry run: {len(entries)} entries ({files} files, {render.human_bytes(total)}) from set "
            f"{render.short_id(set_id)} into {args.target}; nothing written")
    return _problems(problems)


def verify_target(conn: Any, args: argparse.Namespace, out: Any, render: Any, to_record: Any) -> int:
    """--verify: re-read the target and compare it with the set (content hashes and metadata)."""
    set_info, entries, problems = fetch_manifest(conn, args, to_record)
    p = plan(args.target, entries, extras_under=extras_roots(args) if args.delete else None)
    diffs = p.changes() + problems + p.errors
    if diffs:
        for line in diffs:
            print(f"cairn: verify: {line.replace('write ', 'differs: ', 1)}", file=sys.stderr)
        print(f"cairn: error: verify failed: {len(diffs)} entries of {args.target} differ from set "
              f"{render.short_id(set_info.id if set_info else '')}", file=sys.stderr)
        return 1
    if args.json:
        out(render.dumps({"verified": True, "target": os.path.abspath(args.target), "files": p.checked_files,
                          "bytes": p.checked_bytes}))
    else:
        out(f"verified {args.target}: {p.checked_files} files, {render.human_bytes(p.checked_bytes)} re-read, "
            "content hashes and metadata match the set")
    return 0


def _problems(problems: list[str]) -> int:
    for line in problems:
        print(f"cairn: warning: {line}", file=sys.stderr)
    if problems:
        print(f"cairn: error: {len(problems)} entries could not be restored (see the warnings above)",
              file=sys.stderr)
        return 1
    return 0


# ---- databases ----


def databases_of(set_info: pb.SetInfo) -> list[str]:
    """Names of the databases a set holds (its 'db:NAME' attachments, as its extra metadata records them)."""
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
    names: list[str] = []
    for r in records:
        name = r.get("name")
        attachment = r.get("attachment") or ""
        if isinstance(name, str) and name and attachment.startswith("db:") and name not in names:
            names.append(name)
    return names


def database_targets(target: str, names: list[str], places: list[str] | None) -> dict[str, str]:
    """Where each database goes: `--db-target NAME=DIR`, else `<TARGET>-db-<NAME>` beside the target."""
    chosen: dict[str, str] = {}
    for item in places or []:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise InvalidArgumentError(f"invalid --db-target '{item}': expected NAME=DIR")
        if name not in names:
            raise InvalidArgumentError(f"--db-target names database '{name}', which the set does not hold"
                                       + (f" (it holds {', '.join(names)})" if names else ""))
        chosen[name] = os.path.abspath(where)
    base = os.path.abspath(target).rstrip("/")
    for name in names:
        chosen.setdefault(name, f"{base}-db-{name}")
    for name, where in chosen.items():
        if os.path.lexists(where) and (not os.path.isdir(where) or os.listdir(where)):
            raise FailedPreconditionError(f"database target '{where}' for '{name}' is not an empty directory",
                                          hint="choose another place with --db-target NAME=DIR")
    return chosen
