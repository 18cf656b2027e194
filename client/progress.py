"""Progress of long client operations: a rich bar on a terminal, plain lines otherwise.

`ProgressView.update` may be called as often as events arrive; plain mode prints at most one
line every PLAIN_INTERVAL seconds (and on every phase change), quiet mode (--json) nothing.
Everything goes to stdout, which is where people look. A line never exceeds WIDTH columns:
the sizes, counts and ETA are kept and the title is shortened. Estimated totals are marked "~";
the ETA follows from the byte rate so far (the file rate when only the files have a total).
"""

from __future__ import annotations

import sys
import time
from typing import IO

from cairn.client.render import fmt_age, human_bytes

PLAIN_INTERVAL = 2.0
WIDTH = 80
BAR_WIDTH = 14


def progress_figures(files_done: int, files_total: int, bytes_done: int, bytes_total: int, estimated: bool,
                     eta: float | None, unit: str = "file") -> str:
    """'1234/~5678 files, 1.2 GiB/~4.0 GiB, ETA 3m' (totals and ETA only when known); `unit`
    names what the first count counts (a copy counts sets)."""
    mark = "~" if estimated else ""
    files = f"{files_done}/{mark}{files_total}" if files_total else str(files_done)
    files += f" {unit}" if (files_total or files_done) == 1 else f" {unit}s"
    size = f"{human_bytes(bytes_done)}/{mark}{human_bytes(bytes_total)}" if bytes_total else human_bytes(bytes_done)
    text = f"{files}, {size}"
    if eta is not None:
        text += f", ETA {fmt_age(eta)}"
    return text


def fit(label: str, figures: str, width: int = WIDTH) -> str:
    """'label: figures' within `width` columns, shortening the label (never the figures)."""
    line = f"{label}: {figures}"
    if len(line) <= width:
        return line
    room = width - len(figures) - 3
    return f"{label[:max(room, 0)]}…: {figures}"[-width:] if room > 0 else figures[:width]


def estimate_eta(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the rate so far; None before there is a rate or past the (estimated) total."""
    if done <= 0 or total <= done or elapsed <= 0.5:
        return None
    return (total - done) * elapsed / done


def choose_mode(json_output: bool, out: IO[str] | None = None) -> str:
    """'quiet' for --json, 'tty' when stdout is a terminal, else 'plain'."""
    if json_output:
        return "quiet"
    stream = out or sys.stdout
    return "tty" if stream.isatty() else "plain"


class ProgressView:
    """Shows one operation's progress; use as a context manager."""

    def __init__(self, mode: str, title: str, out: IO[str] | None = None, unit: str = "file") -> None:
        self.mode = mode
        self.title = title
        self.unit = unit
        self.out = out or sys.stdout
        self._phase = ""
        self._last_line = 0.0
        self._started = time.monotonic()
        self._rich = None
        self._task = None
        if mode == "tty":
            self._start_rich()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        # The label, a short bar and the figures; together within WIDTH columns.
        self._rich = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=BAR_WIDTH),
            TextColumn("{task.fields[figures]}"),
            console=Console(file=self.out),
            transient=True,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.title, total=None, figures="")

    def update(
        self,
        phase: str,
        files_done: int = 0,
        files_total: int = 0,
        bytes_done: int = 0,
        bytes_total: int = 0,
        current_path: bytes = b"",
        estimated: bool = False,
    ) -> None:
        if self.mode == "quiet":
            return
        now = time.monotonic()
        # The ETA follows the bytes when they have a total, else the files (an incremental
        # reads only what changed, but counts every file of the tree).
        eta = estimate_eta(now - self._started, bytes_done, bytes_total) if bytes_total else \
            estimate_eta(now - self._started, files_done, files_total)
        figures = progress_figures(files_done, files_total, bytes_done, bytes_total, estimated, eta, self.unit)
        label = f"{self.title}: {phase}" if phase and phase != self.title else self.title  # not "restore: restore"
        if self._rich is not None:
            room = WIDTH - BAR_WIDTH - len(figures) - 3  # rich puts one space between columns
            self._rich.update(
                self._task,
                description=label if len(label) <= room else label[: max(room - 1, 1)] + "…",
                total=bytes_total or files_total or None,
                completed=min(bytes_done, bytes_total) if bytes_total else
                min(files_done, files_total) if files_total else bytes_done,
                figures=figures,
            )
            return
        if phase == self._phase and now - self._last_line < PLAIN_INTERVAL:
            return
        self._phase, self._last_line = phase, now
        print(fit(label, figures), file=self.out, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
