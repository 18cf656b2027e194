"""Keeping the repository: verify, prune and scheduled retention, repair, and the repository's keys.

After a `repair index` that dropped index entries, the time it did so is kept in the state
directory (REPAIR_MARK) and given back to the repository at every start
(`restore_repair_mark`): a set taken before then is never the base of this host's next set,
which is a full, even across restarts (an incremental would carry unchanged files over by
reference to the dropped blobs).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from typing import Any

from cairn.daemon.databases.postgres import walarchive
from cairn.daemon.operations.part import ProgressFn, ServicePart
from cairn.daemon.scheduling import retention
from cairn.store.content.crypto import Secret
from cairn.store.errors import AbortedError, InvalidArgumentError
from cairn.store.maintenance.repair import IndexRepairReport, SetRepairReport, WalRepairReport
from cairn.store.maintenance.retention import keeps_nothing, untagged_groups
from cairn.store.model import CheckReport, PrunePolicy, PruneReport

log = logging.getLogger(__name__)

REPAIR_MARK = "index-dropped-at"  # in the state directory: when a repair last dropped index entries


def restore_repair_mark(repo: Any, state_dir: str) -> None:
    """Give the repository handle the time a repair on this host last dropped index entries."""
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(state_dir, REPAIR_MARK), encoding="ascii") as f:
            when = float(f.read().strip())
        repo.index_dropped_at = max(when, repo.index_dropped_at or 0.0)


def _save_repair_mark(when: float, state_dir: str) -> None:
    path = os.path.join(state_dir, REPAIR_MARK)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{when}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MaintenancePart(ServicePart):
    """Verify, prune, retention and keys."""

    def verify(self, set_ref: str, source: str, read_data: bool, progress: ProgressFn | None,
               host: str = "", subset: str = "") -> CheckReport:
        """Check the repository (or one set; or with `subset`, "n/m" or "P%", read only those
        packs). A `progress` that raises AbortedError stops it."""
        self.repo.require_full_key("to verify (it reads every set and tree)", "cairn verify")  # before any host
        self._require_known_host(host)  # also without a set: a misspelt host must not check everything
        chosen = self.resolve(set_ref, source, host) if set_ref else None
        if self._metrics is not None:
            self._metrics.record_verify_start()
        outcome = "failed"
        try:
            report = self.repo.check(read_data=read_data, set_ref=chosen.id if chosen else None,
                                     progress=progress, subset=subset)
            # WAL continuity per timeline from each database set's start onward (walarchive)
            gaps = walarchive.continuity_problems(self.repo, [chosen] if chosen else self.repo.list_sets())
            report = replace(report, errors=report.errors + tuple(gaps)) if gaps else report
            outcome = "ok" if report.ok else "damaged"
            return report
        except AbortedError as exc:
            outcome = "cancelled"
            after = "; it changes nothing (it only reads): run it again once cairnd runs" \
                if self.repo.locks.stopping.is_set() else ""  # the daemon's stop ended it
            log.info("verify stopped: %s%s", exc.message, after)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.record_verify(outcome)

    def prune(self, policy: PrunePolicy, dry_run: bool, source: str = "", wal_keep: str = "") -> PruneReport:
        """Forget sets by `policy` (no rule: only free unreferenced data). WAL retention uses
        `wal_keep` if given, else the configured [repository] wal_keep."""
        if not dry_run:
            self._require_writable("pruning")
        self.repo.require_full_key("to prune", "cairn prune")  # before any host is looked at
        if source:
            self._require_known_source(source)
        if keeps_nothing(policy):
            raise InvalidArgumentError("every --keep rule given is 0: the policy would forget every set (restic "
                                       "reads it as no policy); forget sets by name with --forget ID")
        self._require_known_host(policy.host)
        if policy.keep_tags or any(p.keep_tags for p in (policy.sources or {}).values()):
            missed = untagged_groups([s for s in self.repo.list_sets() if not source or s.source == source], policy)
            if missed:
                raise _untagged_refusal(policy, missed)
        window = (retention.parse_option_duration("--wal-keep", wal_keep) if wal_keep
                  else self._config.repository.wal_keep)
        return self.repo.prune(replace(policy, wal_keep=window), dry_run=dry_run, source=source or None)

    def repair_index(self, read_data: bool, dry_run: bool, progress: ProgressFn | None = None) -> IndexRepairReport:
        """Rebuild the index from the packs that exist (store/maintenance/repair.py); the
        repository reloads its index afterwards, so the next backup stores what was dropped."""
        if not dry_run:
            self._require_writable("repairing the index")
            self._require_state_room("repair the index")  # the time it dropped entries is kept there
        report = self.repo.repair_index(read_data=read_data, dry_run=dry_run, progress=progress)
        if not dry_run and self.repo.index_dropped_at is not None:
            _save_repair_mark(self.repo.index_dropped_at, self._config.daemon.state_dir)
        if not dry_run:
            log.info("index repaired: %d blobs indexed, %d entries of missing packs and %d damaged blobs "
                     "dropped, %d blobs of unindexed packs added, %d index files replaced", report.blobs_indexed,
                     report.entries_missing, report.entries_damaged, report.blobs_added,
                     report.index_files_replaced)
        return report

    def repair_sets(self, dry_run: bool) -> SetRepairReport:
        """Remove the set objects that cannot be read (or put back the local cache's good copy);
        readable sets are never touched."""
        if not dry_run:
            self._require_writable("repairing sets")
        report = self.repo.repair_sets(dry_run=dry_run)
        if not dry_run:
            for name, why in report.removed:
                log.warning("removed unreadable set object %s: %s", name, why)
            for name, why in report.restored:
                log.warning("put back set object %s from the local cache: %s", name, why)
        return report

    def repair_wal(self, dry_run: bool) -> WalRepairReport:
        """Remove the WAL catalog entries that cannot be read, and those whose data is lost for good."""
        if not dry_run:
            self._require_writable("repairing the WAL catalog")
        report = self.repo.repair_wal(dry_run=dry_run)
        if not dry_run:
            for name, why in report.removed:
                log.warning("removed WAL catalog entry %s: %s", name, why)
        return report

    def unlock(self, host: str = "", everything: bool = False) -> tuple[list[dict], list[dict]]:
        """Remove stale repository locks; with `host` every lock of that host, with `everything`
        every lock but this daemon's own. Returns (removed, kept): each lock's document with its
        "name" and, for people, its "description"."""
        self._require_writable("removing locks")
        self.repo.require_full_key("to remove other processes' locks", "cairn unlock")  # before any host
        self._require_known_host(host)
        removed, kept = self.repo.unlock(host=host or None, everything=everything)
        removed, kept = ([{**d, "description": self.repo.locks.describe(d)} for d in docs] for docs in (removed, kept))
        for doc in removed:
            log.warning("removed repository lock %s: %s", doc["name"], doc["description"])
        return removed, kept

    def retention_policy(self) -> PrunePolicy:
        """What scheduled retention applies: each source's `keep`, only to this host's sets."""
        config = self._config
        return PrunePolicy(host=self._hostname, sources={s.name: s.keep for s in config.sources if s.keep},
                           wal_keep=config.repository.wal_keep)

    def run_retention(self) -> PruneReport:
        """Scheduled retention + garbage collection (the RetentionRunner's job)."""
        self._require_writable("retention")
        return self.repo.prune(self.retention_policy())

    def list_keys(self) -> list[dict[str, Any]]:
        """Every key object of the encrypted repository, the one in use marked `current`."""
        return [{"id": key_id, "type": info.type if info else "", "created": info.created if info else 0.0,
                 "kdf": info.kdf if info else "", "current": key_id == self.repo.key_id, "problem": problem,
                 "access": info.access if info else ""}
                for info, key_id, problem in self.repo.list_keys()]

    def add_key(self, secret: Secret, write_only: bool = False) -> str:
        self._require_writable("adding a key")
        key_id = self.repo.add_key(secret, write_only=write_only)
        log.info("repository key %s added (%s%s)", key_id, secret.kind, ", write-only" if write_only else "")
        return key_id

    def remove_key(self, ref: str) -> str:
        self._require_writable("removing a key")
        key_id = self.repo.remove_key(ref)
        log.info("repository key %s removed", key_id)
        return key_id

    def copy(self, to: str, secret: Secret, refs: list[str], source: str = "",
             progress: ProgressFn | None = None, host: str = "") -> Any:
        """Copy sets (and the WAL they need) into the repository at `to` (daemon/operations/copying.py)."""
        from cairn.daemon.operations import copying

        self._require_known_host(host)
        report = copying.run_copy(self.repo, self._config.repository, to, secret, refs, source, progress,
                                  host=host, own_host=self._hostname, own_machine=self._machine_id)
        log.info("copied %d sets to %s (%d there already)", len(report.copied), to, len(report.present))
        return report


def _untagged_refusal(policy: PrunePolicy, missed: list[tuple[str, str, int]]) -> InvalidArgumentError:
    """The one-line refusal of a policy whose only rule, keeping tags, keeps no set of the
    groups `missed` ((host, source, sets) from retention.untagged_groups): a mistyped tag would
    otherwise forget every set there."""
    tags = " or ".join(repr(t) for t in sorted({t for p in (policy, *(policy.sources or {}).values())
                                                 for t in p.keep_tags}))
    host, name, count = missed[0]
    which = (f"the set of source '{name}' on host '{host}'" if count == 1
             else f"any of the {count} sets of source '{name}' on host '{host}'")
    more = len(missed) - 1
    also = f" (nor in {more} more group{'' if more == 1 else 's'})" if more else ""
    return InvalidArgumentError(
        f"tag {tags}, the policy's only rule there, is not on {which}{also}: it would forget them all",
        hint="check the tag (cairn sets --json lists each set's tags), add a count such as --keep-last 1, "
             "or forget sets by name with --forget ID")
