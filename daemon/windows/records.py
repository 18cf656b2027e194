"""Durable records of open quiesce windows: `<state_dir>/windows/<source>.json`.

A record is written (temp file, fsync, rename, fsync of the directory) before a window's first
freeze hook runs and removed after its thaw hooks ran. It carries the hook stack itself (the
`levels`, each with its freeze and thaw hooks) and how many levels have begun to freeze
(`levels_started`, rewritten durably before each further level freezes), so a daemon that died inside
a window thaws, at its next start, every level whose freeze ran — in reverse order — even if
the configuration changed meanwhile. A record that exists therefore always means "thaw may not
have run". Version 1 records (one flat thaw list) are still read: their thaw hooks all run.

    write_record(state_dir, WindowRecord(...)); read_records(state_dir); remove_record(state_dir, source)
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import CorruptionError
from cairn.fsio.durable import fsync_dir, write_atomic

RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)
SUFFIX = ".json"


@dataclass(frozen=True)
class HookSpec:
    """A hook as recorded: its argv, timeout in seconds and whether failure fails the set."""

    argv: tuple[str, ...]
    timeout: float = 60.0
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "timeout": self.timeout, "required": self.required}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookSpec:
        argv = d.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("hook argv must be a non-empty list of strings")
        return cls(tuple(argv), float(d.get("timeout", 60.0)), bool(d.get("required", True)))


@dataclass(frozen=True)
class WindowRecord:
    """What a window leaves on disk while it is open."""

    source: str
    mode: str
    pid: int
    started: float  # wall-clock seconds since the epoch
    max_window: float
    thaw: tuple[HookSpec, ...] = ()
    freeze: tuple[HookSpec, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    levels: tuple[tuple[tuple[HookSpec, ...], tuple[HookSpec, ...]], ...] = ()  # (freeze, thaw) per level
    levels_started: int = 0  # levels whose freeze has begun

    def thaw_order(self) -> list[HookSpec]:
        """The thaw hooks a recovery runs: those of every started level, the last level first."""
        if not self.levels:
            return list(self.thaw)
        out: list[HookSpec] = []
        for _freeze, thaw in reversed(self.levels[:self.levels_started]):
            out.extend(thaw)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "source": self.source,
            "mode": self.mode,
            "pid": self.pid,
            "started": self.started,
            "max_window": self.max_window,
            "freeze": [h.to_dict() for h in self.freeze],
            "thaw": [h.to_dict() for h in self.thaw],
            "extra": self.extra,
            "levels": [{"freeze": [h.to_dict() for h in f], "thaw": [h.to_dict() for h in t]}
                       for f, t in self.levels],
            "levels_started": self.levels_started,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowRecord:
        if d.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"unsupported window record version {d.get('version')!r}")
        return cls(
            source=str(d["source"]),
            mode=str(d["mode"]),
            pid=int(d["pid"]),
            started=float(d["started"]),
            max_window=float(d["max_window"]),
            freeze=tuple(HookSpec.from_dict(h) for h in d.get("freeze", [])),
            thaw=tuple(HookSpec.from_dict(h) for h in d.get("thaw", [])),
            extra=dict(d.get("extra", {})),
            levels=tuple((tuple(HookSpec.from_dict(h) for h in lv.get("freeze", [])),
                          tuple(HookSpec.from_dict(h) for h in lv.get("thaw", [])))
                         for lv in d.get("levels", [])),
            levels_started=int(d.get("levels_started", 0)),
        )


def windows_dir(state_dir: str) -> str:
    """The directory holding window records."""
    return os.path.join(state_dir, "windows")


def record_path(state_dir: str, source: str) -> str:
    """File name of a source's window record (the name is percent-encoded to be a safe file name)."""
    return os.path.join(windows_dir(state_dir), urllib.parse.quote(source, safe="") + SUFFIX)


def write_record(state_dir: str, record: WindowRecord) -> str:
    """Durably write `record` and return its path."""
    d = windows_dir(state_dir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = record_path(state_dir, record.source)
    write_atomic(path, json.dumps(record.to_dict(), indent=1).encode())
    return path


def remove_record(state_dir: str, source: str) -> None:
    """Durably remove a source's window record (no error when it is already gone)."""
    try:
        os.unlink(record_path(state_dir, source))
    except FileNotFoundError:
        return
    fsync_dir(windows_dir(state_dir))


def read_record(path: str) -> WindowRecord:
    """Parse one record file; CorruptionError names the file when it cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            return WindowRecord.from_dict(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptionError(f"unable to read window record '{path}': {e}") from None


def list_record_paths(state_dir: str) -> list[str]:
    """Paths of all window records, sorted; leftover temp files are removed on the way."""
    d = windows_dir(state_dir)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(d, name)
        if name.endswith(".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        elif name.endswith(SUFFIX):
            out.append(path)
    return out
