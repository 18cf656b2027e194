"""Quiesce windows: freeze/thaw hooks around the capture of a consistent set.

- `Hook(argv, timeout, required).run()` runs one hook as a subprocess in its own process group
  (stdin /dev/null; stdout/stderr to temporary files, so a hook that starts a background service
  does not hold us up) and returns a `HookResult`. On timeout, or when the `cancel` event it is
  given is set, the whole process group gets SIGTERM and, after a short grace, SIGKILL.
- `Window(state_dir, source, mode, freeze, thaw, max_window)` is a context manager:

      with Window(state_dir, "app", "cold", freeze=[Hook(("systemctl", "stop", "app"))],
                  thaw=[Hook(("systemctl", "start", "app"))], max_window=900) as w:
          ...capture, calling w.check_deadline() between steps and passing w.cancel on...
      set_extra["window"] = w.record()

  Hooks form a stack of levels (`levels=[(freeze hooks, thaw hooks), ...]`; `freeze`/`thaw`
  alone are one level): levels freeze in order, and on exit the thaw hooks of every level whose
  freeze began run, the last level first.
  On enter it durably writes the window record (daemon/windows/records.py), starts a watchdog
  timer for max_window and runs the freeze hooks in order (the record is rewritten before each
  further level begins, so a crash thaws exactly the levels that began). A required freeze hook
  that fails raises `HookError` (message holds the hook's stderr) after the thaw hooks ran; an
  optional one is only recorded. Any other exception once the first freeze hook may have run (a
  record that cannot be rewritten: `FailedPreconditionError` "unable to write window record
  '...': No space left on device") also thaws the levels that began before it propagates; a
  record that cannot be written before the first level leaves nothing frozen. One window per
  source and state directory is open at a time in this process (another is refused, `BusyError`).
  A record of the source that no window of this process holds is a previous daemon's window
  whose thaw failed at start: its thaw is retried first, and while it fails the window is
  refused (`FailedPreconditionError`, one line naming the thaw hook's error) with nothing frozen
  and the record kept. Each window tells the health record whether such a thaw is still
  pending (`health.leftover_thaw`: the source's "thaw failed" report in `cairn status` is
  renewed, or dropped once none is). On exit the thaw hooks ALWAYS run — after the body, on exceptions, and
  when the watchdog fires at the deadline: it sets `cancel` (a backup in progress aborts), calls
  the `on_expire` callback (e.g. PgConnection.cancel), and thaws at once without waiting for the
  body. Exiting a window whose deadline passed raises `DeadlineError` (also when the body ended
  with an AbortedError caused by the cancel). Thaw runs exactly once, every thaw hook runs even
  if an earlier one failed, and the record is removed only after thaw. A failing thaw hook is
  recorded in `errors` (the captured data is still consistent); it never hides the body's error.
- `recover_windows(state_dir, configured=...)` runs first at daemon start: it kills the database
  tools a previous daemon left running (daemon/databases/tools.py: recorded groups, leftover work
  directories removed), then for every leftover record (the daemon died inside a window) it
  runs the recorded thaw hooks of every level that began to freeze (last level first) and
  removes the record — or keeps it when a required thaw hook failed, so the thaw is retried
  (by the next set of the source and at the next start). A record that cannot be read runs
  every thaw hook its source's configuration names (thaw hooks are idempotent) and is then
  renamed '<name>.corrupt' (while a required one fails it stays, to be retried the same way; of
  a source no longer configured with `quiesce` nothing can run: renamed, reported as failed).
- `thaw_open_windows()` is the daemon's last resort at shutdown (a set did not return in time,
  or a window was left open whatever the cause): every window still open in this process is
  cancelled (`on_expire`: its database tools are killed) and thawed at once, without waiting
  for its body (thaw hooks are idempotent).
- `open_windows(state_dir)` is what `cairn status` shows of the windows of this process open
  now (`OpenWindow`: source, mode, freezing/frozen/thawing, when it opened and froze, the
  deadline at which the watchdog thaws it); a `WindowRecovery` keeps when a leftover window
  was thawed, so status can say that the daemon thawed an application a previous run left frozen.
- `run_after(argvs, ...)` runs a window's on_success / on_failure hooks (optional: a failure
  is logged and returned, never raised), with an optional time budget for all of them.

What always holds: while a window record exists, thaw may not have run (or did not succeed); once a
freeze hook may have run, `__enter__` either returns the open window or thaws before it raises;
after `__exit__` returns or raises, thaw has completed and the record is gone. A hook runs even
when no temporary file can hold its output (it is then discarded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from cairn.daemon.databases.tools import EXIT_NOT_RUN, guarded_argv, reap_leftovers
from cairn.daemon.runtime.health import STILL_STOPPED, leftover_thaw
from cairn.daemon.windows.records import (
    SUFFIX,
    HookSpec,
    WindowRecord,
    list_record_paths,
    read_record,
    record_path,
    remove_record,
    write_record,
)
from cairn.errors import (
    AbortedError,
    BusyError,
    CairnError,
    DeadlineError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from cairn.fsio.durable import fsync_dir

log = logging.getLogger("cairn.quiesce")

MODES = ("cold", "hot")
TAIL_BYTES = 4096
KILL_GRACE = 2.0

_open_windows: set[Window] = set()  # windows entered and not yet thawed, in this process
_claims: dict[tuple[str, str], Window] = {}  # (state dir, source) -> the window entering or open there
_open_lock = threading.Lock()


class HookError(FailedPreconditionError):
    """A required hook failed or timed out; `result` holds what it did."""

    def __init__(self, message: str, result: HookResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class HookResult:
    """What one hook run did. exit_code is negative for a signal, None if it never started."""

    argv: tuple[str, ...]
    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    required: bool = True

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def failure(self, phase: str) -> str:
        """One-line description of the failure, every outcome in one form: the phase, the command
        in parentheses as a shell would read it (shlex.join: an argument holding a space, a quote
        or a parenthesis is quoted, so the command's end is unambiguous), what happened, then the
        tail of its output: "freeze hook (sh -c 'exit 1') failed with exit code 1: <stderr>"."""
        what = f"{phase} hook ({self.command})"
        detail = _one_line_tail(self.stderr_tail) or _one_line_tail(self.stdout_tail)
        if self.timed_out:
            reason = f"{what} timed out after {self.duration:.1f}s and was killed"
        elif self.cancelled:
            reason = f"{what} was killed when the window was cancelled"
        elif self.exit_code is None:
            reason = f"{what} could not be started"
            detail = _start_error(detail, self.argv)
        elif self.exit_code < 0:
            reason = f"{what} was killed by signal {-self.exit_code}"
        else:
            reason = f"{what} failed with exit code {self.exit_code}"
        return f"{reason}: {detail}" if detail else reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "exit_code": self.exit_code,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "duration": round(self.duration, 3),
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "required": self.required,
        }


def _start_error(detail: str, argv: Sequence[str]) -> str:
    """Why a hook could not be started, without the "unable to run NAME: " the guard (or our own
    start) put before it: the message names the command already."""
    for name in ([os.path.basename(argv[0])] if argv else []) + ["hook"]:
        prefix = f"unable to run {name}: "
        if detail.startswith(prefix):
            return detail[len(prefix):]
    return detail


def _one_line_tail(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    joined = " | ".join(lines[-3:])
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def _read_tail(f: Any) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_BYTES))
    return f.read().decode("utf-8", "replace")


@contextlib.contextmanager
def _output_files() -> Iterator[tuple[Any, Any]]:
    """Temporary files for a hook's stdout and stderr; (None, None) when none can be made (the
    temporary directory is full or read-only): the hook still runs, its output discarded — a
    thaw must never be skipped for want of a place to keep its output."""
    with contextlib.ExitStack() as stack:
        try:
            out = stack.enter_context(tempfile.TemporaryFile())
            err = stack.enter_context(tempfile.TemporaryFile())
        except OSError as e:
            log.warning("unable to create a temporary file for a hook's output (%s): it is discarded",
                        e.strerror or e)
            stack.close()
            out = err = None
        yield out, err


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
        # leader gone after SIGTERM: make sure no member of its group lingers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


class Hook(HookSpec):
    """A hook command: argv (no shell), timeout in seconds, required (failure fails the set)."""

    def run(self, *, env: dict[str, str] | None = None, cancel: threading.Event | None = None,
            cwd: str | None = None) -> HookResult:
        """Run the hook to completion, timeout or cancel; never raises for the hook's own failure."""
        start = time.monotonic()
        with _output_files() as (out, err):
            try:
                # under the tools' guard: a hook never outlives the daemon (a freeze hook left
                # running by a daemon killed with -9 would otherwise finish after the next start's thaw)
                proc = subprocess.Popen(guarded_argv(list(self.argv)), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL if out is None else out,
                                        stderr=subprocess.DEVNULL if err is None else err,
                                        start_new_session=True, env=env, cwd=cwd, close_fds=True)
            except OSError as e:
                return HookResult(self.argv, None, "", f"unable to run hook: {e.strerror or e}",
                                  time.monotonic() - start, required=self.required)
            timed_out = cancelled = False
            deadline = start + self.timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                try:
                    proc.wait(min(remaining, 0.05) if cancel is not None else remaining)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if timed_out or cancelled:
                _kill_group(proc)
            code: int | None = proc.returncode
            err_tail = _read_tail(err) if err is not None else ""
            if code == EXIT_NOT_RUN and err_tail.startswith("unable to run "):
                code = None  # the guard could not start it (no such program, not executable)
            return HookResult(self.argv, code, _read_tail(out) if out is not None else "", err_tail,
                              time.monotonic() - start, timed_out=timed_out, cancelled=cancelled,
                              required=self.required)

    @classmethod
    def of(cls, spec: HookSpec) -> Hook:
        return cls(tuple(spec.argv), spec.timeout, spec.required)


def hooks_from_config(argvs: Iterable[Sequence[str]], timeout: float, required: bool) -> tuple[Hook, ...]:
    """Hooks for a QuiesceConfig's freeze or thaw list (one timeout/required for all)."""
    return tuple(Hook(tuple(a), float(timeout), bool(required)) for a in argvs)


def levels_from_config(quiesce: Any) -> tuple[tuple[tuple[Hook, ...], tuple[Hook, ...]], ...]:
    """The hook stack of a QuiesceConfig as (freeze hooks, thaw hooks) per level."""
    return tuple((hooks_from_config(lv.freeze, lv.timeout, lv.required),
                  hooks_from_config(lv.thaw, lv.timeout, lv.required)) for lv in quiesce.levels())


def run_after(argvs: Iterable[Sequence[str]], source: str, mode: str, phase: str, timeout: float,
              env: dict[str, str] | None = None, budget: float | None = None) -> list[HookResult]:
    """Run on_success / on_failure hooks in order, each killed at `timeout` and, with `budget`,
    all of them within `budget` seconds together; failures are logged, never raised."""
    results = []
    end = None if budget is None else time.monotonic() + budget
    for argv in argvs:
        limit = float(timeout) if end is None else max(0.1, min(float(timeout), end - time.monotonic()))
        res = Hook(tuple(argv), limit, False).run(env=_hook_env(source, mode, phase, env))
        if not res.ok:
            log.warning("source '%s': optional %s", source, res.failure(phase))
        results.append(res)
    return results


def _hook_env(source: str, mode: str, phase: str, base: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({"CAIRN_SOURCE": source, "CAIRN_WINDOW_MODE": mode, "CAIRN_HOOK_PHASE": phase})
    return env


def _run_thaw_hook(hook: Hook, source: str, mode: str, env: dict[str, str] | None) -> HookResult:
    """Run one thaw hook; an unexpected error is its failed result, so every other thaw hook still runs."""
    try:
        return hook.run(env=_hook_env(source, mode, "thaw", env))
    except Exception as e:  # noqa: BLE001 - a thaw that raised is a failed thaw, never a skipped one
        return HookResult(hook.argv, None, "", f"unable to run hook: {e}", 0.0, required=hook.required)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Window:
    """One quiesce window of a source (see the module docstring for the guarantees)."""

    def __init__(
        self,
        state_dir: str,
        source: str,
        mode: str,
        freeze: Sequence[Hook] = (),
        thaw: Sequence[Hook] = (),
        max_window: float = 900.0,
        *,
        cancel: threading.Event | None = None,
        on_expire: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
        levels: Sequence[tuple[Sequence[HookSpec], Sequence[HookSpec]]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise InvalidArgumentError(f"unknown quiesce mode '{mode}': expected cold or hot")
        if max_window <= 0:
            raise InvalidArgumentError(f"max_window must be positive, got {max_window}")
        self.state_dir = state_dir
        self.source = source
        self.mode = mode
        if levels is None:
            levels = ((freeze, thaw),) if freeze or thaw else ()
        self.levels = tuple((tuple(Hook.of(h) for h in f), tuple(Hook.of(h) for h in t)) for f, t in levels)
        self.freeze_hooks = tuple(h for f, _ in self.levels for h in f)
        self.thaw_hooks = tuple(h for _, t in reversed(self.levels) for h in t)
        self.started_levels = 0
        self.max_window = float(max_window)
        self.cancel = cancel if cancel is not None else threading.Event()
        self.on_expire = on_expire
        self.env = env
        self.deadline = float("inf")
        self.expired = False
        self.freeze_results: list[HookResult] = []
        self.thaw_results: list[HookResult] = []
        self.errors: list[str] = []
        self._state_lock = threading.Lock()
        self._hook_lock = threading.Lock()
        self._thaw_lock = threading.Lock()
        self._closing = False
        self._thawed = False
        self._timer: threading.Timer | None = None
        self._wall_start = 0.0
        self._wall_frozen = 0.0
        self._t: dict[str, float] = {}

    @classmethod
    def from_config(cls, state_dir: str, source: str, quiesce: Any, **kwargs: Any) -> Window:
        """A Window for a SourceConfig's QuiesceConfig (mode, freeze, thaw, timeout, max_window, required)."""
        return cls(state_dir, source, quiesce.mode, levels=levels_from_config(quiesce),
                   max_window=quiesce.max_window, **kwargs)

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> Window:
        path = record_path(self.state_dir, self.source)
        key = (os.path.abspath(self.state_dir), self.source)
        with _open_lock:  # one window per source at a time in this process: checked and claimed at once
            if key in _claims:
                raise BusyError(f"a quiesce window of source '{self.source}' is already open (record '{path}')")
            _claims[key] = self
        try:
            if os.path.exists(path):
                # no window of this process holds it: a previous daemon's window whose thaw failed at start
                self._thaw_leftover(path)
            else:
                self._tell_health(None)  # nothing left over (any more): no thaw is pending
            self._wall_start = time.time()
            self._t["open"] = time.monotonic()
            self.deadline = self._t["open"] + self.max_window
            try:
                self._write_record(1 if self.levels else 0)  # the first level freezes right away
            except FailedPreconditionError:
                with contextlib.suppress(OSError):  # a record written but not made durable: no hook of it ran
                    remove_record(self.state_dir, self.source)
                raise
        except BaseException:
            self._release()  # nothing was frozen by this window
            raise
        self.started_levels = 1 if self.levels else 0
        try:
            self._timer = threading.Timer(self.max_window, self._expire)
            self._timer.daemon = True
            self._timer.name = f"window-{self.source}"
            self._timer.start()
            with _open_lock:
                _open_windows.add(self)
            failure = self._run_freeze()
        except BaseException:
            # Guaranteed thaw: whatever fails once a freeze hook may have run (the record's rewrite
            # before a further level on a full disk, ...) thaws the levels that began before it
            # propagates; the timer is stopped and the record removed.
            self._close()
            raise
        self._t["frozen"] = time.monotonic()
        self._wall_frozen = time.time()
        if failure is not None or self.cancel.is_set():
            self._close()
            if failure is not None:
                raise failure
            if self.expired:
                raise self._deadline_error()
            raise AbortedError(f"quiesce window of source '{self.source}' was cancelled during freeze; "
                               "thaw ran")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._t["body_end"] = time.monotonic()
        self._close()
        aborted = isinstance(exc, AbortedError) and not isinstance(exc, DeadlineError)
        if self.expired and (exc is None or aborted):
            raise self._deadline_error() from exc

    def _write_record(self, levels_started: int) -> None:
        """Durably write the record with `levels_started`; FailedPreconditionError if it cannot be."""
        try:
            write_record(self.state_dir, WindowRecord(
                source=self.source, mode=self.mode, pid=os.getpid(), started=self._wall_start,
                max_window=self.max_window, freeze=self.freeze_hooks, thaw=self.thaw_hooks,
                levels=self.levels, levels_started=levels_started))
        except OSError as e:
            raise FailedPreconditionError(f"unable to write window record "
                                          f"'{record_path(self.state_dir, self.source)}': {e.strerror or e}") from None

    def _release(self) -> None:
        """Give up this window's claim on its source (another window of it may open)."""
        with _open_lock:
            _open_windows.discard(self)
            key = (os.path.abspath(self.state_dir), self.source)
            if _claims.get(key) is self:
                del _claims[key]

    def _thaw_leftover(self, path: str) -> None:
        """The record of a window no window of this process holds: a previous daemon died inside
        it and its thaw at start failed (the record was kept for this retry), or a thawed window
        could not remove it. Run that thaw now (this window's own thaw hooks if the record is
        unreadable); refuse to freeze while it fails."""
        rec = _recover_one(self.state_dir, path, self.mode, self.levels, self.env)
        if rec.ok:
            log.warning("source '%s': %s", self.source, rec.summary())
            self._tell_health(None)
            return
        log.error("source '%s': %s", self.source, rec.summary())
        err = FailedPreconditionError(
            f"the quiesce window of source '{self.source}' left open by a previous daemon still does not thaw "
            f"({rec.error}): {STILL_STOPPED}; no set of the source is taken until its thaw succeeds")
        self._tell_health(err.message)
        raise err

    def _tell_health(self, error: str | None) -> None:
        """Tell the health record (`cairn status`) whether a thaw left over by a previous daemon is pending."""
        try:
            leftover_thaw(self.state_dir, self.source, error)
        except Exception:  # noqa: BLE001 - a report must never stand in the way of a window
            log.exception("unable to record the leftover thaw of source '%s' in the health record", self.source)

    # -- deadline ---------------------------------------------------------------------------

    def check_deadline(self) -> None:
        """Raise DeadlineError once max_window has passed (or the watchdog fired)."""
        if self.expired or time.monotonic() >= self.deadline:
            raise self._deadline_error()

    def remaining(self) -> float:
        """Seconds left until the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def _deadline_error(self) -> DeadlineError:
        return DeadlineError(f"quiesce window of source '{self.source}' passed its max_window of "
                             f"{self.max_window:g}s; the set is aborted and thaw ran")

    def _expire(self) -> None:
        with self._state_lock:
            if self._closing:
                return
            self.expired = True
        log.warning("quiesce window of source '%s' passed max_window %gs: aborting and thawing",
                    self.source, self.max_window)
        self.cancel.set()
        if self.on_expire is not None:
            try:
                self.on_expire()
            except Exception:  # noqa: BLE001 - the thaw below must run whatever the callback does
                log.exception("on_expire callback of window '%s' failed", self.source)
        with self._hook_lock:  # a running freeze hook sees `cancel` and is killed first
            self._thaw()

    # -- hooks ------------------------------------------------------------------------------

    def _run_freeze(self) -> HookError | None:
        with self._hook_lock:
            for index, (freeze, _thaw) in enumerate(self.levels):
                if self.cancel.is_set():
                    return None
                if index + 1 > self.started_levels:
                    # durably, before this level freezes: a crash from now on thaws it too (if
                    # the write fails, this level never began: __enter__ thaws those that did)
                    self._write_record(index + 1)
                    with self._state_lock:
                        self.started_levels = index + 1
                for hook in freeze:
                    if self.cancel.is_set():
                        return None
                    res = hook.run(env=_hook_env(self.source, self.mode, "freeze", self.env), cancel=self.cancel)
                    self.freeze_results.append(res)
                    if res.ok or res.cancelled:
                        continue
                    msg = res.failure("freeze")
                    if hook.required:
                        log.error("source '%s': %s", self.source, msg)
                        return HookError(msg, res)
                    log.warning("source '%s': optional %s", self.source, msg)
                    self.errors.append(f"optional {msg}")
        return None

    def _close(self) -> None:
        with self._state_lock:
            self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._thaw()

    def _thaw(self) -> None:
        """Run every thaw hook once, then remove the record; later callers wait for the first."""
        with self._thaw_lock:
            if self._thawed:
                return
            self._t["thaw_start"] = time.monotonic()
            with self._state_lock:
                started = self.levels[:self.started_levels]
            for hook in (h for _freeze, thaw in reversed(started) for h in thaw):
                res = _run_thaw_hook(hook, self.source, self.mode, self.env)
                self.thaw_results.append(res)
                if not res.ok:
                    msg = res.failure("thaw")
                    log.error("source '%s': %s", self.source, msg)
                    self.errors.append(msg if hook.required else f"optional {msg}")
            self._t["thawed"] = time.monotonic()
            try:
                remove_record(self.state_dir, self.source)
            except OSError as e:
                self.errors.append(f"unable to remove window record of source '{self.source}': {e.strerror}")
            self._thawed = True
            self._release()

    def abandon(self, grace: float = KILL_GRACE + 1.0) -> None:
        """Thaw now from another thread (shutdown): cancel the body and its database work
        (`on_expire`), give a running freeze hook `grace` seconds to be killed, then thaw."""
        with self._state_lock:
            if self._thawed:
                return
        self.cancel.set()
        if self.on_expire is not None:
            try:
                self.on_expire()
            except Exception:  # noqa: BLE001 - the thaw below must run whatever the callback does
                log.exception("on_expire callback of window '%s' failed", self.source)
        got = self._hook_lock.acquire(timeout=grace)  # a freeze hook sees `cancel` and is killed
        try:
            self._thaw()
        finally:
            if got:
                self._hook_lock.release()

    @property
    def thawed(self) -> bool:
        return self._thawed

    def view(self) -> OpenWindow:
        """What `cairn status` shows of this window now (see `open_windows`)."""
        with self._state_lock:
            started, closing = self.started_levels, self._closing or self.expired
        if "thaw_start" in self._t or closing:
            state = "thawing"
        elif self._wall_frozen:
            state = "frozen"
        else:
            state = "freezing"
        return OpenWindow(source=self.source, mode=self.mode, state=state, opened=self._wall_start,
                          frozen=self._wall_frozen, deadline=self._wall_start + self.max_window,
                          max_window=self.max_window, levels=len(self.levels), levels_started=started)

    # -- report -----------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """Timings, hook results and errors of the window, JSON-ready for a set's `extra`."""
        t = self._t

        def span(a: str, b: str) -> float | None:
            return round(t[b] - t[a], 3) if a in t and b in t else None

        return {
            "mode": self.mode,
            "started": _iso(self._wall_start) if self._wall_start else None,
            "max_window": self.max_window,
            "expired": self.expired,
            "freeze_s": span("open", "frozen"),
            "held_s": span("frozen", "thaw_start"),
            "thaw_s": span("thaw_start", "thawed"),
            "window_s": span("open", "thawed"),
            "levels": len(self.levels),
            "levels_started": self.started_levels,
            "freeze": [r.to_dict() for r in self.freeze_results],
            "thaw": [r.to_dict() for r in self.thaw_results],
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class OpenWindow:
    """A window of this process that is open now: its freeze hooks run or ran, its thaw has not
    finished. Times are wall-clock seconds since the epoch."""

    source: str
    mode: str
    state: str  # "freezing" (freeze hooks running), "frozen" (held for the capture), "thawing"
    opened: float  # the first freeze hook began
    frozen: float  # every freeze hook had finished; 0 while they run
    deadline: float  # the watchdog thaws the window at this time whatever the capture does
    max_window: float
    levels: int
    levels_started: int


def open_windows(state_dir: str) -> dict[str, OpenWindow]:
    """The windows of this process open now in `state_dir`, by source (for `cairn status`)."""
    home = os.path.abspath(state_dir)
    with _open_lock:
        windows = [w for w in _open_windows if os.path.abspath(w.state_dir) == home]
    return {w.source: w.view() for w in windows if not w.thawed}


@dataclass(frozen=True)
class WindowRecovery:
    """The thaw a daemon ran for a window a previous run left open (at start, or retried when
    a set of the source opens its window)."""

    source: str
    mode: str
    started: float | None  # None: the record could not be read
    results: tuple[HookResult, ...]
    error: str | None = None  # why the thaw failed or could not run; None: thawed
    unreadable: str | None = None  # the record could not be read: why (the thaw hooks came from the config)
    kept: bool = False  # the record stays, so the thaw is retried (next set of the source, next start)
    thawed: float = 0.0  # wall-clock time the thaw finished; 0: it failed or nothing ran

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        """One line for the log: what was thawed, or why not."""
        since = f"left open since {_iso(self.started)}" if self.started else "left open"
        what = f"the {self.mode} window {since}" if self.mode != "?" else f"the window {since}"
        if self.unreadable and self.unreadable not in (self.error or ""):
            what += f" (its record is unreadable: {self.unreadable})"
        if self.ok:
            return f"thawed {what} ({len(self.results)} thaw hooks ran)"
        retry = ("; its record is kept: the thaw is retried before the next set of the source and at the next start"
                 if self.kept else "")
        return f"thaw of {what} failed: {self.error}{retry}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "mode": self.mode,
                "started": _iso(self.started) if self.started else None,
                "results": [r.to_dict() for r in self.results], "error": self.error,
                "unreadable": self.unreadable, "kept": self.kept, "ok": self.ok,
                "thawed": _iso(self.thawed) if self.thawed else None}


def _record_source(path: str) -> str:
    """The source a record file is named after (the name is its percent-encoded source)."""
    name = os.path.basename(path)
    return urllib.parse.unquote(name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name)


def _remove_path(path: str) -> None:
    """Durably remove a leftover record whose thaw ran; if it cannot be, it stays (logged), and its
    thaw runs again at the next retry (thaw hooks are idempotent)."""
    try:
        os.unlink(path)
        fsync_dir(os.path.dirname(path))
    except FileNotFoundError:
        return
    except OSError as e:
        log.error("unable to remove window record '%s' after its thaw: %s", path, e.strerror or e)


def _run_recovery_thaw(hooks: Sequence[HookSpec], source: str, mode: str,
                       env: dict[str, str] | None) -> tuple[tuple[HookResult, ...], str | None]:
    """Run every thaw hook in order; return the results and the failures of required hooks (None: none)."""
    results = []
    failed = []
    for spec in hooks:
        res = _run_thaw_hook(Hook.of(spec), source, mode, env)
        if not res.ok:
            msg = res.failure("thaw")
            if spec.required:
                log.error("source '%s': %s", source, msg)
                failed.append(msg)
            else:
                log.warning("source '%s': optional %s", source, msg)
        results.append(res)
    return tuple(results), "; ".join(failed) or None


def _recover_one(state_dir: str, path: str, mode: str | None,
                 levels: Sequence[tuple[Sequence[HookSpec], Sequence[HookSpec]]] | None,
                 env: dict[str, str] | None) -> WindowRecovery:
    """Thaw the window of one leftover record (see `recover_windows`); `mode`/`levels`: the
    configuration's hook stack of its source (None: not configured), used when the record is unreadable."""
    source = _record_source(path)
    try:
        rec = read_record(path)
    except CairnError as e:
        return _recover_unreadable(path, source, e.message, mode, levels, env)
    # info: the daemon logs the outcome (thawed, or why not) as the one warning of this window
    log.info("source '%s': quiesce window opened %s by pid %d was left open; running thaw",
                rec.source, _iso(rec.started), rec.pid)
    results, error = _run_recovery_thaw(rec.thaw_order(), rec.source, rec.mode, env)
    if error is None:
        _remove_path(path)  # thaw ran: the record may go
    return WindowRecovery(rec.source, rec.mode, rec.started, results, error=error, kept=error is not None,
                          thawed=time.time() if error is None else 0.0)


def _recover_unreadable(path: str, source: str, reason: str, mode: str | None,
                        levels: Sequence[tuple[Sequence[HookSpec], Sequence[HookSpec]]] | None,
                        env: dict[str, str] | None) -> WindowRecovery:
    """A record that cannot be read: its levels are unknown, so every thaw hook the configuration
    names for its source runs (last level first; thaw hooks are idempotent). Once thawed it is
    renamed to '<name>.corrupt' for the operator; while the thaw fails it stays, to be retried.
    A source no longer configured with hooks has nothing to run: renamed and reported."""
    log.error("%s", reason)
    corrupt = path + ".corrupt"
    thaw = [h for _freeze, t in reversed(levels or ()) for h in t]
    if levels is None or not thaw:
        error = (f"{reason}, and source '{source}' is not configured with quiesce hooks: no thaw ran"
                 if levels is None else None)
        _set_aside(path, corrupt)
        return WindowRecovery(source, mode or "?", None, (), error=error, unreadable=reason)
    log.warning("source '%s': running the %d thaw hooks its configuration names", source, len(thaw))
    results, error = _run_recovery_thaw(thaw, source, mode or "?", env)
    if error is None:
        _set_aside(path, corrupt)
    return WindowRecovery(source, mode or "?", None, results, error=error, unreadable=reason,
                          kept=error is not None, thawed=time.time() if error is None else 0.0)


def _set_aside(path: str, corrupt: str) -> None:
    try:
        os.replace(path, corrupt)
        log.warning("unreadable window record kept as '%s'", corrupt)
    except OSError as e:
        log.error("unable to rename window record '%s': %s", path, e.strerror or e)


def recover_windows(state_dir: str, *, env: dict[str, str] | None = None,
                    configured: Mapping[str, Any] | None = None) -> list[WindowRecovery]:
    """Thaw every window a previous daemon left open; call before anything else at start.

    First the database tools that daemon left running are killed and its dumps' work
    directories removed (tools.reap_leftovers), so no stale dump runs once the application is
    thawed. Each record's thaw hooks run (all of them, in order); the record is removed once
    they succeeded, and kept when a required one failed, so the thaw is retried (by the next set
    of the source, see `Window.__enter__`, and at the next start). `configured`: source name ->
    its QuiesceConfig; for a record that cannot be parsed, the thaw hooks of its source's
    configuration run instead (see `_recover_unreadable`).
    """
    for pid in reap_leftovers(state_dir):
        log.warning("killed database tool process %d left running by a previous daemon", pid)
    configured = configured or {}
    out: list[WindowRecovery] = []
    for path in list_record_paths(state_dir):
        q = configured.get(_record_source(path))
        out.append(_recover_one(state_dir, path, q.mode if q is not None else None,
                                levels_from_config(q) if q is not None else None, env))
    return out


def thaw_open_windows() -> list[str]:
    """Cancel and thaw every window still open in this process (see `Window.abandon`); return
    their sources. For shutdown: a set that did not return in time, or any window left open."""
    with _open_lock:
        windows = list(_open_windows)
    for w in windows:
        log.warning("source '%s': thawing the %s window still open at shutdown", w.source, w.mode)
        w.abandon()
    return [w.source for w in windows]
