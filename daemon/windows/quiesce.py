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
  On enter it durably writes the window record (daemon/windows/records.py), starts a watchdog timer
  for max_window and runs the freeze hooks in order (the record is rewritten before each
  further level begins, so a crash thaws exactly the levels that began). A required freeze hook that fails raises
  `HookError` (message holds the hook's stderr) after the thaw hooks ran; an optional one is
  only recorded. On exit the thaw hooks ALWAYS run — after the body, on exceptions, and when
  the watchdog fires at the deadline: it sets `cancel` (a backup in progress aborts), calls the
  `on_expire` callback (e.g. PgConnection.cancel), and thaws at once without waiting for the
  body. Exiting a window whose deadline passed raises `DeadlineError` (also when the body ended
  with an AbortedError caused by the cancel). Thaw runs exactly once, every thaw hook runs even
  if an earlier one failed, and the record is removed only after thaw. A failing thaw hook is
  recorded in `errors` (the captured data is still consistent); it never hides the body's error.
- `recover_windows(state_dir)` runs first at daemon start: it kills the database tools a
  previous daemon left running (daemon/databases/tools.py: recorded groups, leftover work
  directories removed), then for every leftover record (the daemon died inside a window) it
  runs the recorded thaw hooks of every level that began to freeze (last level first) and
  removes the record.
- `thaw_open_windows()` is the daemon's last resort at shutdown when a set did not return in
  time: every window still open in this process is cancelled (`on_expire`: its database tools
  are killed) and thawed at once, without waiting for its body (thaw hooks are idempotent).
- `run_after(argvs, ...)` runs a window's on_success / on_failure hooks (optional: a failure
  is logged and returned, never raised).

What always holds: while a window record exists, thaw may not have run; after `__exit__`
returns or raises, thaw has completed and the record is gone.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from cairn.daemon.databases.tools import EXIT_NOT_RUN, guarded_argv, reap_leftovers
from cairn.daemon.windows.records import (
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

log = logging.getLogger("cairn.quiesce")

MODES = ("cold", "hot")
TAIL_BYTES = 4096
KILL_GRACE = 2.0

_open_windows: set[Window] = set()  # windows entered and not yet thawed, in this process
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
        """One-line description of the failure: "freeze hook 'x' failed with exit code 1: <stderr>"."""
        what = f"{phase} hook '{self.command}'"
        if self.timed_out:
            reason = f"{what} timed out after {self.duration:.1f}s and was killed"
        elif self.cancelled:
            reason = f"{what} was killed when the window was cancelled"
        elif self.exit_code is None:
            reason = f"{what} could not be started"
        elif self.exit_code < 0:
            reason = f"{what} was killed by signal {-self.exit_code}"
        else:
            reason = f"{what} failed with exit code {self.exit_code}"
        detail = _one_line_tail(self.stderr_tail) or _one_line_tail(self.stdout_tail)
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


def _one_line_tail(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    joined = " | ".join(lines[-3:])
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def _read_tail(f: Any) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_BYTES))
    return f.read().decode("utf-8", "replace")


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
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                # under the tools' guard: a hook never outlives the daemon (a freeze hook left
                # running by a daemon killed with -9 would otherwise finish after the next start's thaw)
                proc = subprocess.Popen(guarded_argv(list(self.argv)), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, start_new_session=True, env=env, cwd=cwd, close_fds=True)
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
            err_tail = _read_tail(err)
            if code == EXIT_NOT_RUN and err_tail.startswith("unable to run "):
                code = None  # the guard could not start it (no such program, not executable)
            return HookResult(self.argv, code, _read_tail(out), err_tail,
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
              env: dict[str, str] | None = None) -> list[HookResult]:
    """Run on_success / on_failure hooks in order; failures are logged, never raised."""
    results = []
    for argv in argvs:
        res = Hook(tuple(argv), float(timeout), False).run(env=_hook_env(source, mode, phase, env))
        if not res.ok:
            log.warning("source '%s': optional %s", source, res.failure(phase))
        results.append(res)
    return results


def _hook_env(source: str, mode: str, phase: str, base: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({"CAIRN_SOURCE": source, "CAIRN_WINDOW_MODE": mode, "CAIRN_HOOK_PHASE": phase})
    return env


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
        self._t: dict[str, float] = {}

    @classmethod
    def from_config(cls, state_dir: str, source: str, quiesce: Any, **kwargs: Any) -> Window:
        """A Window for a SourceConfig's QuiesceConfig (mode, freeze, thaw, timeout, max_window, required)."""
        return cls(state_dir, source, quiesce.mode, levels=levels_from_config(quiesce),
                   max_window=quiesce.max_window, **kwargs)

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> Window:
        if os.path.exists(record_path(self.state_dir, self.source)):
            raise BusyError(f"a quiesce window of source '{self.source}' is already open "
                            f"(record '{record_path(self.state_dir, self.source)}')")
        self._wall_start = time.time()
        self._t["open"] = time.monotonic()
        self.deadline = self._t["open"] + self.max_window
        self.started_levels = 1 if self.levels else 0  # the first level freezes right away
        self._write_record()
        self._timer = threading.Timer(self.max_window, self._expire)
        self._timer.daemon = True
        self._timer.name = f"window-{self.source}"
        self._timer.start()
        with _open_lock:
            _open_windows.add(self)
        failure = self._run_freeze()
        self._t["frozen"] = time.monotonic()
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

    def _write_record(self) -> None:
        write_record(self.state_dir, WindowRecord(
            source=self.source, mode=self.mode, pid=os.getpid(), started=self._wall_start,
            max_window=self.max_window, freeze=self.freeze_hooks, thaw=self.thaw_hooks,
            levels=self.levels, levels_started=self.started_levels))

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
                    # durably, before this level freezes: a crash from now on thaws it too
                    with self._state_lock:
                        self.started_levels = index + 1
                    self._write_record()
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
                res = hook.run(env=_hook_env(self.source, self.mode, "thaw", self.env))
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
            with _open_lock:
                _open_windows.discard(self)

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
class WindowRecovery:
    """The thaw a daemon ran at start for a window its previous run left open."""

    source: str
    mode: str
    started: float | None
    results: tuple[HookResult, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "mode": self.mode,
                "started": _iso(self.started) if self.started else None,
                "results": [r.to_dict() for r in self.results], "error": self.error, "ok": self.ok}


def recover_windows(state_dir: str, *, env: dict[str, str] | None = None) -> list[WindowRecovery]:
    """Thaw every window a previous daemon left open; call before anything else at start.

    First the database tools that daemon left running are killed and its dumps' work
    directories removed (tools.reap_leftovers), so no stale dump runs once the application is
    thawed. Each record's thaw hooks run (all of them, in order), then the record is removed. A record
    that cannot be parsed is renamed to '<name>.corrupt' (kept for the operator) and reported.
    """
    for pid in reap_leftovers(state_dir):
        log.warning("killed database tool process %d left running by a previous daemon", pid)
    out: list[WindowRecovery] = []
    for path in list_record_paths(state_dir):
        try:
            rec = read_record(path)
        except CairnError as e:
            log.error("%s", e.message)
            os.replace(path, path + ".corrupt")
            out.append(WindowRecovery(os.path.basename(path), "?", None, (), error=e.message))
            continue
        log.warning("source '%s': quiesce window opened %s by pid %d was left open; running thaw",
                    rec.source, _iso(rec.started), rec.pid)
        results = []
        for spec in rec.thaw_order():
            res = Hook.of(spec).run(env=_hook_env(rec.source, rec.mode, "thaw", env))
            if not res.ok:
                log.error("source '%s': %s", rec.source, res.failure("thaw"))
            results.append(res)
        remove_record(state_dir, rec.source)
        failed = [r.failure("thaw") for r in results if not r.ok]
        out.append(WindowRecovery(rec.source, rec.mode, rec.started, tuple(results),
                                  error="; ".join(failed) or None))
    return out


def thaw_open_windows() -> list[str]:
    """Cancel and thaw every window still open in this process (see `Window.abandon`); return
    their sources. For shutdown, when a set did not return within its time."""
    with _open_lock:
        windows = list(_open_windows)
    for w in windows:
        log.warning("source '%s': thawing the %s window of a set that did not stop in time", w.source, w.mode)
        w.abandon()
    return [w.source for w in windows]
