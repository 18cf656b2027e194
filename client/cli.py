"""The `cairn` command line: one subcommand per RPC of cairn.v1.Cairn.

Exit status: 0 success, 1 failure, 2 usage error (also INVALID_ARGUMENT from the daemon),
3 not found (unknown set, path, source or host). Errors go to stderr as one line
"cairn: error: <message>", optionally followed by "hint: <hint>"; everything else goes to
stdout. An option that names something (--source, --host, --set, --socket, ...) given an
empty value is a usage error, never read as the option left out. `--json` (before or after the
command) prints data as JSON for scripts. A restore
is written here, by the client, from the records the daemon streams. A listing (`ls`, also
`-r` and `--json`) is printed as its batches arrive: the client never holds it whole.

grpc, the protobuf messages and the renderers are imported on first use: `cairn wal-fetch` runs
once per WAL file during recovery, and for a file restore-db placed in pg_wal/ it answers
without them (see cmd_wal_fetch).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from cairn import __version__, protocol, walnames
from cairn.client.failures import error_text
from cairn.errors import CairnError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from cairn.fsio import claims
from cairn.fsio.names import shown

if TYPE_CHECKING:
    from cairn.client.connection import Connection, Endpoint
    from cairn.client.restoring import Guard
    from cairn.fsio.records import Record
    from cairn.fsio.writer import TreeWriter


class _OnFirstUse:
    """A module imported when one of its attributes is first used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


grpc: Any = _OnFirstUse("grpc")
pb: Any = _OnFirstUse("cairn.proto.cairn.v1.cairn_pb2")
render: Any = _OnFirstUse("cairn.client.render")
wire: Any = _OnFirstUse("cairn.proto.wire")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
EXIT_ARCHIVE_FAILED = 255  # wal-fetch could not ask the archive: above 125, so PostgreSQL's recovery stops
SHOWN_PROBLEMS = 10  # problems of a set printed one per line; the rest counted
HINT_KEY = protocol.HINT_KEY
WAL_PIECE = 1 << 20
LEVELS = protocol.LEVELS
KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")

WAL_MARKER = walnames.WAL_MARKER  # written by restore-db into pg_wal/: the WAL files it placed there
NO_HISTORY = walnames.NO_HISTORY
OWN_POINT = walnames.OWN_POINT  # beside WAL_MARKER: recovery stops inside the placed WAL
MAX_TIMEOUT = 86400.0  # seconds: the longest --timeout taken (a day)
SPOOL_WAIT = 10.0  # seconds wal-fetch waits for a segment the prefetcher is fetching right now
RECEIVE_AHEAD = 8  # restore batches (about 1 MiB each) received while the previous ones are written
_STATUS_EXIT = {"NOT_FOUND": EXIT_NOT_FOUND, "INVALID_ARGUMENT": EXIT_USAGE}
_ERROR_EXIT = {"not_found": EXIT_NOT_FOUND, "invalid_argument": EXIT_USAGE}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in the client's style.

    A command's options and its positional arguments may come in any order (`ls SET --source
    S PATH`), and `--` ends its options: everything after it is positional, also a word
    beginning with '-' (`restore SET --target DIR -- -name`). Plain argparse fills all the
    positionals (`nargs="*"` or `"?"` ones empty) at the first run of positional words, so
    words after an option were "unrecognized"; here the options are parsed first, with the
    positionals switched off, then the positional words, in order, with `--` before them.
    (argparse's own parse_known_intermixed_args does the same two passes, but Python 3.11's
    drops or refuses what follows `--`, e.g. `key remove -- -abc`.)"""

    _positionals_now = False  # inside the second pass of parse_known_args

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument -") and message.endswith(": expected one argument"):
            # argparse takes a value beginning with '-' (`--keep-within -5d`) for an option
            flag = message[len("argument "):-len(": expected one argument")].split("/")[-1]
            message += f" (a value beginning with '-' is given as {flag}=VALUE)"
        fail(message, f"see '{self.prog} --help'", EXIT_USAGE)
        raise SystemExit(EXIT_USAGE)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        if self._subparsers is not None or self._positionals_now or args is None:
            return super().parse_known_args(args, namespace)  # the top level: the command takes the rest
        words = list(args)
        tail: list[str] = []
        if "--" in words:
            at = words.index("--")
            words, tail = words[:at], words[at + 1:]
        positionals = self._get_positional_actions()
        optionals = self._get_optional_actions()
        saved = [(a, a.nargs, a.default) for a in positionals]
        usage = self.usage
        try:
            if usage is None:
                # --help names the positionals still; argparse %-formats a usage it is given
                self.usage = self.format_usage()[len("usage: "):].replace("%", "%%")
            for a in positionals:  # switched off: they take nothing and set nothing
                a.nargs = a.default = argparse.SUPPRESS
            namespace, rest = super().parse_known_args(words, namespace)
        finally:
            self.usage = usage
            for a, nargs, default in saved:
                a.nargs, a.default = nargs, default
        unknown = [w for w in rest if self._parse_optional(w) is not None]  # options this command lacks
        loose = [w for w in rest if self._parse_optional(w) is None]  # its positional words, in order
        if not positionals:
            return namespace, unknown + loose + tail
        required = [(a, a.required) for a in optionals] + [(g, g.required) for g in self._mutually_exclusive_groups]
        try:
            self._positionals_now = True
            for thing, _ in required:  # checked in the first pass already
                thing.required = False
            namespace, extra = super().parse_known_args(["--", *loose, *tail], namespace)
        finally:
            self._positionals_now = False
            for thing, was in required:
                thing.required = was
        return namespace, unknown + extra


_JSON_ERRORS = [False]  # set by main() under --json: errors become one JSON object on stderr


def fail(message: str, hint: str | None = None, code: int = EXIT_FAILURE) -> int:
    print(error_text(" ".join(message.split()), hint, code, _JSON_ERRORS[0]), file=sys.stderr)
    return code


def out(line: str = "") -> None:
    print(line, flush=True)


def write(text: str) -> None:
    """Print `text` as it is (no newline added), flushed: a piece of a streamed output."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def progress_view(json_output: bool, title: str, unit: str = "file") -> Any:
    """A ProgressView for a long command (imported here: short commands like wal-push skip it)."""
    from cairn.client.progress import ProgressView, choose_mode

    return ProgressView(choose_mode(json_output), title, unit=unit)


# ---- commands ----


def cmd_status(conn: Connection, args: argparse.Namespace) -> int:
    reply = conn.stub.Status(pb.StatusRequest())
    if args.json:
        out(render.dumps(render.status_dict(reply)))
    else:
        for line in render.status_lines(reply, time.time()):
            out(line)
    return EXIT_OK


def cmd_backup(conn: Connection, args: argparse.Namespace) -> int:
    request = pb.BackupRequest(source=args.source or "", level=args.level or "", tags=args.tag or [])
    call = conn.stub.Backup(request)
    result = None
    try:
        with progress_view(args.json, "backup") as view:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "started":
                    view.title = f"{event.started.level} backup of '{event.started.source}'"
                    if view.mode == "plain":
                        out(f"started {view.title}")
                elif kind == "progress":
                    p = event.progress
                    view.update(p.phase, p.files_done, p.files_total, p.bytes_done, p.bytes_total, p.current_path,
                                estimated=p.totals_estimated)
                elif kind == "set":
                    result = event.set
    except KeyboardInterrupt:
        call.cancel()
        return fail("interrupted", hint="the backup goes on in the daemon; `cairn status` shows it", code=130)
    if result is None:
        return fail("the daemon ended the backup without a set")
    if args.json:
        out(render.dumps(render.set_dict(result)))
    else:
        out(render.set_summary(result))
        if result.note:
            out(f"note: {result.note}")
        if result.stats.fuzzy:
            out(f"warning: {result.stats.fuzzy} files changed while they were read (stored as read)")
        out(result.id)
        unread = render.set_extra(result).get("errors") or []
        for problem in unread[:SHOWN_PROBLEMS]:  # the set is committed without them: say which
            print(f"cairn: warning: {problem}", file=sys.stderr)
        if len(unread) > SHOWN_PROBLEMS:
            print(f"cairn: warning: {len(unread) - SHOWN_PROBLEMS} more files could not be read "
                  f"(`cairn sets --json` lists them)", file=sys.stderr)
        window = render.set_extra(result).get("window")
        for problem in (window.get("errors") or []) if isinstance(window, dict) else []:
            stopped = " (the application may still be stopped)" if "thaw hook" in problem else ""
            print(f"cairn: warning: {problem}{stopped}", file=sys.stderr)
        if isinstance(window, dict) and window.get("changed_files") and window.get("warning"):
            print(f"cairn: warning: {window['warning']}", file=sys.stderr)
    return EXIT_FAILURE if result.status == "failed" else EXIT_OK


def cmd_sets(conn: Connection, args: argparse.Namespace) -> int:
    # with --host the daemon lists that host's sets (and a write-only daemon refuses another's)
    reply = conn.stub.ListSets(pb.ListSetsRequest(source=args.source or "", host=args.host or ""))
    for line in reply.unreadable:  # left out of the listing: say so, or a damaged set just vanishes
        set_id, _, why = line.partition(": ")
        advice = reply.unreadable_advice or "'cairn verify' names the damage, 'cairn repair sets' removes it"
        print(f"cairn: warning: set '{render.short_id(set_id)}' cannot be read ({why}): it is not listed; {advice}",
              file=sys.stderr)
    # every set listed or unreadable: a base among neither was pruned (a base is its host's)
    known = {s.id for s in reply.sets}
    damaged = {line.partition(": ")[0] for line in reply.unreadable}
    sets = [s for s in reply.sets if not args.host or s.hostname == args.host]
    if args.json:
        out(render.dumps([{**render.set_dict(s), "base_pruned": bool(s.base) and s.base not in known | damaged,
                           "base_damaged": s.base in damaged} for s in sets]))
        return EXIT_OK
    if not sets:
        out("no sets")
        return EXIT_OK
    for line in render.table(render.SET_COLUMNS, (render.set_row(s, known, damaged) for s in sets)):
        out(line)
    return EXIT_OK


def cmd_check_db(conn: Connection, args: argparse.Namespace) -> int:
    reply = conn.stub.CheckDb(pb.CheckDbRequest(database=args.name, timeout=args.timeout or 0.0),
                              timeout=(args.timeout or 60.0) + 60.0)
    if args.json:
        out(render.dumps(render.check_db_dict(reply)))
    else:
        for line in render.check_db_lines(args.name, reply):
            out(line)
    return EXIT_OK if reply.ok else EXIT_FAILURE


def cmd_ls(conn: Connection, args: argparse.Namespace) -> int:
    request = pb.ListTreeRequest(
        set=args.set, source=args.source or "", path=os.fsencode(args.path or ""), recursive=args.recursive,
        host=args.host or "",
    )
    # printed as the batches arrive (the daemon sends them as it reads the tree): a listing of
    # millions of entries is never held here, and --json is the same array, written in pieces
    info = None
    code = EXIT_OK
    array = render.JsonArray(write) if args.json else None
    columns = render.Columns(("MODE", "UID", "GID", "SIZE", "MTIME", "NAME"))
    here: list[str] | None = None  # the set's dumps the daemon can restore with --target-dsn (None: not said)
    for reply in conn.stub.ListTree(request):
        if reply.HasField("set"):
            info = reply.set
            here = list(reply.dsn_restorable) if reply.dumps_known else None
        if array is not None:
            array.extend(render.entry_dict(e) for e in reply.entries)
        else:
            write("".join(line + "\n" for line in
                          columns.lines(render.entry_row(e, full_path=args.recursive) for e in reply.entries)))
        for line in reply.problems:  # damaged directories: everything else is listed, and the exit status says so
            print(f"cairn: error: {line}", file=sys.stderr)
            code = EXIT_FAILURE
    if array is not None:
        array.close()
        return code
    if not (args.path or "").strip("/") and info is not None:
        from cairn.client import restoring

        sid = render.short_id(info.id)
        for rec in restoring.database_records(info):  # beside the tree: restore-db SET --database NAME
            name, kind = rec["name"], rec.get("kind", restoring.POSTGRES)
            if kind == restoring.POSTGRES:
                out(f"database {name}  (db:{name}: cairn restore-db {sid} --database {name} --target DIR)")
            elif here is not None and name not in here:
                out(f"database {name}  (db:{name}, a dump of kind {kind}: cairn restore-db {sid} --database {name} "
                    "--target DIR for its files, then its own restore tool; this daemon has no restore command for it)")
            else:
                out(f"database {name}  (db:{name}, a dump of kind {kind}: cairn restore-db {sid} --database {name} "
                    "--target-dsn DSN, or --target DIR for its files)")
    return code


def cmd_diff(conn: Connection, args: argparse.Namespace) -> int:
    # printed as the batches arrive (the daemon sends them as it walks the two trees): a diff of
    # millions of paths is never held here. Text comes in tree order; --json asks the daemon for
    # every added path first, then the modified, then the deleted, so its three arrays are
    # written in pieces
    marks = {"added": "+", "modified": "~", "deleted": "-"}
    counts = dict.fromkeys(marks, 0)
    doc = None
    for reply in conn.stub.Diff(pb.DiffRequest(a=args.set_a, b=args.set_b, source=args.source or "",
                                                host=args.host or "", grouped=bool(args.json))):
        if reply.HasField("a") and args.json:
            doc = render.JsonObjectWithArrays(out, {"a": reply.a.id or None, "b": reply.b.id or None}, marks)
        for change, mark in marks.items():
            paths = getattr(reply, change)
            counts[change] += len(paths)
            if doc is not None and paths:
                doc.extend(change, (render.json_path(p) for p in paths))
            elif paths:
                out("\n".join(f"{mark} {render.show_path(p)}" for p in paths))
    if args.json:
        (doc or render.JsonObjectWithArrays(out, {"a": None, "b": None}, marks)).close()
        return EXIT_OK
    out(f"{counts['added']} added, {counts['modified']} modified, {counts['deleted']} deleted")
    return EXIT_OK


def cmd_restore(conn: Connection, args: argparse.Namespace) -> int:
    from cairn.client import restoring

    with restoring.Guard() as guard:  # signals, and the target's lock when this client writes a delta
        return _restore(conn, args, guard)


def _restore(conn: Connection, args: argparse.Namespace, guard: Guard) -> int:
    from cairn.client import restoring

    if (args.delete or args.quick) and not args.delta:
        raise InvalidArgumentError(f"{'--delete' if args.delete else '--quick'} only goes with --delta")
    for pattern in (*(args.include or ()), *(args.exclude or ())):
        try:
            pattern.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"pattern '{os.fsencode(pattern).decode('utf-8', 'backslashreplace')}' is not "
                                       "valid UTF-8: patterns are text; name such paths as PATH arguments") from None
    if not args.target.strip():
        raise InvalidArgumentError("--target needs a directory")
    if args.delete and (args.include or args.exclude):
        raise InvalidArgumentError("--delete removes what the set does not hold: it cannot be combined with "
                                   "--include or --exclude")
    if args.dry_run and args.verify:
        raise InvalidArgumentError("--dry-run writes nothing, so there is nothing to --verify")
    if args.db_target and not args.databases:
        raise InvalidArgumentError("--db-target only goes with --databases")
    moving = restoring.target_flags(args)  # point-in-time options: the set's PostgreSQL databases only
    if moving and not args.databases:
        raise InvalidArgumentError(f"{moving[0]} only goes with --databases: it moves the set's PostgreSQL "
                                   "databases in time (the files are the set's)")
    check_target_options(args)
    timeline = restoring.check_timeline(args.target_timeline or "current")
    if args.accept_wal_gap and not args.target_end:
        raise InvalidArgumentError("--accept-wal-gap only goes with --target-end")
    if not args.delta:
        check_target(args.target, args.overwrite)
    elif os.path.lexists(args.target) and not os.path.isdir(args.target):
        raise InvalidArgumentError(f"restore target '{shown(args.target)}' is not a directory")
    if args.delta and not args.dry_run:
        restoring.check_writable_fs(args.target)
    places: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}  # the set's record of each database in `places`
    mended: set[str] = set()  # databases whose place holds an earlier copy (--delta): mended, not laid down
    fetch = ""  # restore_command's wal-fetch prefix for a client on another host (restoring.fetch_with)
    dumps: list[dict[str, str]] = []  # databases --databases leaves alone: dumps, restored with --target-dsn
    files_report: dict[str, Any] = {}
    daemon_delta = args.delta and not args.dry_run and not args.stream  # the daemon is asked first
    if daemon_delta and not args.verify and not args.databases:  # one call: no set to pin
        done = restoring.delta_by_daemon(conn, args, out, render)
        if done is not None:
            return done[0]
        daemon_delta = False  # it refused: the client runs the delta, and does not ask again
    if args.delta and not args.dry_run and not daemon_delta:  # this client writes: refused before any call
        guard.lock_target(args.target)
    if args.delta or args.verify or args.databases:  # several calls: pin the set ('latest' may move)
        first = next(iter(conn.stub.ListTree(pb.ListTreeRequest(set=args.set, source=args.source or "",
                                                                host=args.host or ""))))
        args.set = first.set.id
        if args.databases:
            held = restoring.database_records(first.set)
            if not held:
                return fail(f"set '{render.short_id(args.set)}' holds no database", code=EXIT_NOT_FOUND)
            kinds = {r["name"]: r["kind"] for r in held if r["kind"] != restoring.POSTGRES}
            names = [r["name"] for r in held if r["kind"] == restoring.POSTGRES]
            records = {r["name"]: r for r in held if r["kind"] == restoring.POSTGRES}
            restoring.check_recovery_target(conn, args, render.short_id(args.set), held, timeline)
            places = restoring.database_targets(args.target, names, args.db_target, kinds, delta=args.delta)
            mended = {n for n, w in places.items() if args.delta and os.path.isdir(w) and os.listdir(w)}
            for name in sorted(mended):  # an earlier copy: the daemon mends it (refused here if it cannot)
                restoring.check_db_delta(conn, places[name], args.stream)
            here = list(first.dsn_restorable) if first.dumps_known else None
            dumps = [restoring.dump_note(render.short_id(args.set), n, k, here is None or n in here)
                     for n, k in kinds.items()]
            if moving:  # a dump cannot be moved in time: say so, per dump
                dumps = [dict(d, recovery_target="set", note=DUMP_AT_SET_POINT) for d in dumps]
            fetch = restoring.fetch_with(conn, args) if places else ""  # refused before anything is written
            # every one, its recovery target too, before anything is written
            restoring.check_databases(conn, args, places, fetch, mended, timeline)
    recovers = {n: restoring.recovery_point(args, records.get(n), timeline) for n in places}
    # With --databases and --json the files part is one part of the one document printed at the end.
    whole_doc = args.json and args.databases
    captured: list[str] = []
    files_out = captured.append if whole_doc else out
    if args.dry_run:
        if args.delta:
            code, _ = restoring.delta_restore(conn, args, files_out, render, to_record, received_ahead)
        else:
            code = restoring.dry_run_listing(conn, args, files_out, render, to_record)
        if whole_doc:
            dbs = [{"name": n, "target": w} for n, w in places.items()]
            if moving:
                dbs = [dict(d, recovery_target=recovers[d["name"]][0], recovery_target_timeline=timeline)
                       for d in dbs]
            out(render.dumps(dict(_captured_doc(captured), databases=dbs, dumps=dumps)))
            return code
        for name, where in places.items():
            ready = f"ready for recovery to {recovers[name][1]}" if moving else "ready for recovery"
            if name in mended:
                out(f"would mend database '{name}' in {where} (--delta: the daemon writes what differs from the "
                    f"set and removes what it does not hold; {ready})")
                continue
            out(f"would lay down database '{name}' in {where} ({ready})")
        for d in dumps:
            if d["restore"] == d["files"]:  # this daemon cannot restore it into a database
                out(f"would leave database '{d['name']}' alone: it is a dump (kind {d['kind']}) this daemon has no "
                    f"restore command for; write its files with {d['files']} and load them with its own tool"
                    + (f"; {DUMP_AT_SET_POINT}" if moving else ""))
            else:
                out(f"would leave database '{d['name']}' alone: it is a dump (kind {d['kind']}); restore it into a "
                    f"database with {d['restore']}" + (f"; {DUMP_AT_SET_POINT}" if moving else ""))
        return code
    if args.delta:
        done = restoring.delta_by_daemon(conn, args, files_out, render) if daemon_delta else None
        if done is None and daemon_delta:  # the daemon refused: this client writes after all
            guard.lock_target(args.target)
        code, _ = done if done is not None else restoring.delta_restore(conn, args, files_out, render, to_record,
                                                                          received_ahead, guard)
        files_report.update(_captured_doc(captured))
    else:
        request = restoring.restore_request(args)
        request.target_path = os.fsencode(os.path.abspath(args.target))
        code = restore_into(conn, conn.stub.Restore, request, args.target, args.json,
                            report=files_report if whole_doc else None,
                            local=not args.stream and not args.overwrite, overwrite=args.overwrite,
                            whole=not args.paths and not args.include and not args.exclude, mode=None)
    if code == EXIT_OK and args.verify:
        code = restoring.verify_target(conn, args, files_out, render, to_record)
        files_report["verified"] = code == EXIT_OK
    if code != EXIT_OK or not args.databases:
        return code
    dbs = []
    for name, where in places.items():
        request = restoring.db_request(args, name, where, fetch, timeline)
        doc: dict[str, Any] = {}
        if name in mended:
            captured_db: list[str] = []
            code = restoring.delta_db_by_daemon(conn, request, where, True, captured_db.append, render)
            doc = dict(_captured_doc(captured_db), written_by="daemon")  # problems: warnings on stderr already
            if not args.json and code == EXIT_OK:
                out(f"mended database '{name}' in {where}: wrote {render.human_bytes(doc.get('bytes_written', 0))} "
                    f"in {doc.get('files_written', 0)} files, deleted {doc.get('deleted', 0)}")
        else:
            code = restore_db_into(conn, request, where, args.json, report=doc, local=not args.stream)
        if code != EXIT_OK:
            return fail(f"database '{name}' could not be laid down in {where}")
        own_data_directory(where)
        if moving:
            doc.update(recovery_target=recovers[name][0], recovery_target_timeline=timeline)
            if args.target_time or args.target_lsn or args.target_end:  # recovery reads the archive past the set
                prime_prefetch(argparse.Namespace(**dict(vars(args), target=where)))
        dbs.append(dict(doc, name=name, start=f"pg_ctl -D {where} start"))
    if args.json:
        out(render.dumps(dict(files_report, databases=dbs, dumps=dumps,
                              start_order=[f"database {d['name']}" for d in dbs]
                              + [f"dump {d['name']}" for d in dumps] + ["application"])))
    else:
        at_set = f"; {DUMP_AT_SET_POINT}" if moving else ""
        for d in dumps:
            if d["restore"] == d["files"]:  # this daemon cannot restore it into a database
                out(f"note: database '{d['name']}' is a dump (kind {d['kind']}): it was not laid down, and this "
                    f"daemon has no restore command for it; write its files with {d['files']} and load them with "
                    f"the database's own restore tool{at_set}")
            else:
                out(f"note: database '{d['name']}' is a dump (kind {d['kind']}): it was not laid down; restore it "
                    f"into a database with {d['restore']}, or write its files with {d['files']}{at_set}")
        if moving:
            out(f"note: the files in {args.target} are the set's, as of its point; only its PostgreSQL databases "
                "recover to the target")
        out("start in this order:")
        for i, (name, where) in enumerate(places.items(), 1):
            to = f" to {recovers[name][1]}" if moving else ""
            out(f"  {i}. PostgreSQL for '{name}' on {where} (as the owner of that directory: pg_ctl -D {where} "
                f"start); it replays WAL from the archive through cairn wal-fetch{to}, then promotes")
        for i, d in enumerate(dumps, len(places) + 1):
            then = ", then load the file it names with the database's own tool" if d["restore"] == d["files"] else ""
            out(f"  {i}. database '{d['name']}' (a dump, at the set's point): {d['restore']}{then}" if moving else
                f"  {i}. database '{d['name']}' (a dump): {d['restore']}{then}")
        out(f"  {len(places) + len(dumps) + 1}. the application, on {args.target}, once the databases accept "
            "connections")
    return EXIT_OK


# what `restore --databases` says of each dump when a point-in-time option moves the PostgreSQL databases
DUMP_AT_SET_POINT = "it holds the set's point, not the recovery target: a dump cannot be moved in time"


def _captured_doc(captured: list[str]) -> dict[str, Any]:
    """The JSON document a restore step printed into `captured` (--databases --json merges it)."""
    import json

    return dict(json.loads("\n".join(captured))) if captured else {}  # lines: it may come in pieces


def cmd_restore_db(conn: Connection, args: argparse.Namespace) -> int:
    from cairn.client import restoring

    check_target_options(args)
    if bool(args.target) == bool(args.target_dsn):
        return fail("give one of --target DIR (a PostgreSQL base backup) and --target-dsn DSN (a dump)",
                    code=EXIT_USAGE)
    if args.target_dsn:
        return restore_db_to_dsn(conn, args)
    timeline = restoring.check_timeline(args.target_timeline or "current")
    if args.accept_wal_gap and not args.target_end:
        raise InvalidArgumentError("--accept-wal-gap only goes with --target-end")
    if args.quick and not args.delta:
        raise InvalidArgumentError("--quick only goes with --delta")
    # pin the set ('latest' may move), learn the database's kind, check the target and the
    # timeline: all before anything is written
    first = next(iter(conn.stub.ListTree(pb.ListTreeRequest(set=args.set, source=args.source or "",
                                                            host=args.host or ""))))
    args.set = first.set.id
    rec = next((r for r in restoring.database_records(first.set) if r["name"] == args.database), None)
    dump = rec is not None and rec.get("kind", restoring.POSTGRES) != restoring.POSTGRES
    if dump and args.delta:
        return fail(f"database '{args.database}' is a dump (kind '{rec['kind']}'): --delta mends a PostgreSQL "
                    "data directory", code=EXIT_USAGE)
    if args.delta:
        restoring.check_db_delta(conn, args.target, args.stream)
    else:
        check_target(args.target, overwrite=False, delta_hint=False, dump=dump)
    if dump:
        return restore_dump_files(conn, args, rec)
    if rec is not None and timeline not in ("current", "latest"):
        restoring.check_timeline_reaches(conn, rec, int(timeline))
    request = pb.RestoreDbRequest(
        set=args.set,
        source=args.source or "",
        database=args.database,
        target_time=args.target_time or "",
        target_lsn=args.target_lsn or "",
        target_path=os.fsencode(os.path.abspath(args.target)),
        restore_command=args.restore_command or "",
        target_timeline=timeline,
        host=args.host or "",
        fetch_with=restoring.fetch_with(conn, args),
        target_end=args.target_end,
        accept_wal_gap=args.accept_wal_gap,
    )
    doc: dict[str, Any] = {}  # --json: the report, with the recovery target added
    if args.delta:
        request.quick = args.quick
        captured: list[str] = []
        code = restoring.delta_db_by_daemon(conn, request, args.target, args.json,
                                            captured.append if args.json else out, render)
        doc = _captured_doc(captured)
    else:
        code = restore_db_into(conn, request, args.target, args.json, report=doc if args.json else None,
                               local=not args.stream)
    recovers_to, sentence = restoring.recovery_target(args, rec, timeline)
    if args.json and doc:
        out(render.dumps(dict(doc, recovery_target=recovers_to, recovery_target_timeline=timeline)))
    elif not args.json and code == EXIT_OK:
        out(sentence)
    if code == EXIT_OK:
        own_data_directory(args.target)
        if (args.target_time or args.target_lsn or args.target_end) and not args.restore_command:
            prime_prefetch(args)
    return code


def check_target_options(args: argparse.Namespace) -> None:
    """Refuse a blank --target-time, --target-lsn or --target-timeline (before anything is asked or
    written): left out, each means the set's own point or timeline, so a script passing an unset
    variable would recover to less than it asked for."""
    for option in ("target_time", "target_lsn", "target_timeline"):
        value = getattr(args, option, None)
        if value is not None and not value.strip():
            flag = "--" + option.replace("_", "-")
            raise InvalidArgumentError(f"{flag} was given a blank value (an unset variable?): give a value, or "
                                       f"leave {flag} out to recover to the set's own "
                                       f"{'timeline' if option == 'target_timeline' else 'consistent point'}")


def restore_dump_files(conn: Connection, args: argparse.Namespace, rec: dict[str, Any]) -> int:
    """restore-db --target DIR of a dump: the daemon sends its files as stored (a pg_dump
    directory or the command's stream file) and runs no tool, so this works with nothing but the
    repository (disaster recovery); what to run next is printed."""
    if args.target_time or args.target_lsn or args.target_end or args.target_timeline or args.restore_command:
        return fail(f"database '{args.database}' is a dump (kind '{rec['kind']}'): --target-time, --target-lsn, "
                    "--target-end, --target-timeline and --restore-command do not apply to it", code=EXIT_USAGE)
    request = pb.RestoreDbRequest(set=args.set, source=args.source or "", database=args.database,
                                  target_path=os.fsencode(os.path.abspath(args.target)), host=args.host or "")
    doc: dict[str, Any] = {}
    code = restore_db_into(conn, request, args.target, args.json, report=doc if args.json else None,
                           local=not args.stream)
    where = os.path.abspath(args.target)
    if rec.get("layout") == "stream" and rec.get("stream_file"):
        where = os.path.join(where, str(rec["stream_file"]))
    if rec["kind"] == "pg_dump":
        hint = f"pg_restore --dbname=DSN --jobs={int(rec.get('jobs') or 1)} {where}"
    else:
        hint = f"feed {where} to the database's restore tool" if rec.get("layout") == "stream" else \
            f"pass the directory {where} to the database's restore tool"
    hint += (f" (or, on a daemon configured for it: cairn restore-db {render.short_id(args.set)} --database "
             f"{args.database} --target-dsn DSN)")
    if args.json:
        doc.update({"database": args.database, "kind": rec["kind"], "dump": where, "next": hint})
        out(render.dumps(doc))
    elif code == EXIT_OK:
        out(f"database '{args.database}' is a dump (kind '{rec['kind']}'), written as stored: {where}")
        out(f"to restore it: {hint}")
    return code


def prime_prefetch(args: argparse.Namespace) -> None:
    """A recovery past the set fetches WAL from the archive: start wal-fetch's prefetcher now, at
    the last segment restore-db placed, so the first segments recovery asks for are spooled too."""
    from cairn.client import walfetch

    namespace = walnames.namespace_of(walnames.control_system_identifier(args.target))
    try:
        walfetch.prime(args.target, walfetch.DEFAULT_PREFETCH, _global_args(args), namespace, env=_child_env(args))
    except OSError as exc:  # prefetch is an optimisation: recovery fetches every segment itself then
        print(f"cairn: warning: WAL prefetch not started: {exc.strerror or exc}", file=sys.stderr)


def restore_db_to_dsn(conn: Connection, args: argparse.Namespace) -> int:
    """restore-db of a dump (kinds pg_dump, command): the daemon restores it into the DSN's database."""
    if args.target_time or args.target_lsn or args.target_end or args.accept_wal_gap:
        return fail("--target-time, --target-lsn, --target-end and --accept-wal-gap need a base backup restored "
                    "with --target DIR", code=EXIT_USAGE)
    if args.target_timeline:
        return fail("--target-timeline needs a base backup restored with --target DIR", code=EXIT_USAGE)
    request = pb.RestoreDbToDsnRequest(set=args.set, source=args.source or "", database=args.database,
                                       target_dsn=args.target_dsn, host=args.host or "")
    result = _follow(conn.stub.RestoreDbToDsn(request), args.json, "restore-db", "result")
    if result is None:
        return fail("the daemon ended the restore without a result")
    if args.json:
        out(render.dumps({"set": result.set.id, "database": result.database, "kind": result.kind,
                          "tool": result.tool, "bytes": result.bytes, "seconds": result.seconds}))
    else:
        out(f"restored database '{result.database}' of set {result.set.id[:12]} with {result.tool} "
            f"({result.bytes} bytes of dump, {result.seconds:.1f}s)")
    return EXIT_OK


def restore_db_into(conn: Connection, request: Any, target: str, json_output: bool,
                    report: dict[str, Any] | None = None, local: bool = True) -> int:
    """RestoreDb into `target` (restore_into)."""
    return restore_into(conn, conn.stub.RestoreDb, request, target, json_output, report, local, title="restore-db")


def restore_into(conn: Connection, method: Any, request: Any, target: str, json_output: bool,
                 report: dict[str, Any] | None = None, local: bool = True, overwrite: bool = False,
                 whole: bool = True, mode: int | None = 0o700, title: str = "restore") -> int:
    """Restore (or RestoreDb) into `target`. Over a Unix socket the daemon is first asked to write
    the tree itself (no data crosses gRPC; see restoredb.write_local): the client proves the
    empty target is its own with a claim file. If the daemon refuses, the stream is written here.
    A target the client makes gets `mode` (None: as a streamed restore makes it)."""
    if local and conn.endpoint.socket:
        nonce = os.urandom(16).hex()
        created = not os.path.lexists(target)
        if mode is None:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(target, mode=mode, exist_ok=True)
        claim = os.path.join(target, claims.CLAIM_PREFIX + nonce)
        claims.make_claim(claim, nonce)
        request.local_claim = nonce
        try:
            batches = []
            with progress_view(json_output, title) as view:
                for batch in method(request):
                    if batch.HasField("progress"):  # the daemon writing: how far it got
                        p = batch.progress
                        view.update(p.phase, p.files_done, p.files_total, p.bytes_done, p.bytes_total)
                    else:
                        batches.append(batch)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or "local write" not in (exc.details() or ""):
                if os.path.lexists(claim):
                    os.unlink(claim)
                if created:  # refused before anything was written: leave no trace
                    with contextlib.suppress(OSError):
                        os.rmdir(target)
                raise
            batches = []
        finally:
            request.local_claim = ""
            if os.path.lexists(claim):
                os.unlink(claim)
        if batches and batches[0].HasField("local"):
            return _local_report(batches[0], target, json_output, report)
    return _write_stream(method(request), target, overwrite, json_output, whole=whole, report=report,
                         control_last=title == "restore-db")


def _xattrs_warning(skipped: int) -> None:
    """Extended attributes a restore could not set: said, as tar does, not silently dropped."""
    if skipped:
        print(f"cairn: warning: {render.plural(skipped, 'extended attribute')} could not be set "
              "(outside user.*: restore as root to keep them; any: the target's file system holds none)",
              file=sys.stderr)


def _local_report(batch: Any, target: str, json_output: bool, report: dict[str, Any] | None) -> int:
    st = batch.local
    for problem in [] if json_output else render.restore_problem_lines(list(st.errors)):  # --json: the report
        print(f"cairn: warning: {problem}", file=sys.stderr)
    for notice in [] if json_output else st.notices:
        print(f"cairn: warning: {notice}", file=sys.stderr)
    _xattrs_warning(st.xattrs_skipped)
    doc = {"set": batch.set.id or None, "target": os.path.abspath(target), "files": st.files, "dirs": st.dirs,
           "links": st.links, "bytes": st.bytes, "errors": list(st.errors), "notices": list(st.notices),
           "xattrs_skipped": st.xattrs_skipped, "written_by": "daemon"}
    if json_output and report is not None:
        report.update(doc)
    elif json_output:
        out(render.dumps(doc))
    else:
        out(f"restored set {render.short_id(batch.set.id)} into {shown(target)}: {render.plural(st.files, 'file')}, "
            f"{render.plural(st.dirs, 'dir')}, {render.plural(st.links, 'link')}, {render.human_bytes(st.bytes)} "
            "(written by the daemon on this host)")
    if st.errors:
        return fail(f"{len(st.errors)} entries could not be restored "
                    f"({'the report lists them' if json_output else 'see the warnings above'})",
                    hint=render.restore_problem_hint(list(st.errors)))
    return EXIT_OK


def own_data_directory(target: str) -> None:
    """Give the restored data directory what PostgreSQL demands of it: mode 0700 and the owner of
    its PG_VERSION (a stream carries no entry for its root, so the writer sets those itself)."""
    os.chmod(target, 0o700)
    st = os.stat(os.path.join(target, "PG_VERSION"))
    try:
        os.chown(target, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the files are ours and so is the directory


def _follow(events: Any, json_output: bool, what: str, field: str, unit: str = "file") -> Any:
    """Show the progress events of a streamed call; return its last `field` event (None if none came)."""
    last = None
    with progress_view(json_output, what, unit) as view:
        for event in events:
            if event.WhichOneof("event") == "progress":
                p = event.progress
                view.update(p.phase, p.files_done, p.files_total, p.bytes_done, p.bytes_total, p.current_path)
            else:
                last = getattr(event, field)
    return last


def cmd_verify(conn: Connection, args: argparse.Namespace) -> int:
    request = pb.VerifyRequest(set=args.set or "", source=args.source or "", read_data=args.read_data,
                               host=args.host or "", read_data_subset=args.read_data_subset or "")
    report = _follow(conn.stub.Verify(request), args.json, "verify", "report", unit="pack")
    if report is None:
        return fail("the daemon ended the check without a report")
    if args.json:
        out(render.dumps(render.report_dict(report)))
        return EXIT_OK if report.ok else EXIT_FAILURE
    for p in report.errors:
        out(f"error: {render.problem_line(p)}")
    for p in report.warnings:
        out(f"warning: {render.problem_line(p)}")
    for p in report.notes:  # neither damage nor a risk: never fails the check
        out(f"note: {render.problem_line(p)}")
    counts = render.verify_counts(report)
    if args.read_data_subset:
        counts += f" (read-data subset {args.read_data_subset})"
    if report.ok:
        out(f"repository ok: {counts}")
        return EXIT_OK
    return fail(f"repository has {render.plural(len(report.errors), 'error')}: {counts}",
                hint=report.advice or "the lines above name what is damaged")


def cmd_prune(conn: Connection, args: argparse.Namespace) -> int:
    """Forget sets by the policy given (none: forget nothing, only free unreferenced data)."""
    request = pb.PruneRequest(dry_run=args.dry_run, source=args.source or "", host=args.host or "",
                              keep_within=args.keep_within or "", keep_tags=args.keep_tag or [],
                              wal_keep=args.wal_keep or "", forget=args.forget or [])
    for rule in (*LEVELS, *KEEP_COUNTS):
        value = getattr(args, f"keep_{rule}")
        if value is not None:
            setattr(request, f"keep_{rule}", value)
    reply = conn.stub.Prune(request)
    if args.json:
        out(render.dumps(render.prune_dict(reply)))
        return EXIT_OK
    verb = "would forget" if reply.dry_run else "forgot"
    forgotten = set(reply.forgotten)
    for d in reply.decisions:
        if d.keep:
            out(f"keep {d.set}  {render.decision_where(d)}: {', '.join(d.reasons)}")
    for d in reply.decisions:
        if d.set in forgotten:
            out(f"{verb} {d.set}  {render.decision_where(d)}: matched no rule")
    for set_id in sorted(forgotten - {d.set for d in reply.decisions}):
        out(f"{verb} {set_id}: named by --forget")
    for name in reply.wal_forgotten:
        out(f"{verb} WAL {name}: before the oldest kept set and outside the WAL window")
    freed = "would free" if reply.dry_run else "freed"
    out(
        f"{verb} {len(reply.forgotten)} sets, kept {len(reply.kept)}; {freed} {render.human_bytes(reply.bytes_freed)}"
        f" ({reply.packs_deleted} packs deleted, {reply.packs_rewritten} rewritten)"
    )
    if reply.waiting_packs:
        why = (f"operations that were running when they were marked: {'; '.join(reply.waiting_on)}"
               if reply.waiting_on else "the grace period ([repository] gc_grace)")
        wait = "would wait" if reply.dry_run else "wait"
        gone = ("; a lock of a host that is gone stands until it is stale (30 min) or 'cairn unlock --host H' "
                "removes it" if reply.waiting_on else "")
        out(f"{render.plural(reply.waiting_packs, 'pack')} ({render.human_bytes(reply.waiting_bytes)}) {wait} for "
            f"{why}; a later prune frees what is still unneeded then{gone}")
    return EXIT_OK


def cmd_unlock(conn: Connection, args: argparse.Namespace) -> int:
    """Remove stale repository locks; with --host those of a host that is gone, with --remove-all every one."""
    if args.host is not None and not args.host.strip():
        return fail("--host needs a host name", code=EXIT_USAGE)
    reply = conn.stub.Unlock(pb.UnlockRequest(host=args.host or "", remove_all=args.remove_all))
    if args.json:
        out(render.dumps({"removed": [render.lock_dict(x) for x in reply.removed],
                          "kept": [render.lock_dict(x) for x in reply.kept]}))
        return EXIT_OK
    for x in reply.removed:
        out(f"removed lock {x.name[:12]}: {x.description}")
    for x in reply.kept:
        out(f"kept lock {x.name[:12]}: {x.description}")
    out(f"removed {render.plural(len(reply.removed), 'lock')}, kept {len(reply.kept)}")
    return EXIT_OK


def cmd_repair(conn: Connection, args: argparse.Namespace) -> int:
    """Rebuild the index from the packs, or remove the set objects or WAL catalog entries that
    cannot be read."""
    if args.repair_command in ("wal", "sets"):  # one reply, said as a document or as lines
        if args.repair_command == "wal":
            reply = conn.stub.RepairWal(pb.RepairWalRequest(dry_run=args.dry_run))
            as_dict, as_lines = render.repair_wal_dict, render.repair_wal_lines
        else:
            reply = conn.stub.RepairSets(pb.RepairSetsRequest(dry_run=args.dry_run))
            as_dict, as_lines = render.repair_sets_dict, render.repair_sets_lines
        if args.json:
            out(render.dumps(as_dict(reply)))
        else:
            for line in as_lines(reply):
                out(line)
        return EXIT_OK
    request = pb.RepairIndexRequest(read_data=args.read_data, dry_run=args.dry_run)
    report = _follow(conn.stub.RepairIndex(request), args.json, "repair index", "report", unit="pack")
    if report is None:
        return fail("the daemon ended the repair without a report")
    if args.json:
        out(render.dumps(render.repair_index_dict(report)))
    else:
        for line in render.repair_index_lines(report):
            out(line)
    return EXIT_OK


KEYFILE_LEN = 32  # a key file is the base64 of 32 random bytes and a newline


def cmd_key(conn: Connection, args: argparse.Namespace) -> int:
    if args.key_command == "list":
        return _key_list(conn, args)
    if args.key_command == "remove":
        reply = conn.stub.KeyRemove(pb.KeyRemoveRequest(id=args.id))
        out(render.dumps({"removed": reply.id}) if args.json else f"removed key {reply.id}")
        return EXIT_OK
    return _key_add(conn, args)


def _key_list(conn: Connection, args: argparse.Namespace) -> int:
    keys = conn.stub.KeyList(pb.KeyListRequest()).keys
    rows = [{"id": k.id, "type": k.type, "kdf": k.kdf, "created": k.created, "current": k.current,
             "problem": k.problem, "access": k.access or "full"} for k in keys]
    if args.json:
        out(render.dumps(rows))
        return EXIT_OK
    out(f"{'ID':<32}  {'TYPE':<10}  {'ACCESS':<10}  {'KDF':<13}  CREATED")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])) if r["created"] else "-"
        mark = "  (current)" if r["current"] else ""
        note = f"  unreadable: {r['problem']}" if r["problem"] else ""
        out(f"{r['id']:<32}  {r['type'] or '?':<10}  {r['access']:<10}  {r['kdf'] or '?':<13}  {when}{mark}{note}")
    return EXIT_OK


def _key_add(conn: Connection, args: argparse.Namespace) -> int:
    if args.passphrase_file:
        try:
            with open(args.passphrase_file, "rb") as f:
                passphrase = f.read(64 * 1024).split(b"\n", 1)[0].rstrip(b"\r")  # the first line, as cairnd reads it
        except OSError as e:
            why = e.strerror
            raise InvalidArgumentError(f"unable to read passphrase file '{args.passphrase_file}': {why}") from None
        if not passphrase:
            raise InvalidArgumentError(f"passphrase file '{args.passphrase_file}' is empty")
        reply = conn.stub.KeyAdd(pb.KeyAddRequest(passphrase=passphrase, write_only=args.write_only))
    else:
        import base64

        path = args.new_key_file
        try:  # created (never overwriting) and written durably before the daemon adds the key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise InvalidArgumentError(f"unable to create key file '{path}': {e.strerror}") from None
        value = os.urandom(KEYFILE_LEN)
        try:
            try:
                os.write(fd, base64.b64encode(value) + b"\n")
                os.fsync(fd)
            except OSError as e:
                raise FailedPreconditionError(f"unable to write key file '{path}': {e.strerror}") from None
            # A client killed from here on leaves a whole key file: the key it names was added, or
            # it opens nothing. Never the other way round (a key added whose secret is nowhere).
            reply = conn.stub.KeyAdd(pb.KeyAddRequest(key_file=value, write_only=args.write_only))
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
    kind = "write-only key" if args.write_only else "key"
    out(render.dumps({"added": reply.id, "write_only": args.write_only}) if args.json else f"added {kind} {reply.id}")
    return EXIT_OK


def wal_namespace(args: argparse.Namespace, path: str, data: bytes = b"") -> str:
    """The repository WAL name space of the cluster a WAL file belongs to: --system-id, else the
    system identifier in a segment's page header, else the one in the pg_control of the data
    directory the file lies in (archive_command and restore_command run there); "" when none
    can be told (the flat name space of a single cluster)."""
    if args.system_id:
        return walnames.namespace_of(args.system_id)
    found = walnames.segment_system_identifier(data) if data else None
    if found is None:
        found = walnames.control_system_identifier(walnames.data_dir_of(path))
    return walnames.namespace_of(found)


def check_pushed_cluster(args: argparse.Namespace, path: str, data: bytes, namespace: str) -> None:
    """Refuse a header-less WAL file (a timeline history or backup file) pushed with a --system-id
    that the pg_control of the data directory it comes from contradicts: copied into another
    cluster's archive_command, the option would file that cluster's history under this one's name
    space, where recovery takes it for its own. (A segment carries its identifier: the daemon
    checks it.) Nothing is refused when pg_control cannot be read."""
    if not args.system_id or not namespace or walnames.segment_system_identifier(data) is not None:
        return
    own = walnames.control_system_identifier(walnames.data_dir_of(path))
    if own is not None and str(own) != namespace:
        raise InvalidArgumentError(
            f"WAL file {os.path.basename(path)} comes from the server with system identifier {own} "
            f"(its data directory's global/pg_control), not {namespace}: check the --system-id of this "
            "archive_command")


def cmd_wal_push(conn: Connection, args: argparse.Namespace) -> int:
    name = os.path.basename(args.path)
    try:
        # not blocking: a FIFO (or a device) would hold the open, then the read, forever
        with os.fdopen(os.open(args.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CairnError(f"unable to read WAL file '{args.path}': not a regular file")
            data = f.read()
    except FileNotFoundError as exc:  # exit 3, as for any path that is not there
        raise NotFoundError(f"unable to read WAL file '{args.path}': {exc.strerror}") from exc
    except OSError as exc:
        raise CairnError(f"unable to read WAL file '{args.path}': {exc.strerror}") from exc
    namespace = wal_namespace(args, args.path, data)
    check_pushed_cluster(args, args.path, data, namespace)

    def pieces() -> Iterator[pb.WalPushRequest]:
        yield pb.WalPushRequest(name=name, data=data[:WAL_PIECE], wal_namespace=namespace)
        for start in range(WAL_PIECE, len(data), WAL_PIECE):
            yield pb.WalPushRequest(data=data[start : start + WAL_PIECE])

    from cairn.client.walslots import when_free

    reply = when_free(lambda: conn.stub.WalPush(pieces()), f"wal-push of {name}")
    where = f" (system {reply.wal_namespace})" if reply.wal_namespace else ""
    if args.json:
        out(render.dumps({"name": name, "stored": reply.stored, "system_id": reply.wal_namespace}))
    else:
        out(f"archived {name}{where}" if reply.stored else f"{name} was already archived (identical){where}")
    return EXIT_OK


def answered_locally(name: str, dest: str) -> bool:
    """True when recovery needs nothing from the archive for WAL file `name` fetched to `dest`.

    restore-db lists the WAL files it placed in pg_wal/ in WAL_MARKER there; those copies are
    the archived files, so recovery may read them from pg_wal/, where PostgreSQL looks once
    restore_command fails. And timeline 1 never has a history file (PostgreSQL asks for it
    anyway when it promotes from timeline 1). When pg_wal/ holds OWN_POINT, a segment after
    the last one placed (same timeline) is never needed: recovery stops before it.
    """
    if name == NO_HISTORY:
        return True
    wal_dir = os.path.dirname(os.path.abspath(dest))
    try:
        with open(os.path.join(wal_dir, WAL_MARKER), encoding="ascii") as f:
            placed = f.read().split()
    except (OSError, ValueError):
        return False
    segments = [n for n in placed if len(n) == 24]
    if segments and len(name) == 24 and name[:8] == segments[-1][:8] and name > segments[-1] \
            and os.path.exists(os.path.join(wal_dir, OWN_POINT)):
        return True  # recovery stops at the set's own point, inside the placed WAL
    return name in placed and os.path.isfile(os.path.join(wal_dir, name))


def cmd_wal_fetch(conn: Connection, args: argparse.Namespace) -> int:
    """Fetch one WAL file; for a segment, keep the next ones coming into the spool (walfetch)."""
    code = _fetch_direct(conn, args)
    if code != EXIT_OK:
        return code
    from cairn.client import walfetch

    if args.prefetch > 0 and walfetch.is_segment(args.name):
        try:
            walfetch.note_request(args.name, args.dest, os.path.getsize(args.dest))
            walfetch.start_prefetcher(walfetch.spool_of(args.dest), args.prefetch, _global_args(args),
                                      wal_namespace(args, args.dest), env=_child_env(args))
        except OSError as exc:  # prefetch is an optimisation: recovery goes on without it
            print(f"cairn: warning: WAL prefetch not started: {exc.strerror or exc}", file=sys.stderr)
    return EXIT_OK


def cmd_wal_prefetch(conn: Connection, args: argparse.Namespace) -> int:
    from cairn.client import walfetch

    namespace = walnames.namespace_of(args.system_id) if args.system_id else ""
    fetch = walfetch.GrpcFetcher(conn, pb, grpc, namespace, sync=not walfetch.boot_keyed(args.spool))
    return walfetch.run_prefetcher(args.spool, args.count, fetch)


def _child_env(args: argparse.Namespace) -> dict[str, str] | None:
    """The environment of a child command: a token given with --token goes by $CAIRN_TOKEN
    (never on a command line); None: this process's environment as it is."""
    return {**os.environ, "CAIRN_TOKEN": args.token} if getattr(args, "token", None) else None


def _global_args(args: argparse.Namespace) -> list[str]:
    """The connection options of this command, for a child command (the token goes by
    environment: _child_env)."""
    out: list[str] = []
    for opt, value in (("--socket", args.socket), ("--address", args.address), ("--tls-ca", args.tls_ca),
                       ("--tls-server-name", args.tls_server_name), ("--token-file", args.token_file)):
        if value:
            out += [opt, os.path.abspath(value) if opt in ("--socket", "--tls-ca", "--token-file") else value]
    return out


def _fetch_direct(conn: Connection, args: argparse.Namespace) -> int:
    from cairn.client.walslots import when_free

    tmp = f"{args.dest}.cairn-tmp"
    try:
        return when_free(lambda: _wal_fetch(conn, args, tmp), f"wal-fetch of {args.name}")
    except grpc.RpcError as exc:
        if args.name.endswith(".history") and exc.code() == grpc.StatusCode.NOT_FOUND:
            return EXIT_NOT_FOUND  # PostgreSQL probes for timeline histories that need not exist: no error
        raise


def _wal_fetch(conn: Connection, args: argparse.Namespace, tmp: str) -> int:
    try:
        with open(tmp, "wb") as f:
            request = pb.WalFetchRequest(name=args.name, wal_namespace=wal_namespace(args, args.dest))
            for reply in conn.stub.WalFetch(request):
                f.write(reply.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.dest)
    except OSError as exc:
        raise FailedPreconditionError(f"unable to write '{args.dest}': {exc.strerror}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return EXIT_OK


# ---- restore writing ----


def to_record(r: Any) -> Record:
    """The fsio record of one wire record (the mapping the daemon shares: cairn.proto.wire)."""
    return wire.record_of(r)


def check_target(target: str, overwrite: bool, delta_hint: bool = True, dump: bool = False) -> None:
    """Refuse a target that is not a directory, or is not empty unless overwrite (before anything
    is written). `delta_hint`: the command offers --overwrite (restore does; restore-db only
    --delta); `dump`: a dump's files, which --delta does not mend."""
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target):
        raise InvalidArgumentError(f"restore target '{shown(target)}' is not a directory")
    if not overwrite and os.listdir(target):
        raise FailedPreconditionError(
            f"restore target '{shown(target)}' is not empty",
            hint="choose an empty directory, mend it with --delta (only what differs is written), or pass --overwrite"
            if delta_hint else "choose an empty directory" if dump else
            "choose an empty directory, or mend an earlier copy of this data directory with --delta (only what "
            "differs is written)")


def received_ahead(call: Any, depth: int = RECEIVE_AHEAD) -> Iterator[Any]:
    """The messages of a streaming call, received by a thread up to `depth` messages ahead, so
    the daemon keeps sending while this thread writes. The call's error is raised here; the
    call is cancelled when the consumer stops early."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    end = object()

    def receive() -> None:
        try:
            for message in call:
                q.put(message)
            q.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            q.put(exc)

    threading.Thread(target=receive, name="restore-receive", daemon=True).start()
    finished = False
    try:
        while True:
            item = q.get()
            if item is end:
                finished = True
                return
            if isinstance(item, BaseException):
                finished = True
                raise item
            yield item
    finally:
        if not finished:
            call.cancel()
            while not q.empty():  # unblock the receiver so it sees the cancellation
                q.get_nowait()


def _write_stream(call: Any, target: str, overwrite: bool, json_output: bool, whole: bool,
                  report: dict[str, Any] | None = None, control_last: bool = False) -> int:
    """Apply a stream of RestoreBatch to `target` with a TreeWriter; report what was written
    (into `report` instead of stdout when one is given, for --json). With `control_last` (a
    restore-db stream) global/pg_control is written only once every other file is, and not at
    all when one failed, as the daemon writes it (cairn.fsio.pgcontrol)."""
    from cairn.fsio.pgcontrol import ControlLast
    from cairn.fsio.records import Data, EntryMeta
    from cairn.fsio.writer import TreeWriter  # only restores write trees: wal-push stays light

    writer: TreeWriter | None = None
    last: ControlLast | None = None
    set_info = None
    files = done = total = files_total = 0
    try:
        with progress_view(json_output, "restore") as view:
            for batch in received_ahead(call):
                if writer is None:
                    set_info = batch.set if batch.HasField("set") else None
                    if batch.HasField("bytes_total"):  # what this restore writes, from the daemon
                        files_total, total = batch.files_total, batch.bytes_total
                    elif set_info is not None and whole:
                        files_total, total = set_info.stats.files, set_info.stats.bytes_total
                    writer = TreeWriter(target, overwrite=overwrite)
                    last = ControlLast(writer) if control_last else None
                path = b""
                for r in batch.records:
                    rec = to_record(r)
                    if last is not None and not last.admit(rec):
                        continue
                    if isinstance(rec, Data):
                        done += len(rec.data)
                    elif isinstance(rec, EntryMeta):
                        path = rec.path
                        files += rec.kind == "file"
                    writer.apply(rec)
                view.update("", files, files_total, done, total, path)
    except KeyboardInterrupt as exc:  # SIGINT 130; SIGTERM (restoring.Interrupted) 143
        call.cancel()
        return fail("interrupted: the restore is incomplete", code=getattr(exc, "exit_status", 130))
    if writer is None:
        return fail("the daemon sent no restore data")
    stats = writer.finish()
    for problem in [] if json_output else render.restore_problem_lines(stats.errors):  # --json: the report
        print(f"cairn: warning: {problem}", file=sys.stderr)
    for notice in [] if json_output else stats.notices:  # restored all the same: said, not an error
        print(f"cairn: warning: {notice}", file=sys.stderr)
    _xattrs_warning(stats.xattrs_skipped)
    set_id = set_info.id if set_info is not None else ""
    if json_output:
        doc = {
            "set": set_id or None,
            "target": os.path.abspath(target),
            "files": stats.files,
            "dirs": stats.dirs,
            "links": stats.links,
            "bytes": stats.bytes,
            "errors": list(stats.errors),
            "notices": list(stats.notices),
            "xattrs_skipped": stats.xattrs_skipped,
        }
        if report is not None:
            report.update(doc)
        else:
            out(render.dumps(doc))
    else:
        out(
            f"restored set {render.short_id(set_id)} into {shown(target)}: {render.plural(stats.files, 'file')}, "
            f"{render.plural(stats.dirs, 'dir')}, {render.plural(stats.links, 'link')}, "
            f"{render.human_bytes(stats.bytes)}"
        )
    if stats.errors:
        return fail(f"{len(stats.errors)} entries could not be restored "
                    f"({'the report lists them' if json_output else 'see the warnings above'})",
                    hint=render.restore_problem_hint(stats.errors))
    return EXIT_OK


# ---- parser ----


def _read_passphrase(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            passphrase = f.read(64 * 1024).split(b"\n", 1)[0].rstrip(b"\r")  # the first line, as cairnd reads it
    except OSError as e:
        raise InvalidArgumentError(f"unable to read passphrase file '{path}': {e.strerror}") from None
    if not passphrase:
        raise InvalidArgumentError(f"passphrase file '{path}' is empty")
    return passphrase


def _read_key_file(path: str) -> bytes:
    import base64
    import binascii
    import errno
    import shlex

    try:
        with open(path, "rb") as f:
            text = f.read(4096).strip()
    except OSError as e:
        hint = None
        if e.errno == errno.ENOENT:  # a new destination's key is the caller's to make (cairn copy)
            hint = (f"make one with: (umask 077; head -c 32 /dev/urandom | base64 > {shlex.quote(path)}), "
                    "and keep a copy apart from the repository")
        raise InvalidArgumentError(f"unable to read key file '{path}': {e.strerror}", hint=hint) from None
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        value = b""
    if len(value) != KEYFILE_LEN:
        raise InvalidArgumentError(f"key file '{path}' is not a Cairn key file (base64 of 32 bytes)")
    return value


def cmd_copy(conn: Connection, args: argparse.Namespace) -> int:
    """Copy sets (and the WAL they need) into another repository, made encrypted if missing."""
    to = args.to
    if conn.endpoint.socket and to and not to.startswith("s3://"):
        to = os.path.abspath(to)  # the daemon is on this host: a relative path is the caller's
    request = pb.CopyRequest(to=to, source=args.source or "", sets=args.sets or [], host=args.host or "")
    if args.to_passphrase_file:
        request.passphrase = _read_passphrase(args.to_passphrase_file)
    else:
        request.key_file = _read_key_file(args.to_key_file)
    result = _follow(conn.stub.Copy(request), args.json, "copy", "result", unit="set")
    if result is None:
        return fail("the daemon ended the copy without a result")
    if args.json:
        out(render.dumps({
            "to": to, "copied": [{"set": p.source_set, "copy": p.copied_set} for p in result.copied],
            "present": [{"set": p.source_set, "copy": p.copied_set} for p in result.present],
            "wal_copied": result.wal_copied, "wal_present": result.wal_present, "bytes_read": result.bytes_read,
            "bytes_added": result.bytes_added, "warnings": list(result.warnings),
            "failed": [{"set": f.source_set, "error": f.error} for f in result.failed]}))
        return _copy_failed(result, json_output=True) if result.failed else EXIT_OK
    for p in result.copied:
        out(f"copied {p.source_set[:12]} -> {p.copied_set[:12]}")
    for w in result.warnings:
        out(f"warning: {w}")
    out(f"copied {render.plural(len(result.copied), 'set')} ({len(result.present)} already there), "
        f"{render.plural(result.wal_copied, 'WAL file')}; read {render.human_bytes(result.bytes_read)}, "
        f"added {render.human_bytes(result.bytes_added)}")
    return _copy_failed(result, json_output=False) if result.failed else EXIT_OK


def _copy_failed(result: Any, *, json_output: bool) -> int:
    """A copy that left sets out because their data could not be read: each named, then exit 1."""
    if not json_output:
        for f in result.failed:
            out(f"warning: set {f.source_set[:12]} not copied: {f.error}")
    return fail(f"{render.plural(len(result.failed), 'set')} could not be copied: their data is damaged or lost "
                "in this repository", hint="'cairn verify --read-data' names the damage; the other sets were copied, "
                "and a rerun copies only what is not there yet")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations of the global options: they would also claim a command's own options
    # (`copy --to` is a prefix of `--token`).
    parser = _Parser(prog="cairn", description="Talk to the Cairn backup daemon (cairnd).", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"cairn {__version__}")
    parser.add_argument(
        "--socket", metavar="PATH", help="cairnd's Unix socket (default: $CAIRN_SOCKET or the daemon's default)"
    )
    parser.add_argument("--address", metavar="HOST:PORT", help="a remote cairnd over TLS")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) that signed the daemon's certificate")
    parser.add_argument("--tls-server-name", metavar="NAME", help="expect this name in the daemon's certificate")
    parser.add_argument("--token", help="the daemon's access token (default: $CAIRN_TOKEN)")
    parser.add_argument("--token-file", metavar="FILE", help="read the access token from FILE")
    parser.add_argument("--json", action="store_true", help="print data as JSON")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    HOST_HELP = ("the host whose sets SET names ('latest' is its newest set); default: this daemon's host, or the "
                 "only host with sets when this one has none")
    def command(name: str, fn: Callable[[Connection, argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text.replace("%%", "%"))
        p.set_defaults(func=fn)
        return p

    command("status", cmd_status, "daemon, sources, running jobs, last set per level, next runs")

    p = command("backup", cmd_backup, "take a backup set, show progress, print its id")
    p.add_argument("--source", metavar="NAME", help="the source (needed when several are configured)")
    p.add_argument("--level", metavar="LEVEL", help="full, differential or incremental (default)")
    p.add_argument("--tag", action="append", metavar="T", help="tag the set (repeatable)")

    p = command("sets", cmd_sets, "list backup sets")
    p.add_argument("--source", metavar="NAME")
    p.add_argument("--host", metavar="H", help="only sets taken on host H")

    p = command("check-db", cmd_check_db, "check a database's connection and WAL archiving (like pgBackRest's check)")
    p.add_argument("name", metavar="NAME", help="a configured [[database]]")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="how long the forced WAL segment switch may take to arrive (default 60)")

    p = command("ls", cmd_ls, "browse a set's tree")
    p.add_argument("set", metavar="SET", help="set id, unique prefix, or 'latest'")
    p.add_argument("path", metavar="PATH", nargs="?", default="", help="a directory of the set (default: its root)")
    p.add_argument("-r", "--recursive", action="store_true", help="list the whole subtree")
    p.add_argument("--source", metavar="NAME", help="the source 'latest' refers to")
    p.add_argument("--host", metavar="H", help=HOST_HELP)

    p = command("diff", cmd_diff, "paths added, modified and deleted from SET_A to SET_B")
    p.add_argument("set_a", metavar="SET_A")
    p.add_argument("set_b", metavar="SET_B")
    p.add_argument("--source", metavar="NAME")
    p.add_argument("--host", metavar="H", help=HOST_HELP)

    p = command("restore", cmd_restore, "restore a set (or some of its paths) into a directory")
    p.add_argument("set", metavar="SET")
    p.add_argument("paths", metavar="PATH", nargs="*",
                   help="restore only these paths of the set (after -- when one begins with '-')")
    p.add_argument("--target", required=True, metavar="DIR", help="where to write (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="restore into a non-empty directory")
    p.add_argument("--stream", action="store_true",
                   help="always stream the data to this client (default: a daemon on this host writes an "
                        "empty target itself, and mends the target of --delta itself)")
    p.add_argument("--source", metavar="NAME")
    p.add_argument("--host", metavar="H", help=HOST_HELP)
    p.add_argument("--include", action="append", metavar="P",
                   help="restore only paths matching this gitignore-style pattern (repeatable)")
    p.add_argument("--exclude", action="append", metavar="P", help="skip paths matching this pattern (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list what would be written; write nothing")
    p.add_argument("--delta", action="store_true",
                   help="restore over an existing tree: read it, write only what differs from the set")
    p.add_argument("--delete", action="store_true", help="with --delta: remove entries the set does not hold")
    p.add_argument("--quick", action="store_true",
                   help="with --delta: take files whose size and mtime match the set as unchanged (not read)")
    p.add_argument("--verify", action="store_true",
                   help="afterwards re-read what was restored and check it against the set (content hashes)")
    p.add_argument("--databases", action="store_true",
                   help="also lay down each base-backup database of the set, ready for recovery (beside the "
                        "target); dumps are left alone, with a note on how to restore them")
    p.add_argument("--db-target", action="append", metavar="NAME=DIR",
                   help="with --databases: put database NAME in DIR (default <TARGET>-db-<NAME>)")
    when = p.add_mutually_exclusive_group()  # none: the set's own consistent point
    when.add_argument("--target-time", metavar="T",
                      help="with --databases: every PostgreSQL database of the set recovers every transaction "
                           "committed up to this time (dumps and files stay at the set's point)")
    when.add_argument("--target-lsn", metavar="L",
                      help="with --databases, when the set holds one PostgreSQL database: recover up to and "
                           "including this WAL position")
    when.add_argument("--target-end", action="store_true",
                      help="with --databases: every PostgreSQL database of the set recovers to the end of its WAL "
                           "archive")
    p.add_argument("--accept-wal-gap", action="store_true",
                   help="with --target-end: recover up to a segment missing from the archive (refused otherwise)")
    p.add_argument("--target-timeline", metavar="TL",
                   help="with --databases: the timeline recovery follows: current (default: the set's own), latest "
                        "or a timeline id")

    p = command("restore-db", cmd_restore_db,
                "prepare a PostgreSQL data directory from a set, or restore a dump into a database")
    p.add_argument("set", metavar="SET")
    p.add_argument("--database", required=True, metavar="NAME")
    p.add_argument("--target", metavar="DIR", help="base backups (kind postgres): the data directory to write")
    p.add_argument("--target-dsn", metavar="DSN",
                   help="dumps (kinds pg_dump, command): the database the daemon restores into, on its host")
    when = p.add_mutually_exclusive_group()  # none: the set's own consistent point
    when.add_argument("--target-time", metavar="T", help="recover every transaction committed up to this time")
    when.add_argument("--target-lsn", metavar="L", help="recover up to and including this WAL position")
    when.add_argument("--target-end", action="store_true",
                      help="recover to the end of the WAL archive: replay every archived segment, then promote "
                           "(default: the set's own consistent point)")
    p.add_argument("--accept-wal-gap", action="store_true",
                   help="with --target-end: when a segment after the set is missing from the archive and later "
                        "ones are archived, recover up to the gap and promote there (refused otherwise)")
    p.add_argument("--target-timeline", metavar="TL",
                   help="the timeline recovery follows: current (default: the set's own), latest (the newest "
                        "in the archive) or a timeline id")
    p.add_argument("--restore-command", metavar="CMD",
                   help="restore_command for recovery, runnable by the database's user "
                        "(default: cairn --socket S wal-fetch %%f %%p)")
    p.add_argument("--source", metavar="NAME")
    p.add_argument("--host", metavar="H", help=HOST_HELP)
    p.add_argument("--stream", action="store_true",
                   help="always stream the data to this client (default: a daemon on this host writes it)")
    p.add_argument("--delta", action="store_true",
                   help="mend an earlier copy of the data directory in DIR: the daemon on this host reads it, "
                        "writes only what differs from the set and removes what the set does not hold")
    p.add_argument("--quick", action="store_true",
                   help="with --delta: take files whose size and mtime match the set as unchanged (not read)")

    p = command("verify", cmd_verify, "check the repository (and with --read-data every chunk)")
    p.add_argument("--set", metavar="SET", help="check only this set")
    p.add_argument("--read-data", action="store_true")
    p.add_argument("--read-data-subset", metavar="n/m|P%",
                   help="read and hash only some packs: group n of m (1/7 to 7/7 on seven days read every pack "
                        "once), or a random P percent")
    p.add_argument("--source", metavar="NAME")
    p.add_argument("--host", metavar="H", help=HOST_HELP)

    p = command("prune", cmd_prune, "forget sets by policy (per host and source; a set is kept when any rule "
                                    "keeps it), then free unreferenced data; no policy: only free unreferenced data")
    p.add_argument("--dry-run", action="store_true", help="show what would be forgotten and which rule keeps each set")
    p.add_argument("--keep-last", type=_count, metavar="N", help="keep the newest N sets")
    for rule, unit in (("hourly", "hour"), ("daily", "day"), ("weekly", "week"), ("monthly", "month"),
                       ("yearly", "year")):
        p.add_argument(f"--keep-{rule}", type=_count, metavar="N",
                       help=f"keep the newest set of each of the last N {unit}s that have sets (local time)")
    p.add_argument("--keep-within", metavar="DURATION", help="keep sets this close to the newest set (e.g. 2d, 36h)")
    for level in LEVELS:
        p.add_argument(f"--keep-{level}", type=_count, metavar="N", help=f"keep the newest N {level} sets")
    p.add_argument("--keep-tag", action="append", metavar="T", help="keep every set with this tag (repeatable)")
    p.add_argument("--forget", action="append", metavar="SET",
                   help="forget this set (id or unique prefix) whatever the rules say; repeatable (e.g. a set "
                        "whose listing is lost for good, which stops prune otherwise)")
    p.add_argument("--wal-keep", metavar="DURATION",
                   help="WAL retention window (default: the daemon's [repository] wal_keep; unset keeps all WAL)")
    p.add_argument("--source", metavar="NAME")
    p.add_argument("--host", metavar="H", help="only the sets this host took")

    p = command("unlock", cmd_unlock, "remove stale repository locks (a lock whose process is gone, or not refreshed "
                                      "for 30 minutes); --host H also those of a host that is gone")
    p.add_argument("--host", metavar="H", help="also remove every lock host H holds (only when H is gone: a "
                                               "running operation there fails once it notices)")
    p.add_argument("--remove-all", action="store_true",
                   help="remove every lock but the daemon's own (only when no other Cairn process runs)")

    p = command("repair", cmd_repair, "repair a damaged repository: rebuild the index from the packs, or remove "
                                      "set objects or WAL catalog entries that cannot be read")
    repairs = p.add_subparsers(dest="repair_command", metavar="WHAT", required=True, parser_class=_Parser)
    r = repairs.add_parser("index", parents=[common],
                           help="rebuild the index from the packs that exist; then take a full backup, which "
                                "stores what the index lost again")
    r.add_argument("--read-data", action="store_true",
                   help="read every pack and verify every blob; blobs that fail are left out of the index")
    r.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    r = repairs.add_parser("sets", parents=[common], help="remove the set objects that cannot be read "
                                                          "(readable sets are never touched)")
    r.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    r = repairs.add_parser("wal", parents=[common], help="remove the WAL catalog entries that cannot be read "
                                                         "or whose data is lost (after 'repair index')")
    r.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    p = command("key", cmd_key, "list, add or remove keys of the encrypted repository")
    keys = p.add_subparsers(dest="key_command", metavar="ACTION", required=True, parser_class=_Parser)
    keys.add_parser("list", parents=[common], help="list the repository's keys")
    k = keys.add_parser("add", parents=[common], help="add a key: a passphrase or a new key file")
    secret = k.add_mutually_exclusive_group(required=True)
    secret.add_argument("--passphrase-file", metavar="F", help="the new passphrase (first line of F)")
    secret.add_argument("--new-key-file", metavar="F", help="write a new key file to F (must not exist)")
    k.add_argument("--write-only", action="store_true",
                   help="a write-only key: backs up and archives WAL, reads no data and deletes nothing")
    k = keys.add_parser("remove", parents=[common], help="remove a key (never the last usable one)")
    k.add_argument("id", metavar="ID", help="key id or unique prefix")

    p = command("copy", cmd_copy, "copy sets and the WAL they need into another repository (created encrypted "
                                  "if missing); sets already there are skipped")
    p.add_argument("sets", metavar="SET", nargs="*", help="sets to copy (default: every set, or of --source)")
    p.add_argument("--to", required=True, metavar="URL", help="the destination: a directory or s3://bucket/prefix")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--to-passphrase-file", metavar="F", help="the destination's passphrase (first line of F)")
    secret.add_argument("--to-key-file", metavar="F", help="the destination's key file")
    p.add_argument("--source", metavar="NAME", help="only this source's sets ('latest' refers to it)")
    p.add_argument("--host", metavar="H", help=HOST_HELP)

    sysid_help = ("the cluster's system identifier, its WAL name space in the repository (default: from the "
                  "segment's header, else from the pg_control of the data directory the file lies in)")
    p = command("wal-push", cmd_wal_push, "archive a WAL segment (archive_command = 'cairn wal-push %%p')")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--system-id", metavar="N", help=sysid_help)

    p = command("wal-fetch", cmd_wal_fetch, "fetch a WAL segment (restore_command = 'cairn wal-fetch %%f %%p')")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--system-id", metavar="N", help=sysid_help.replace("the segment's header, else from ", ""))
    p.add_argument("--prefetch", type=_count, default=8, metavar="N",
                   help="keep the next N segments coming in the background (default 8; 0: off)")

    p = command("wal-prefetch", cmd_wal_prefetch, "the background prefetcher wal-fetch starts (not for people)")
    p.add_argument("spool", metavar="SPOOL")
    p.add_argument("--count", type=_count, default=8, metavar="N")
    p.add_argument("--system-id", metavar="N")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0 and at most {MAX_TIMEOUT:g}, got '{text}'")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if value < 0 or value > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 4294967295, got {value}")
    return value


# ---- entry point ----


# Arguments sent as protobuf strings (set references, names, tags, a copy's destination); paths
# and patterns go as bytes and may hold any byte.
_TEXT_ARGS = ("set", "set_a", "set_b", "sets", "source", "host", "database", "tag", "to", "level", "name", "id",
              "target_dsn", "target_time", "target_lsn", "forget", "address", "tls_server_name", "token")

# Options that name something, and what they need. Their value travels as a protobuf string or
# picks a file, and an empty one would read as the option left out: `backup --source ""` would take
# the only source, `verify --set ""` check every set, `--socket ""` reach the default daemon. So an
# empty (or blank) value is a usage error, named by the option. (--target, --database, --tag,
# --include/--exclude and the restore-db targets have their own checks.)
_NAMED_OPTIONS = {
    "socket": "a socket path", "address": "HOST:PORT", "tls_ca": "a file", "tls_server_name": "a name",
    "token": "a token", "token_file": "a file", "source": "a source name", "host": "a host name",
    "level": "a level: full, differential or incremental", "read_data_subset": "n/m or a percentage",
    "keep_within": "a duration", "wal_keep": "a duration", "to": "a directory or s3://bucket/prefix",
    "to_passphrase_file": "a file", "to_key_file": "a file", "passphrase_file": "a file",
    "new_key_file": "a file", "system_id": "a number", "restore_command": "a command",
}


def _empty_option(args: argparse.Namespace) -> str | None:
    """The usage error of the first option given an empty value, or None."""
    named = dict(_NAMED_OPTIONS)
    if args.command == "verify":  # elsewhere `set` is a positional: the daemon answers "no set given"
        named["set"] = "a set id, a unique prefix or 'latest'"
    for dest, what in named.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            return f"--{dest.replace('_', '-')} needs {what}"
    return None


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:  # argparse gives undecodable bytes as surrogates
        return False


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    _JSON_ERRORS[0] = "--json" in (words[:words.index("--")] if "--" in words else words)
    parser = build_parser()
    args, rest = parser.parse_known_args(words)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.command:
        parser.error("no command given")
    for name in _TEXT_ARGS:  # they travel as protobuf strings: a byte that is not UTF-8 is a usage error
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and not _utf8(value):
                parser.error(f"argument {name.replace('_', '-')}: '{shown(os.fsencode(value))}' is not valid UTF-8")
    empty = _empty_option(args)
    if empty:
        return fail(empty, code=EXIT_USAGE)
    code = _run(args)
    if args.command == "wal-fetch" and code not in (EXIT_OK, EXIT_NOT_FOUND):
        # not "not in the archive": PostgreSQL would take it as the end of WAL and promote early;
        # an exit status above 125 makes recovery stop instead, until the archive answers again
        return EXIT_ARCHIVE_FAILED
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "wal-fetch" and answered_locally(args.name, args.dest):
        # exit status 3, not fetched: nothing to fetch, or recovery reads the copy in pg_wal/
        where = ("never exists" if args.name == NO_HISTORY else "is in pg_wal/, placed there by restore-db"
                 if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(args.dest)), args.name))
                 else "is past the set's own point, where this recovery stops")
        print(f"cairn: {args.name} {where}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.command == "wal-fetch" and args.prefetch > 0 and _from_spool(args):
        return EXIT_OK
    from cairn.client.connection import Connection, resolve_endpoint

    endpoint: Endpoint | None = None
    try:
        endpoint = resolve_endpoint(
            socket=args.socket,
            address=args.address,
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
            token=args.token,
            token_file=args.token_file,
        )
        with Connection(endpoint) as conn:
            return args.func(conn, args)
    except grpc.RpcError as exc:
        return _rpc_failure(exc, endpoint, args.command)
    except CairnError as exc:
        return fail(exc.message, exc.hint, _ERROR_EXIT.get(exc.code, EXIT_FAILURE))
    except KeyboardInterrupt as exc:  # SIGINT; during a restore also SIGTERM (restoring.Interrupted)
        return fail(getattr(exc, "message", "interrupted"), code=getattr(exc, "exit_status", 130))
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as exc:  # this host's files: a target that cannot be made or written, ...
        where = f" '{shown(exc.filename)}'" if exc.filename else ""
        return fail(f"unable to use{where}: {exc.strerror or exc}")


def _from_spool(args: argparse.Namespace) -> bool:
    """wal-fetch answered from the prefetch spool (no daemon round trip, no grpc import)."""
    from cairn.client import walfetch

    if not walfetch.is_segment(args.name):
        return False
    try:
        if not walfetch.take(args.name, args.dest, wait=SPOOL_WAIT):
            return False
    except OSError:
        return False
    try:
        walfetch.start_prefetcher(walfetch.spool_of(args.dest), args.prefetch, _global_args(args),
                                  wal_namespace(args, args.dest), env=_child_env(args))
    except OSError as exc:  # the segment is in place; prefetch is an optimisation
        print(f"cairn: warning: WAL prefetch not started: {exc.strerror or exc}", file=sys.stderr)
    return True


_LOST = ("Stream removed", "Socket closed", "Connection reset", "Broken pipe")  # gRPC's words for a call cut off
# The daemon may have finished (committed a set) just before the answer was lost: never say it did not.
_MAYBE_DONE = ("the call may have finished before its answer was lost: 'cairn sets' shows whether a backup's set "
               "was committed (a set is there whole or not at all)")


def _rpc_failure(exc: grpc.RpcError, endpoint: Endpoint | None, command: str = "") -> int:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or code.name.lower()
    hint = None
    for key, value in (exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None) or ():
        if key == HINT_KEY:
            hint = value
    where = endpoint.describe() if endpoint else "the daemon"
    if code == grpc.StatusCode.UNAVAILABLE and details == "Cancelling all calls":  # the server is stopping
        return fail(f"cairnd at {where} stopped while this call ran",
                    hint or f"run the command again once cairnd is back; {_MAYBE_DONE}")
    if code == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _LOST):
        return fail(f"the connection to cairnd at {where} was lost during the call: {details}",
                    hint or f"{_MAYBE_DONE}; finish a restore with --delta, or run the command again")
    if code == grpc.StatusCode.UNAVAILABLE:
        tcp = endpoint is not None and endpoint.address
        if endpoint is not None and endpoint.socket and "connect failed" in details:
            from cairn.client.connection import socket_problem

            details = socket_problem(endpoint.socket) or "nothing listens on it (connection refused)"
            if details.startswith("Permission denied") and not hint:
                hint = ("run cairn as a user the socket admits: a member of its group (cairnd's [daemon] "
                        "socket_group or --socket-group), or its owner")
        return fail(
            f"unable to reach cairnd at {where}: {details}",
            hint or ("is cairnd listening there? check --address, and --tls-ca and --tls-server-name against its "
                     "certificate" if tcp else "is cairnd running? name its socket with --socket or $CAIRN_SOCKET"),
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return fail(f"cairnd at {where} refused the call: {details}",
                    hint if hint or "--token" in details else "pass --token or --token-file")
    if code == grpc.StatusCode.CANCELLED:
        return fail("the call was cancelled", hint)
    if code == grpc.StatusCode.UNIMPLEMENTED and details.startswith(_UNKNOWN_METHOD) and endpoint is not None:
        # gRPC's own answer for a method the server does not have: a daemon of another version
        other = _daemon_version(endpoint)
        return fail(f"cairnd at {where}{f' ({other})' if other else ''} does not serve the call "
                    f"'cairn {command}' makes: it runs another version of Cairn than this client "
                    f"(cairn {__version__})",
                    hint or "use the cairn client installed with the daemon ('cairnd --version' names its version)")
    return fail(details, hint, _STATUS_EXIT.get(getattr(code, "name", ""), EXIT_FAILURE))


# gRPC's details of UNIMPLEMENTED when the server has no such method (or a stub of it): a daemon of
# another version; the daemon's own UNIMPLEMENTED errors say what is not available instead
_UNKNOWN_METHOD = ("Method not found", "Method not implemented")


def _daemon_version(endpoint: Endpoint) -> str | None:
    """'cairnd VERSION' as the daemon at `endpoint` reports it, None when it does not say."""
    from cairn.client.connection import Connection

    try:
        with Connection(endpoint) as conn:
            version = conn.stub.Status(pb.StatusRequest(), timeout=10).daemon.version
    except grpc.RpcError:
        return None
    return f"cairnd {version}" if version else None


def run() -> NoReturn:
    """The `cairn` command: main(), then an immediate exit. By then every file is closed and the
    channel shut (main's `with` blocks); only output buffers are left, and they are flushed here.
    Skipping the interpreter's teardown (module clean-up, grpc's exit handlers) saves about a
    fifth of a short command's run, which restore_command and wal-fetch pay per WAL file."""
    try:
        code = main()
    except SystemExit as exc:  # argparse's usage errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # outside a command's own handling (parsing, the end of main): one line too
        code = fail("interrupted", code=130)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            code = code or EXIT_FAILURE
    os._exit(code)


if __name__ == "__main__":
    run()
