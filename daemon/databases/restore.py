"""restore-db of a dump: a set's dump of a database restored into the database a DSN names.

Runs on the daemon host (it holds the configuration, the tools the dump was taken with and
the repository); `cairn restore-db SET --database NAME --target-dsn DSN` asks for it over the API.

- kind 'pg_dump': the set's dump directory is restored into a fresh scratch directory under the
  daemon's state directory, then `pg_restore --dbname=DSN --jobs=N --exit-on-error` reads it;
  the scratch directory is removed afterwards, also on failure (and, should the daemon have
  been killed meanwhile, by the next restore of a daemon with another pid).
- kind 'command': the configured `restore = [...]` runs with `{target}` replaced by the DSN
  (and CAIRN_TARGET_DSN, CAIRN_DATABASE in its environment). A stream dump is fed to its stdin
  straight from the repository (chunks verified as they are read; nothing spooled); a
  directory dump is restored into a scratch directory first, named by `{dir}`.

A dump that cannot be restored into its scratch directory (a full state directory) is one line
naming the directory and the first file's reason, with the hint to free room or to write the
files elsewhere with `--target DIR`; the scratch directory is removed all the same.

`restore-db SET --database NAME --target DIR` of a dump (dump_files) writes the dump's files as
stored (the pg_dump directory, or the command's stream file) and runs nothing: no configuration
is needed, so a fresh host restores a dump with nothing but the repository.

The restore command comes from the current configuration, never from the repository: a set
cannot make the daemon run a command. What always holds: every check (the set holds that
database, it is a dump, the database is configured with a restore command) runs before any
tool starts; a failing tool raises DumpFailedError with its exit status and stderr tail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cairn.daemon.databases.dump import DIR_PLACEHOLDER, TARGET_PLACEHOLDER, ToolRun, find_tool
from cairn.daemon.databases.engine import KIND_COMMAND, KIND_PG_DUMP, DumpRecord, records_of
from cairn.daemon.runtime.config import Config
from cairn.errors import AbortedError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from cairn.fsio.records import Data, LaneGauge, Record
from cairn.store.model import BackupSet, Progress
from cairn.store.repository import Repository

ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class DumpRestoreResult:
    """What restore-db into a DSN did."""

    database: str
    kind: str
    tool: str
    bytes: int
    seconds: float


def dump_record(s: BackupSet, database: str) -> DumpRecord:
    """The set's dump record of `database`; NotFoundError / InvalidArgumentError otherwise."""
    if not database:
        raise InvalidArgumentError("no database given: name one with --database")
    recs = records_of(s)
    rec = next((r for r in recs if r.name == database), None)
    if rec is None:
        names = ", ".join(f"'{r.name}'" for r in recs)
        held = f" (it holds database {names})" if names else ""
        raise NotFoundError(f"set '{s.id[:8]}' holds no database '{database}'{held}")
    if not isinstance(rec, DumpRecord):
        raise InvalidArgumentError(
            f"database '{database}' of set '{s.id[:8]}' is a base backup (kind 'postgres'): restore it as a "
            "data directory with --target DIR")
    if rec.attachment not in s.attachments:
        raise NotFoundError(f"set '{s.id[:8]}' holds no dump of database '{database}'")
    return rec


def restorable_dumps(config: Config, s: BackupSet) -> list[str]:
    """The set's dumps that `restore_dump` can restore here: every pg_dump dump (pg_restore needs
    no configuration), and a command dump whose database this configuration gives a restore
    command (a fresh host's recovery daemon has none: its files are written with --target DIR)."""
    out = []
    for rec in records_of(s):
        if not isinstance(rec, DumpRecord):
            continue
        if rec.kind == KIND_PG_DUMP:
            out.append(rec.name)
            continue
        cfg = next((d for d in config.databases if d.name == rec.name), None)
        if cfg is not None and cfg.kind == KIND_COMMAND and cfg.restore:
            out.append(rec.name)
    return out


def dump_of(s: BackupSet, database: str) -> DumpRecord | None:
    """The set's dump record of `database`, or None when the set holds no dump of that name."""
    return next((r for r in records_of(s) if r.name == database and isinstance(r, DumpRecord)), None)


def dump_files(repo: Repository, s: BackupSet, rec: DumpRecord, target_time: str, target_lsn: str,
               command: str, timeline: str, lanes: LaneGauge | None = None) -> Iterator[Record]:
    """The records of a dump's files as stored (`restore-db --target DIR` of a dump): a pg_dump
    directory, or the command's stream file. Needs no configuration and runs no tool, so a
    fresh host restores it with nothing but the repository; recovery options do not apply."""
    if target_time or target_lsn or command or timeline not in ("", "current"):
        raise InvalidArgumentError(f"database '{rec.name}' is a dump (kind '{rec.kind}'): it has no point-in-time "
                                   "recovery, restore_command or timeline")
    if rec.attachment not in s.attachments:
        raise NotFoundError(f"set '{s.id[:8]}' holds no dump of database '{rec.name}'")
    return repo.restore_stream(s, attachment=rec.attachment, lanes=lanes)


def restore_dump(repo: Repository, config: Config, s: BackupSet, database: str, target_dsn: str,
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> DumpRestoreResult:
    """Restore the set's dump of `database` into the database `target_dsn` names (module docstring)."""
    import time

    rec = dump_record(s, database)
    if not target_dsn:
        raise InvalidArgumentError("no target given: name the database to restore into with --target-dsn DSN")
    env = {**os.environ, "CAIRN_DATABASE": database, "CAIRN_TARGET_DSN": target_dsn}
    t0 = time.monotonic()
    scratch_root = os.path.join(config.daemon.state_dir, "restores")
    if rec.kind == KIND_PG_DUMP:
        argv_of: Callable[[str], list[str]] = lambda d: [  # noqa: E731
            find_tool("pg_restore", database), f"--dbname={target_dsn}", f"--jobs={max(1, rec.jobs)}",
            "--exit-on-error", "--no-password", d]
        tool = "pg_restore"
    elif rec.kind == KIND_COMMAND:
        try:
            cfg = config.database(database)
        except NotFoundError:
            raise FailedPreconditionError(
                f"database '{database}' is not configured here: its restore command comes from the "
                "[[database]] table of the daemon's configuration",
                hint=f"write its files with cairn restore-db {s.id[:12]} --database {database} --target DIR "
                     "and load them with the database's own restore tool") from None
        if cfg.kind != KIND_COMMAND or not cfg.restore:
            raise FailedPreconditionError(f"database '{database}' has no restore command configured "
                                          "(kind = 'command', restore = [...])")
        find_tool(cfg.restore[0], database)
        tool = os.path.basename(cfg.restore[0])
        base = [a.replace(TARGET_PLACEHOLDER, target_dsn) for a in cfg.restore]
        if rec.layout == "stream":
            n = _feed_stream(repo, s, rec, base, env, progress, cancel)
            return DumpRestoreResult(database, rec.kind, tool, n, round(time.monotonic() - t0, 3))
        if not any(DIR_PLACEHOLDER in a for a in base):
            raise FailedPreconditionError(f"database '{database}' was dumped as a directory: its restore command "
                                          "must name it with {dir}")
        argv_of = lambda d: [a.replace(DIR_PLACEHOLDER, d) for a in base]  # noqa: E731
    else:
        raise InvalidArgumentError(f"database '{database}' has a dump of unknown kind '{rec.kind}'")
    unable = f"unable to restore the dump of database '{database}' in '{scratch_root}'"
    elsewhere = (f"free room there, or write its files elsewhere with cairn restore-db {s.id[:12]} "
                 f"--database {database} --target DIR and load them from there")
    try:
        os.makedirs(scratch_root, mode=0o700, exist_ok=True)
        _remove_stale(scratch_root)
        scratch = tempfile.mkdtemp(prefix=f"{database}.{os.getpid()}.", dir=scratch_root)
    except OSError as exc:
        raise FailedPreconditionError(f"{unable}: {exc.strerror or exc}", hint=elsewhere) from exc
    try:
        stats = repo.restore(s, os.path.join(scratch, "dump"), attachment=rec.attachment, progress=progress)
        if stats.errors:
            raise FailedPreconditionError(f"{unable}: {stats.errors[0]}", hint=elsewhere)
        run = ToolRun(argv_of(os.path.join(scratch, "dump")), database, None, env=env)
        run.start()
        watcher = _killer(run, cancel)
        try:
            run.finish("restore")
        finally:
            watcher.set()
        return DumpRestoreResult(database, rec.kind, tool, stats.bytes, round(time.monotonic() - t0, 3))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale(scratch_root: str) -> None:
    """Remove scratch directories a daemon that is gone left behind (killed during a restore):
    each is named '<database>.<pid of its daemon>.<random>'."""
    for name in os.listdir(scratch_root):
        parts = name.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid():
            shutil.rmtree(os.path.join(scratch_root, name), ignore_errors=True)


def _feed_stream(repo: Repository, s: BackupSet, rec: DumpRecord, argv: list[str], env: dict[str, str],
                 progress: ProgressFn | None, cancel: threading.Event | None) -> int:
    """Run `argv` with the stored stream on its stdin; return the bytes fed."""
    run = ToolRun(argv, rec.name, None, stdin=subprocess.PIPE, env=env)
    proc = run.start()
    assert proc.stdin is not None
    watcher = _killer(run, cancel)
    fed = 0
    try:
        try:
            for r in repo.restore_stream(s, attachment=rec.attachment):
                if isinstance(r, Data):
                    proc.stdin.write(r.data)
                    fed += len(r.data)
                    if progress is not None:
                        progress(Progress("restore", 0, 1, fed, rec.bytes))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the tool stopped reading: its exit status says why
        run.finish("restore")
    finally:
        watcher.set()
        run.close()
    if cancel is not None and cancel.is_set():
        raise AbortedError(f"restore of database '{rec.name}' was cancelled")
    return fed


def _killer(run: ToolRun, cancel: threading.Event | None) -> threading.Event:
    """Kill `run` when `cancel` is set before the returned event is."""
    done = threading.Event()
    if cancel is None:
        return done

    def watch() -> None:
        while not done.wait(0.2):
            if cancel.is_set():
                run.kill()
                return

    threading.Thread(target=watch, name="restore-cancel", daemon=True).start()
    return done
