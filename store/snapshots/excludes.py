"""Exclude rules: gitignore-style patterns matched against paths relative to a source root.

A directory is matched with a trailing '/', so "cache/" excludes directories named cache
(and everything under them) but not files named cache. An excluded directory is never
entered. The same matcher serves walks and the daemon's change events.
"""

from __future__ import annotations

import os

import pathspec


class Excluder:
    """Decides whether a relative path is excluded."""

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self.patterns = tuple(patterns)
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns) if self.patterns else None

    def __bool__(self) -> bool:
        return self._spec is not None

    def excluded(self, rel: bytes | str, is_dir: bool) -> bool:
        if self._spec is None or not rel:
            return False
        text = os.fsdecode(rel) if isinstance(rel, bytes) else rel
        return self._spec.match_file(text + "/" if is_dir else text)
