"""Skip-if-unchanged: a scheduled incremental or differential set with nothing to record is not
taken (`daemon.skip_unchanged`, default true), instead of a new set identical to the last one.

A set is skipped only when the change journal can vouch for it: the source is watched, the
journal is complete (no rescan pending, which includes every restart of the daemon), no change
is pending since the last set (a file with several hard links whose stat moved since the last
set counts: a name outside the source changes it without any event), and the source captures
no database (a database changes without file events). A differential is skipped only when the
newest set is the full or a differential (an incremental after them recorded changes a new
differential would hold). Full sets and sets asked for by a person or by the RPO are never
skipped. Nor is a set whose source has aux_paths outside its watched paths (no event tells of
their changes), or one whose newest set is not the one the journal recorded last (that one was
forgotten, or another process took a set: what changed since the newest is not known).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from cairn.daemon.changes.tracker import unwatched_aux

log = logging.getLogger(__name__)

SKIPPABLE_LEVELS = ("incremental", "differential")


def unchanged_since(config: Any, tracker: Any, repo: Any, source: str, level: str) -> str | None:
    """The id of the newest set of `source` when a `level` set now would record nothing new, else None."""
    if not getattr(config.daemon, "skip_unchanged", True) or level not in SKIPPABLE_LEVELS or tracker is None:
        return None
    src = next((s for s in config.sources if s.name == source), None)
    if src is None or not src.watch or src.database:
        return None
    try:
        state = tracker.status(source)
    except Exception as exc:  # the journal cannot vouch: take the set
        log.warning("unable to read the change journal of source '%s': %s", source, exc)
        return None
    if state.state != "complete" or state.pending_paths or state.oldest_unprotected_age is not None:
        return None
    if unwatched_aux(src):  # captured by every set, but no event tells of their changes
        return None
    host = getattr(config.daemon, "host", None) or socket.gethostname()
    sets = [s for s in repo.list_sets(source) if s.hostname == host]  # this host's: others share the name
    if not sets:
        return None
    newest = sets[-1]
    if newest.id != state.last_set:
        # "nothing pending" counts from the set the journal recorded last; that set was forgotten
        # (prune --forget) or is not the newest: what changed since the newest is not known
        return None
    if level == "differential" and newest.level == "incremental":
        return None
    return newest.id
