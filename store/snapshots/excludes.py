"""Exclude rules: gitignore-style patterns matched against paths relative to a source root.

Git's rules, as `git status` applies a .gitignore at the root: a path is excluded when one of
its ancestor directories is, or else when the last pattern that matches the path itself is not
a negation ("!"). A directory is matched with a trailing '/', so "cache/" excludes directories
named cache (and everything under them) but not files named cache. As in git, a negation cannot
bring back a path below an excluded directory, and it applies to the path it names, not to what
lies below: "!e" after "c.log/" keeps files named e, and does not keep e/c.log/. An excluded
directory is never entered. The same matcher serves walks and the daemon's change events (which
name paths whose ancestors nobody checked).

pathspec parses and compiles the patterns (the library the gitignore syntax is kept in); its
matcher is not used as is: it lets a pattern that names a directory match everything below it,
so "!e" would bring back e/c.log/ after "c.log/", which git keeps out. Here a match that ends at
a directory above the path does not count for the path itself.
"""

from __future__ import annotations

import functools
import os
import re

import pathspec

_DIR_VERDICTS = 4096  # directories whose verdict a matcher remembers (events revisit the same ones)


class Excluder:
    """Decides whether a relative path is excluded."""

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self.patterns = tuple(patterns)
        spec = pathspec.GitIgnoreSpec.from_lines(self.patterns) if self.patterns else None
        self._rules: list[tuple[re.Pattern[str], bool, bool]] = [
            (_itself(p.regex), "ps_d" in p.regex.groupindex, bool(p.include))
            for p in (spec.patterns if spec else ()) if p.include is not None]
        self._dir = functools.lru_cache(maxsize=_DIR_VERDICTS)(self._dir_excluded)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def excluded(self, rel: bytes | str, is_dir: bool) -> bool:
        if not self._rules or not rel:
            return False
        text = (os.fsdecode(rel) if isinstance(rel, bytes) else rel).strip("/")
        cut = text.rfind("/")
        if cut > 0 and self._dir(text[:cut]):
            return True
        return self._matches(text, is_dir)

    def _dir_excluded(self, text: str) -> bool:
        """Directory `text` is excluded: by itself, or by a directory above it."""
        cut = text.rfind("/")
        return (cut > 0 and self._dir(text[:cut])) or self._matches(text, True)

    def _matches(self, text: str, is_dir: bool) -> bool:
        """The verdict of the last pattern that matches path `text` itself. A pattern that can
        name directories sees a directory's path with a trailing '/'; one that names what lies
        below a prefix ("a/**") sees it without, so that it does not name "a" itself."""
        verdict = False
        for regex, names_dirs, include in self._rules:
            if regex.search(text + "/" if is_dir and names_dirs else text) is not None:
                verdict = include
        return verdict


def _itself(regex: re.Pattern[str]) -> re.Pattern[str]:
    """pathspec's regex of a pattern, matching a path only by itself. pathspec marks where a
    pattern matched a directory (its group "ps_d", the '/') and searches, so that the same
    match covers everything below; ending the match there (\\Z) leaves the directory itself.
    A pattern without that group ("a/**", "*") already means every path it matches."""
    if "ps_d" not in regex.groupindex:
        return regex
    return re.compile(f"(?:{regex.pattern})\\Z", regex.flags)
