"""Progress of long client operations: a rich bar on a terminal, plain lines otherwise.

`ProgressView.update` may be called as often as events arrive; plain mode prints at most one
line every PLAIN_INTERVAL seconds (and on every phase change), quiet mode (--json) nothing.
Everything goes to stdout, which is where people look.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from cairn.client.render import human_bytes, show_path

PLAIN_INTERVAL = 2.0


def choose_mode(json_output: bool, out: IO[str] | None = None) -> str:
    """'quiet' for --json, 'tty' when stdout is a terminal, else 'plain'."""
    if json_output:
        return "quiet"
    stream = out or sys.stdout
    return "tty" if stream.isatty() else "plain"


class ProgressView:
    """Shows one operation's progress; use as a context manager."""

    def __init__(self, mode: str, title: str, out: IO[str] | None = None) -> None:
        self.mode = mode
        self.title = title
        self.out = out or sys.stdout
        self._phase = ""
        self._last_line = 0.0
        self._rich = None
        self._task = None
        if mode == "tty":
            self._start_rich()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._rich = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]} files"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[path]}", style="dim"),
            console=Console(file=self.out),
            transient=True,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.title, total=None, files="0", path="")

    def update(
        self,
        phase: str,
        files_done: int = 0,
        files_total: int = 0,
        bytes_done: int = 0,
        bytes_total: int = 0,
        current_path: bytes = b"",
    ) -> None:
        if self.mode == "quiet":
            return
        files = f"{files_done}/{files_total}" if files_total else str(files_done)
        if self._rich is not None:
            path = show_path(current_path)
            self._rich.update(
                self._task,
                description=f"{self.title}: {phase}" if phase else self.title,
                total=bytes_total or None,
                completed=bytes_done,
                files=files,
                path=path[-40:],
            )
            return
        now = time.monotonic()
        if phase == self._phase and now - self._last_line < PLAIN_INTERVAL:
            return
        self._phase, self._last_line = phase, now
        size = f"{human_bytes(bytes_done)}/{human_bytes(bytes_total)}" if bytes_total else human_bytes(bytes_done)
        label = f"{self.title}: {phase}" if phase else self.title
        print(f"{label}: {files} files, {size}", file=self.out, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
