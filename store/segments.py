"""What the store is told about an archive's segment names: it knows none of its own.

An archive (store/snapshots/wal.py) holds named segments per name space. Which names are valid, how
segments are ordered, and from which segment each database of a set needs the archive are the
engine's knowledge; the owner of the repository gives it as a `SegmentRules` object
(Repository.set_segment_rules). Without one, `PlainSegments` applies: any plain file name is
accepted and no segment has a place in an order, so WAL retention forgets nothing.

What always holds: `valid` never accepts a name that is not a plain object name (store/snapshots/wal.py
checks that too); a name whose `position` is None is never forgotten by retention.
"""

from __future__ import annotations

import re
from typing import Protocol

from .model import BackupSet

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # a safe object name, any engine's


def plain_name(name: str) -> bool:
    """The rule without an engine's: a plain file name (no '/', not '.' or '..')."""
    return bool(PLAIN_NAME.match(name))


class SegmentRules(Protocol):
    """An engine's rules for the names of its archive segments."""

    def valid(self, name: str) -> bool:
        """True when the archive may hold a file called `name`."""
        ...

    def position(self, name: str) -> int | None:
        """The place of `name` in the archive's order (later segments higher); None for a file
        outside the order, which retention always keeps."""
        ...

    def needs(self, s: BackupSet, namespace: str) -> list[int]:
        """The positions from which the databases of set `s` whose archive is `namespace` need
        it (one per database; the flat name space "" serves every database)."""
        ...

    def content_problem(self, name: str, head: bytes) -> str | None:
        """Why content starting with `head` cannot be the file `name` (another segment's filed
        under this name), or None; None too when the rules cannot tell."""
        ...


class PlainSegments:
    """No engine's rules: plain names, no order (retention forgets nothing), no needs."""

    def valid(self, name: str) -> bool:
        return plain_name(name)

    def position(self, name: str) -> int | None:
        return None

    def needs(self, s: BackupSet, namespace: str) -> list[int]:
        return []

    def content_problem(self, name: str, head: bytes) -> str | None:
        return None


class NameRule(PlainSegments):
    """Only a rule for valid names (`rule(name)`), still no order."""

    def __init__(self, rule) -> None:  # noqa: ANN001 - any callable str -> bool
        self.rule = rule

    def valid(self, name: str) -> bool:
        return plain_name(name) and bool(self.rule(name))
