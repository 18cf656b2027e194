"""The repository facade: open/init, backup, browse, diff, restore, check, prune, WAL.

What always holds (see docs/format.md): objects are written packs -> index -> set, so a set
that is listed is complete; a failed or cancelled operation leaves only unreferenced data,
which check reports as warnings and prune removes. One Repository object may be used from many
threads: reads run concurrently; each backup runs its own write session. The in-memory index
is refreshed from the durable index files when a session starts and before it commits, and
reloaded by check and after every prune (also a failed one); what sessions publish while a
reload runs is kept, so a reload never hides blobs of a session in progress. A reload that no
longer names a pack it named before (a collection's work, or an index file deleted, with or
without its packs) ends what the handle remembers as wholly indexed (`indexed_trees`), so
backups look again at what they carry.


A repository of format 2 is encrypted (store/content/crypto.py): it opens only with a Secret that
unwraps one of its key objects; then `backend` is a SealedBackend (small objects sealed),
blobs are sealed by the writer, ids are keyed and `config.chunker.seed` is the secret seed
(in memory only). Version 1 repositories open and work as before, with no secret.
With the index, the garbage collector's markers are read: a write session never
deduplicates against a blob whose pack is marked for deletion, nor against one whose pack the
index names but storage lacked when the session started (`unstored`, one listing of the packs
per backup: what the set needs of such a pack is read from the source and stored again), and refuses to commit a set
that relies on a pack that a collector may delete (see store/maintenance/prune.py and docs/format.md for
the argument).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from cairn.fsio.names import shown
from cairn.fsio.records import Data, LaneData, LaneGauge, Record
from cairn.fsio.writer import TreeWriter

from .content import crypto
from .content.blobs import BlobReader, BlobWriter
from .content.index import Index, IndexBuilder, Location, decode_index, encode_index, read_index
from .content.locks import Locks
from .content.packs import CODEC_ZSTD_REF, TYPE_DATA, PackEntry
from .content.repoconfig import ENCRYPTED_VERSION, PLAINTEXT_VERSION, RepoConfig
from .errors import (
    AbortedError,
    AlreadyExistsError,
    BackendError,
    CairnError,
    CorruptionError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotARepositoryError,
    NotFoundError,
    RepositoryError,
    UnavailableError,
    UnindexedError,
    WrongKeyError,
    short,
)
from .maintenance import check as checkmod
from .maintenance import prune as prunemod
from .maintenance import repair as repairmod
from .maintenance import retention
from .memory import limit_arenas
from .model import (
    BackupRequest,
    BackupSet,
    CheckReport,
    Progress,
    PrunePolicy,
    PruneReport,
    RestoreStats,
    SetDiff,
    TreeEntry,
    check_level,
)
from .segments import NameRule, PlainSegments, SegmentRules
from .snapshots import wal as walmod
from .snapshots import writeonly as wonly
from .snapshots.indexed import IndexedTrees
from .snapshots.restore import RestoreFilter, StreamBuilder, find_entry, read_chunks, set_chunks
from .snapshots.session import BackupSession, root_entry
from .snapshots.sets import decode_set, of_machine, resolve
from .snapshots.trees import Entry, StreamedTree, tree_entries
from .storage.backend import Backend, LocalBackend
from .storage.cache import DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES
from .storage.cache import ObjectCache

ProgressFn = Callable[[Progress], None]
T = TypeVar("T")
TREE_CACHE = 4096
# The plaintext of the trees a handle keeps decoded, at most (decoded they take about three
# times that). Without it the last TREE_CACHE trees of up to trees.STREAM_FROM each made a
# long-running daemon's resident size climb with every set, towards gigabytes.
TREE_CACHE_BYTES = 16 << 20
# Threads reading (decrypting, decompressing, hashing) a restore's chunks: one per core. Each
# extra thread only adds hand-overs of the interpreter's lock: with cores + 1 of them (and 4
# writers), a daemon-written restore of the standard corpus (7,734 files) made 160,000 context
# switches and took 14% longer than now (docs/restore.md).
WORKERS = max(2, os.cpu_count() or 2)
STAT_WORKERS = 16  # size checks of a session's packs at commit (round trips, not CPU)
READ_AHEAD = 8  # index files or set objects read at once when a handle loads many
BACKUP_WORKERS = max(2, os.cpu_count() or 2)  # file readers; big files also compress on blobs' pool
PRUNE_LOCK_WAIT = 120.0  # seconds prune waits for another prune
LOAD_TRIES = 5  # listings of the index files while files vanish during a load
CONTESTED_STATS = 64  # packs a full load stats one by one for blobs other packs hold too; more: one listing
LIST_PACKS_FROM = 256  # more packs than this to check at commit: one listing, not a request each
_SET_PREFIX = re.compile(r"^unable to read set '[0-9a-f]+(\.\.)?': ")
BASE_WAIT = 120.0  # seconds a commit whose base is not listed waits for a running collector to put it back
BASE_POLL = 0.25
RESCUE_TRIES = 3  # rounds of copying blobs out of marked packs before a commit gives up


def in_use_reason(holder: str) -> str:
    """Why prune keeps a set a lock names: a running backup builds on it, or it is being read."""
    return f"base of a running backup ({holder})" if holder.startswith("backup") else f"being read ({holder})"


class Repository:
    """A Cairn repository on a Backend."""

    def __init__(self, backend: Backend, config: RepoConfig, *, read_only: bool = False,
                 key: crypto.RepoKey | crypto.WriteOnlyKey | None = None, key_id: str = "",
                 host_cache: wonly.HostCache | None = None, cache: ObjectCache | None = None) -> None:
        limit_arenas()
        self.cache = cache  # local copies of index files, set objects and trees (store/storage/cache.py)
        self.key = key
        self.key_id = key_id  # the key object this handle was opened with (format 2)
        self.raw_backend = backend  # as given: key objects live here, unsealed
        if isinstance(key, crypto.RepoKey):  # packs sealed to the public key: their header, read on demand
            raw = backend
            key.pack_header_reader = lambda pack: raw.get_range("packs", pack, 0, crypto.PK_HEADER_LEN)
        if key is not None:
            backend = crypto.SealedBackend(backend, key)
            config = dataclasses.replace(config, chunker=dataclasses.replace(config.chunker, seed=key.chunker_seed))
        if self.write_only:  # store/snapshots/writeonly.py: its own sets and trees from its cache, no deletes
            backend = wonly.GuardedBackend(backend, host_cache or wonly.HostCache())
            backend.after_set = self._own_set_stored
        self.backend = backend
        self.config = config
        self.read_only = read_only
        self.index = Index()
        self.index_problems: list[str] = []
        self._index_files: set[str] = set()  # index files whose entries self.index holds
        self._index_mutex = threading.Lock()  # swapping self.index vs publishing into it
        self._load_mutex = threading.Lock()  # one (re)load at a time
        self._recording: list[dict[str, list[PackEntry]]] | None = None  # published during a load
        self.markers: list[prunemod.Marker] = []  # gc markers as read with the index
        self.pending: frozenset[str] = frozenset()  # packs they mark: never deduplicated against
        # packs the index names that storage was found to lack when a backup started (deleted by
        # hand, lost by the store, named by an older index file put back): never deduplicated
        # against, nor relied on, nor read for a base's listing; see find_unstored
        self.unstored: frozenset[str] = frozenset()
        self.gc_grace: float | None = None  # prune's grace period (None: prune.GRACE)
        self.pack_sizes: dict[str, int] = {}  # sizes prune has seen; a pack's name fixes its content
        self.uploads: int | None = None  # pack uploads in flight per write session (None: the backend's default)
        self.reader = BlobReader(backend, self.index, key)
        self.locks = Locks(backend)
        self.locks.read_only = read_only
        self._trees: OrderedDict[bytes, tuple[list[Entry], int]] = OrderedDict()  # id -> (entries, plaintext size)
        self._tree_bytes = 0  # the plaintext sizes in _trees, together
        self._tree_lock = threading.Lock()
        self._sets: dict[str, BackupSet] = {}
        self._sets_lock = threading.Lock()
        self._direct = threading.local()  # .on: this thread reads what the store holds (reading_stored)
        self.unreadable_sets: dict[str, str] = {}  # set objects the last listing could not read: why
        # When this handle's repair_index last dropped index entries: a set taken before then is
        # no base (its files carried over unread could name dropped blobs; choose_base takes a full)
        self.index_dropped_at: float | None = None
        # stored trees found wholly indexed (what an incremental carries over unread)
        self.indexed_trees = IndexedTrees(self._stored_blob)
        self.load_index()

    # -- opening -----------------------------------------------------------------
    @classmethod
    def init(cls, backend: Backend, config: RepoConfig | None = None, *,
             secret: crypto.Secret | None = None, argon2: dict | None = None) -> Repository:
        """Create a repository: plaintext format 1 without `secret`, encrypted format 2 with
        it (a new master key wrapped under `secret` in the first key object). The key object
        is written before the config, so a listed config always has a key."""
        try:
            backend.get("config", "config")
            raise RepositoryError(f"a repository already exists at '{backend.location()}'")
        except NotFoundError:
            pass
        leftovers = list(backend.list("keys"))  # of an init killed before its config: Cairn key objects only
        for name in leftovers:
            try:
                crypto.parse_key_object(name, backend.get("keys", name))
            except CairnError:
                raise AlreadyExistsError(f"unable to create a repository at '{backend.location()}': keys/{name} "
                                         "is not a Cairn key object (the location holds something else)",
                                         hint="choose an empty location: nothing there is deleted") from None
        for name in leftovers:
            backend.delete("keys", name)
        if secret is None:
            config = config or RepoConfig.new()
            backend.put("config", "config", config.encode())
            return cls(backend, config)
        config = dataclasses.replace(config or RepoConfig.new(), version=ENCRYPTED_VERSION, encryption={
            "cipher": crypto.CIPHER, "ids": "blake3-keyed", "objects": list(crypto.SEALED_KINDS),
            "chunker": "seed-from-master-key"})
        master = os.urandom(crypto.MASTER_LEN)
        key_id, data = crypto.make_key_object(config.id, master, secret, argon2)
        backend.put("keys", key_id, data)
        backend.put("config", "config", config.encode())
        return cls(backend, config, key=crypto.RepoKey(master), key_id=key_id)

    @classmethod
    def open(cls, backend: Backend, *, read_only: bool = False,
             secret: crypto.Secret | None = None, cache_dir: str | None = None,
             cache_size: int | None = None) -> Repository:
        """Open a repository. Format 2 needs `secret` (WrongKeyError without it or when it
        opens no key); format 1 ignores it. With `cache_dir`, index files, set objects and
        trees are kept in `<cache_dir>/<repository id>` (at most `cache_size` bytes) and read
        from there, verified, instead of from the backend (store/storage/cache.py)."""
        try:
            data = backend.get("config", "config")
        except NotFoundError:
            raise NotARepositoryError(f"'{backend.location()}' is not a Cairn repository: no config") from None
        config = RepoConfig.decode(data, backend.location())
        key, key_id = None, ""
        if config.version >= ENCRYPTED_VERSION:
            if not isinstance(config.encryption, dict) or config.encryption.get("cipher") != crypto.CIPHER:
                raise CorruptionError(f"unable to read the config of repository '{backend.location()}': "
                                      "unknown encryption")
            if secret is None:
                raise WrongKeyError("unable to open repository: it is encrypted and no passphrase or key "
                                    "file was given", hint="give --passphrase-file F or --key-file F")
            key_id, key = crypto.unlock_key(backend, config.id, secret)
        elif config.version == PLAINTEXT_VERSION and config.encryption is not None:
            raise CorruptionError(f"unable to read the config of repository '{backend.location()}': "
                                  "format 1 cannot be encrypted")
        elif any(True for _ in backend.list("keys")):
            # a plaintext repository never has a key: this config is not the one its data was written under
            raise CorruptionError(
                f"unable to open repository '{backend.location()}': its config says it is not encrypted, "
                "but it holds key objects", hint="the config object is not this repository's: put its own "
                "config/config back (from a copy of the repository, or the host that made it)")
        cache = None
        if cache_dir and cache_size != 0:
            cache = ObjectCache(os.path.join(cache_dir, config.id),
                                DEFAULT_CACHE_BYTES if cache_size is None else cache_size)
        repo = cls(backend, config, read_only=read_only, key=key, key_id=key_id, cache=cache)
        if not read_only:
            repo.sweep_temp()
        return repo

    # -- keys (format 2) ---------------------------------------------------------
    @property
    def chunk_id_key(self) -> bytes | None:
        """The key of an encrypted repository's chunk ids (keyed blake3), which a delta restore or
        a --verify needs to compare a tree with a manifest; None: ids are plain blake3."""
        return self.key.id_key if self.key is not None else None

    @property
    def encrypted(self) -> bool:
        return self.key is not None

    @property
    def write_only(self) -> bool:
        """Opened with a write-only key: backs up, reads nothing others wrote, deletes nothing."""
        return bool(getattr(self.key, "write_only", False))

    def _full_key(self, what: str, command: str = "") -> None:
        if self.write_only:
            raise crypto.write_only_refusal(what, command)

    def require_full_key(self, what: str, command: str = "") -> None:
        """Refuse `what` (e.g. "to copy") up front when this handle's key is write-only; the hint
        asks a host with a full key to run `command` (e.g. "cairn copy")."""
        self._full_key(what, command)

    def hint_for_host(self, hint: str | None) -> str | None:
        """`hint` (of an error this handle raised) as this host must read it: on a write-only
        handle, the repair and inspection commands it names are asked of a host with a full key
        (store/snapshots/writeonly.py full_key_hint)."""
        return wonly.full_key_hint(hint) if self.write_only else hint

    @property
    def host_cache(self) -> wonly.HostCache | None:
        """A write-only handle's cache of its own sets and trees (store/snapshots/writeonly.py)."""
        return self.backend.cache if self.write_only else None  # type: ignore[attr-defined]

    def attach_host_cache(self, path: str) -> None:
        """Keep a write-only handle's own sets and trees in directory `path` (the daemon's
        state directory), so incrementals still have their base after a restart."""
        if self.write_only:
            self.backend.cache = wonly.HostCache(path)  # type: ignore[attr-defined]
            with self._sets_lock:
                self._sets.clear()

    def _own_set_stored(self, name: str) -> None:
        """After one of this write-only host's sets is stored: forget cached trees no newest
        set (per source) reaches, and set records the repository no longer lists."""
        cache = self.host_cache
        assert cache is not None
        listed = set(self.backend.list("sets")) | {name}
        newest: dict[str, BackupSet] = {}
        for n in cache.names("sets"):
            if n not in listed:
                if cache.age("sets", n) > wonly.TREE_GRACE:
                    cache.remove("sets", n)
                continue
            data = cache.get("sets", n)
            try:
                s = decode_set(n, data or b"")
            except CorruptionError:
                continue
            if s.source not in newest or (s.time_end, s.id) > (newest[s.source].time_end, newest[s.source].id):
                newest[s.source] = s
        roots = [bytes.fromhex(t) for s in newest.values()
                 for t in [s.tree, *(a.get("tree") for a in s.attachments.values() if isinstance(a, dict))] if t]
        cache.keep_trees_of(roots)

    def _encrypted_only(self) -> None:
        if self.key is None:
            raise FailedPreconditionError("the repository is not encrypted (format 1): it has no keys")

    def list_keys(self) -> list[tuple[crypto.KeyInfo | None, str, str]]:
        """(info, key id, problem) of every key object; info is None for an unreadable one."""
        self._encrypted_only()
        return [(info, key_id, problem) for key_id, info, _doc, problem in crypto.iter_keys(self.raw_backend)]

    def add_key(self, secret: crypto.Secret, argon2: dict | None = None, *, write_only: bool = False) -> str:
        """Wrap this repository's master key under `secret` in a new key object; its id. With
        `write_only` the object wraps only what a write-only host needs (store/content/crypto.py); first,
        holding the garbage collector's lock, index files and gc markers still sealed under the
        data key are sealed again under the index key (same name, same plaintext), so the new
        key reads the whole index and every marker."""
        self._encrypted_only()
        self._full_key("to add a key", "cairn key add")
        self._writable()
        payload = None
        if write_only:
            self.reseal_control_objects()
            payload = self.key.write_only_payload()  # type: ignore[union-attr]
        key_id, data = crypto.make_key_object(self.config.id, self.key.master, secret, argon2,
                                              write_only=payload)
        self.raw_backend.put("keys", key_id, data)
        return key_id

    def reseal_control_objects(self) -> int:
        """Seal index files and gc markers that only the data key opens under the index key
        (format 2 repositories written before write-only keys). Runs under the gc lock: only
        a collector deletes other writers' index files and markers. Returns how many."""
        key: crypto.RepoKey = self.key  # type: ignore[assignment]
        done = 0
        with self.locks.hold("reseal", gc=True, wait=PRUNE_LOCK_WAIT):
            for kind in ("index", "gc"):
                for name in list(self.raw_backend.list(kind)):
                    try:
                        sealed = self.raw_backend.get(kind, name)
                    except NotFoundError:
                        continue
                    resealed = key.reseal_control(kind, name, sealed)
                    if resealed is None:
                        continue  # under the index key already, or damaged (check reports it)
                    try:
                        self.raw_backend.stat(kind, name)
                    except NotFoundError:
                        continue  # a writer's rescue replaced it meanwhile
                    self.raw_backend.put(kind, name, resealed)
                    done += 1
        return done

    def remove_key(self, ref: str) -> str:
        """Remove one key object by id or unique prefix. Refused for the last usable key and
        for the key this handle was opened with (the next open would need another one)."""
        self._encrypted_only()
        self._full_key("to remove a key", "cairn key remove")
        self._writable()
        keys = [(key_id, doc) for key_id, _info, doc, _p in crypto.iter_keys(self.raw_backend)]
        hits = [k for k, _ in keys if ref and k.startswith(ref.lower())]
        if not hits:
            raise NotFoundError(f"unknown key '{ref}'")
        if len(hits) > 1:
            raise InvalidArgumentError(f"key prefix '{ref}' is ambiguous: it matches {len(hits)} keys")
        target = hits[0]
        usable = [k for k, doc in keys if doc is not None]
        if target in usable and len(usable) <= 1:
            raise FailedPreconditionError(f"refusing to remove key '{target[:8]}': it is the last usable key "
                                          "of the repository", hint="add another key first")
        if target == self.key_id:
            raise FailedPreconditionError(f"refusing to remove key '{target[:8]}': it is the key this "
                                          "repository was opened with", hint="reopen with another key first")
        self.raw_backend.delete("keys", target)
        return target

    def sweep_temp(self) -> int:
        """Remove temp files of interrupted writes (local backend; see LocalBackend.sweep_temp)."""
        sweep = getattr(self.backend, "sweep_temp", None)
        return sweep() if sweep is not None else 0

    @classmethod
    def init_local(cls, path: str, *, secret: crypto.Secret | None = None) -> Repository:
        return cls.init(LocalBackend(path), secret=secret)

    @classmethod
    def uninitialised_local(cls, path: str) -> bool:
        """True when `path` is missing, empty, or holds only what an init killed before it
        wrote the config left behind (key objects, temp files): a place to create one."""
        if not os.path.exists(path):
            return True
        if not os.path.isdir(path):
            return False
        for dirpath, _dirs, files in os.walk(path):
            rel = os.path.relpath(dirpath, path)
            if any(rel != "keys" and not f.startswith(".tmp-") for f in files):
                return False
        return True

    @classmethod
    def open_local(cls, path: str, *, create: bool = False, read_only: bool = False,
                   secret: crypto.Secret | None = None) -> Repository:
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotARepositoryError(f"'{path}' is not a Cairn repository: not a directory")
        if create and cls.uninitialised_local(path):
            return cls.init_local(path, secret=secret)
        if not os.path.isdir(path):
            raise NotARepositoryError(f"'{path}' is not a Cairn repository: no such directory")
        return cls.open(LocalBackend(path), read_only=read_only, secret=secret)

    def load_index(self) -> None:
        """(Re)load every index file. Unreadable ones (damaged, or refused by the file system or
        the store) are noted in `index_problems`, not fatal (see check).

        What write sessions publish while the files are read is added to the new index before
        it replaces the old one, so a reload (by check, prune or refresh) never loses the blobs
        of a session in progress."""
        with self._load_mutex:
            self._load_all()

    def refresh_index(self) -> None:
        """Bring this handle's index up to the durable one: add index files that appeared; if
        any file it had loaded is gone (a prune, maybe by another handle, rewrote the index),
        reload everything, so blobs of deleted packs are forgotten."""
        with self._load_mutex:
            self._read_markers()
            names = set(self.backend.list("index"))
            if not self._index_files <= names:
                self._load_all()
                return
            for name, got in self._read_ahead("index", sorted(names - self._index_files), decode_index):
                try:
                    if isinstance(got, Exception):
                        raise got
                    packs = got
                except NotFoundError:  # deleted since the listing: a prune ran, start over
                    self._load_all()
                    return
                except CorruptionError as e:
                    self.index_problems.append(str(e))
                    packs = {}
                except BackendError as e:  # refused or unreachable: ignored now, asked again next time
                    if str(e) not in self.index_problems:
                        self.index_problems.append(str(e))
                    continue
                for pack, entries in packs.items():
                    self._add_pack(self.index, pack, entries)
                self._index_files.add(name)

    def _read_markers(self) -> None:
        """Read the gc markers (before the index: a pack marked then is never deduplicated
        against, whatever the index says)."""
        markers = prunemod.read_markers(self.backend)
        self.markers = markers
        self.pending = frozenset().union(*(m.packs for m in markers))

    def _add_pack(self, index: Index, pack: str, entries: list[PackEntry], gone: Container[str] = ()) -> None:
        """Index `entries`; a blob keeps a location in an unmarked pack over one in a marked
        pack (prune copied it out of there), so sessions deduplicate against the copy. Nor does
        a pack storage lacks (`gone`, or found so here when it would replace a location of a
        blob in another pack) take a blob from a pack that is there: an index file of an older
        state put back (an old copy of the disk) names packs a prune deleted since, beside the
        copies that prune made."""
        if pack in self.pending or pack in gone:
            entries = [e for e in entries if e.id not in index]
        elif any((loc := index.get(e.id)) is not None and loc.pack != pack for e in entries) and self._lacks(pack):
            entries = [e for e in entries if e.id not in index]
        index.add_pack(pack, entries)

    def _lacking(self, packs: set[str]) -> set[str]:
        """Those of `packs` storage lacks: a stat each, or one listing of the packs when there
        are many (sessions of several hosts that stored the same chunks leave many such)."""
        if len(packs) <= CONTESTED_STATS:
            return {p for p in sorted(packs) if self._lacks(p)}
        try:
            return packs - set(self.backend.list("packs"))
        except BackendError:
            return set()

    def _lacks(self, pack: str) -> bool:
        """Whether storage lacks `pack` (False when it cannot say)."""
        try:
            self.backend.stat("packs", pack)
        except NotFoundError:
            return True
        except BackendError:
            return False
        return False

    def find_unstored(self) -> frozenset[str]:
        """The packs the index names that storage lacks, from one listing of the packs taken
        after the index was loaded (a pack is named only once it is stored, so one missing from
        a later listing was deleted: by hand, by the store, or by a collection that rewrote the
        index since, which the refresh here tells apart). Kept in `unstored`: a write session
        never deduplicates against a blob located there, nor carries over a file or a subtree
        whose content lies there, so what it needs of such a pack is read from the source and
        stored again, and the set restores whole. Called when a backup starts; a listing the
        store refuses leaves `unstored` as it was."""
        named = self.index.pack_names()
        if not named:
            self.unstored = frozenset()
            return self.unstored
        try:
            held = set(self.backend.list("packs"))
        except UnavailableError:
            raise
        except BackendError:
            return self.unstored
        gone = named - held
        if gone:
            self.refresh_index()  # a collector that rewrote the index meanwhile no longer names them
            gone &= self.index.pack_names()
        if gone - self.unstored:  # what was found wholly stored may lie there
            self.indexed_trees.forget()
        self.unstored = frozenset(gone)
        return self.unstored

    def _stored_blob(self, bid: bytes) -> bool:
        """Whether the index names `bid` in a pack not found missing (`unstored`)."""
        if not self.unstored:
            return bid in self.index
        loc = self.index.get(bid)
        return loc is not None and loc.pack not in self.unstored

    def _load_all(self) -> None:
        self._read_markers()
        with self._index_mutex:
            self._recording = []
        try:
            gone: set[str] = set()  # packs storage lacks that held the location kept for a blob
            for _round in range(2):  # (the second round defers them: see _add_pack)
                defer = self.pending | gone
                for _attempt in range(LOAD_TRIES):
                    builder, problems, loaded = IndexBuilder(), [], set()
                    marked: list[tuple[str, list[PackEntry]]] = []  # added last, where nothing else has them
                    vanished = False
                    listed = list(self.backend.list("index"))
                    if self.cache is not None:
                        self.cache.keep_only("index", set(listed))  # what prune deleted is never served
                    for name, got in self._read_ahead("index", listed):
                        try:
                            if isinstance(got, Exception):
                                raise got
                            marked.extend(builder.add_file(got, defer=defer).items())
                            loaded.add(name)
                        except NotFoundError:  # replaced meanwhile (prune, a writer's rescue): its successor
                            vanished = True    # was written first, but maybe after our listing
                        except CorruptionError as e:
                            problems.append(str(e))
                            loaded.add(name)
                        except BackendError as e:  # refused (permissions) or unreachable: its blobs look
                            problems.append(str(e))  # absent (stored again), and gc keeps its packs
                    if not vanished:
                        break
                index = builder.finish()
                lacking = self._lacking(builder.contested - defer)
                if not lacking:
                    break
                gone |= lacking
            for pack, entries in marked:
                self._add_pack(index, pack, entries, gone)
            with self._index_mutex:
                for packs in self._recording:
                    for pack, entries in packs.items():
                        index.add_pack(pack, entries)
                before, self.index = self.index, index
                self.reader = BlobReader(self.backend, index, self.key)
                self.index_problems = problems
                self._index_files = loaded
        finally:
            with self._index_mutex:
                self._recording = None
        self._notice_lost(before.pack_names() - index.pack_names())

    def _notice_lost(self, left: set[str]) -> None:
        """Packs the index named before this reload and names no more, `left`, whatever took
        them out: a collection (or repair) that deleted them or replaced their index entries,
        an index file deleted with or without its packs (a lifecycle rule, a half-synced copy,
        an operator's rm), an index file that cannot be read now. From storage alone these
        cannot be told apart, so no tree is trusted to be wholly indexed any more
        (IndexedTrees): the next backup looks again at what it carries over from its base."""
        if left:
            self.indexed_trees.forget()

    def stored_index_files(self, names: list[str]) -> Iterator[tuple[str, dict[str, list[PackEntry]] | Exception]]:
        """Index files `names` decoded as the store holds them now (never a cached copy), read
        ahead, in order, each with its name or the error reading it raised (garbage collection
        decides from these)."""
        return self._read_ahead("index", names, decode_index, stored=True)

    def _read_ahead(self, kind: str, names: list[str], decode: Callable[[str, bytes], T] = read_index,
                    stored: bool = False) -> Iterator[tuple[str, T | Exception]]:
        """Objects `names` of `kind` (index files, set objects), read and verified (`decode`) in
        order, each paired with its name, or with the error that reading it raised. Up to
        READ_AHEAD are read at once by a small pool (an object store answers each GET after a
        round trip; decrypting and hashing release the GIL), so a handle on a new host, with an
        empty cache, does not pay thousands of round trips one after another; the caller uses
        them as they come. The pool reads as this thread would (`reading_stored` included), or
        with `stored` from the store itself whatever this thread does."""
        if len(names) < 2:
            for name in names:
                try:
                    with self.reading_stored(trees=False) if stored else contextlib.nullcontext():
                        got = self._read_object(kind, name, decode)
                except Exception as e:  # noqa: BLE001 - handed to the caller, which raises it
                    got = e
                yield name, got
            return
        direct = (True, self._stored_trees()) if stored else (self._stored_only(), self._stored_trees())

        def fetch(name: str) -> T | Exception:
            self._direct.on, self._direct.trees = direct
            try:
                return self._read_object(kind, name, decode)
            except Exception as e:  # noqa: BLE001 - handed to the caller, which raises it
                return e

        with ThreadPoolExecutor(min(READ_AHEAD, len(names)), thread_name_prefix=f"{kind}-read") as pool:
            pending = iter(names)
            window = collections.deque((n, pool.submit(fetch, n)) for n in itertools.islice(pending, READ_AHEAD))
            try:
                while window:
                    name, future = window.popleft()
                    following = next(pending, None)
                    if following is not None:
                        window.append((following, pool.submit(fetch, following)))
                    yield name, future.result()
            finally:
                for _, future in window:
                    future.cancel()

    @contextlib.contextmanager
    def reading_stored(self, trees: bool = True) -> Iterator[None]:
        """Within the block, this thread reads index files and set objects (and with `trees`,
        trees) from the store itself: not from the local cache, nor from what this handle read
        before. Check runs so, trees included: a verified local copy proves nothing about the
        copy in the bucket. Prune runs so without trees: what it deletes follows from the index
        and sets the store holds now, while a tree's content, named by its id and verified, is
        the same wherever it is read (and walking every tree from the bucket would cost a round
        trip each)."""
        before = (getattr(self._direct, "on", False), getattr(self._direct, "trees", False))
        self._direct.on, self._direct.trees = True, trees or before[1]
        try:
            yield
        finally:
            self._direct.on, self._direct.trees = before

    def _stored_only(self) -> bool:
        return getattr(self._direct, "on", False)

    def _stored_trees(self) -> bool:
        return getattr(self._direct, "trees", False)

    def _read_object(self, kind: str, name: str, decode: Callable[[str, bytes], T]) -> T:
        """Object `name` of `kind` ("index" or "sets"), decoded and verified by `decode`.

        With a cache, its copy is used when it verifies (sealed bytes are opened, the content
        hashed against the name by `decode`); a copy that does not is dropped and the object
        fetched again, never trusted. Callers only ask for names the backend lists now."""
        cache = self.cache
        if kind == "sets" and self.write_only:
            cache = None  # a write-only host reads its own sets from its host cache (the backend's guard)
        if cache is not None and self._stored_only():
            stored = self.raw_backend.get(kind, name) if self.key is not None else self.backend.get(kind, name)
            value = decode(name, self._open_object(kind, name, stored))
            cache.put(kind, name, stored)  # it verified: the copy is good for the readers after
            return value
        if cache is not None:
            stored = cache.get(kind, name)
            if stored is not None:
                try:
                    return decode(name, self._open_object(kind, name, stored))
                except CorruptionError:
                    cache.drop(kind, name)
            stored = self.raw_backend.get(kind, name) if self.key is not None else self.backend.get(kind, name)
            value = decode(name, self._open_object(kind, name, stored))
            cache.put(kind, name, stored)
            return value
        return decode(name, self.backend.get(kind, name))

    def local_copy(self, kind: str, name: str) -> bytes | None:
        """The plaintext of set object `name` (`kind` "sets") as this handle's local cache holds
        it, when the copy verifies against its name (authenticated, hashed); None otherwise. A
        verified copy is the object as it was written (names are content): `repair sets` puts it
        back in place of a damaged one."""
        if kind != "sets" or self.cache is None or self.write_only:
            return None
        stored = self.cache.get(kind, name)
        if stored is None:
            return None
        try:
            data = self._open_object(kind, name, stored)
            decode_set(name, data)
        except CorruptionError:
            self.cache.drop(kind, name)
            return None
        return data

    def local_tree(self, tree_id: bytes) -> bytes | None:
        """The plaintext of tree blob `tree_id` as this handle's local cache holds it, when that
        copy verifies against its id (opened, decompressed, hashed); None otherwise. `repair
        index` stores such a copy again when the repository lost the tree (its pack missing or
        damaged)."""
        cache = self.cache
        if cache is None or self.write_only:
            return None
        kept = cache.get("trees", tree_id.hex())
        if kept is None or not _cached_tree_form(kept):
            return None
        try:
            return self.reader.decode_stored(tree_id, kept[5:69].decode("ascii"), kept[0],
                                             int.from_bytes(kept[1:5], "little"), kept[69:])
        except (CorruptionError, NotFoundError):
            return None  # damaged, or a pack sealed to the public key whose header is gone with it

    def remember(self, kind: str, name: str, data: bytes) -> None:
        """Keep an object this handle just wrote (plaintext `data`, sealed here as stored) in
        the cache, so the next reader does not fetch it back."""
        if self.cache is not None and not (kind == "sets" and self.write_only):
            self.cache.put(kind, name, self.key.seal_object(kind, name, data) if self.key is not None else data)

    def _open_object(self, kind: str, name: str, stored: bytes) -> bytes:
        return self.key.open_object(kind, name, stored) if self.key is not None else stored

    def _publish(self, name: str, packs: dict[str, list[PackEntry]]) -> None:
        """A write session's index file `name` is durable: its blobs join the current index."""
        with self._index_mutex:
            for pack, entries in packs.items():
                self.index.add_pack(pack, entries)
            if self._recording is not None:
                self._recording.append(packs)
            else:
                self._index_files.add(name)

    def close(self) -> None:
        with self._tree_lock:
            self._trees.clear()
            self._tree_bytes = 0
        if self.cache is not None:
            self.cache.close()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def check_writable(self) -> None:
        """Raise FailedPreconditionError when this handle is open read-only."""
        if self.read_only:
            raise FailedPreconditionError("repository is open read-only")

    _writable = check_writable

    def writer(self) -> BlobWriter:
        """A write session's writer; `own_blobs` maps each blob it wrote to the pack its index
        files name, `rescued` the blobs copied out of packs a collector may delete."""
        own: dict[bytes, str] = {}
        files: dict[str, dict[str, list[PackEntry]]] = {}

        def publish(name: str, packs: dict[str, list[PackEntry]]) -> None:
            for pack, entries in packs.items():
                for e in entries:
                    own[e.id] = pack
            files[name] = packs
            self._publish(name, packs)
            if self.cache is not None:
                same, data = encode_index(packs)  # encoding is canonical: the file's own bytes
                if same == name:
                    self.remember("index", name, data)

        writer = BlobWriter(self.backend, _CurrentIndex(self), pack_size=self.config.pack_size,
                            level=self.config.compression_level, publish=publish, key=self.key,
                            uploads=self.upload_slots())
        if self.write_only:  # every tree a session stores or reuses: the base of the next one
            cache = self.host_cache
            writer.on_tree = lambda bid, data: cache.put("trees", bid.hex(), data, durable=False)  # type: ignore
        writer.own_blobs = own  # type: ignore[attr-defined]
        writer.rescued = {}  # type: ignore[attr-defined]
        writer.own_files = files  # type: ignore[attr-defined]
        return writer

    def upload_slots(self) -> int:
        """Pack uploads a write session keeps in flight: `uploads` when set, else the backend's
        `default_uploads` (an object store gains from several PUTs at once), else 1."""
        if self.uploads is not None:
            return max(1, int(self.uploads))
        return max(1, int(getattr(self.backend, "default_uploads", 1) or 1))

    def confirm_deduped(self, writer: BlobWriter, base: BackupSet | None = None, lock: str | None = None) -> None:
        """Before a write session commits: refresh the index (and gc markers) and make sure
        every blob it used without writing it (and its base set) is still there. Raises
        FailedPreconditionError if something was removed meanwhile (a prune by another handle):
        nothing is committed. Blobs the session relies on that sit in packs a garbage collector
        may delete without waiting for this session's lock `lock` (marked by a marker that does
        not list it, see docs/format.md) are first copied into a new pack of the session's own."""
        for _ in range(RESCUE_TRIES):
            self.refresh_index()
            gone = next((b for b in writer.deduped if b not in self.index), None)
            if gone is None and base is not None:
                listed, waited = self._base_listed(base, lock)
                if not listed:
                    raise FailedPreconditionError(
                        f"unable to commit: base set '{short(base.id)}' this backup builds on was forgotten while "
                        "it ran (a prune by a host that did not see this backup's lock?)",
                        hint="run the backup again: it builds on the newest set there is")
                if waited:
                    self.refresh_index()  # the collector that put the base back may have rewritten the index
                if bytes.fromhex(base.tree) not in self.index:
                    gone = bytes.fromhex(base.tree)
            if gone is not None:
                raise FailedPreconditionError(
                    f"unable to commit: blob '{gone.hex()[:8]}..' this backup relies on was removed from the "
                    "index while it ran (a prune, or an index file deleted?)",
                    hint="run the backup again: it stores anew what no index file names ('cairn verify' names the "
                         "packs no index file names, and 'cairn repair index' indexes them again)")
            if self._lost_pack(writer):
                continue  # a collector moved or freed what the session used: look again
            risky, threat = self._at_risk(writer, lock)
            if not risky:
                return
            self._rescue(writer, risky, threat)
        raise FailedPreconditionError("unable to commit: garbage collection keeps marking the packs this backup "
                                      "relies on", hint="run the backup again")

    def _at_risk(self, writer: BlobWriter, lock: str | None) -> tuple[list[bytes], frozenset[str]]:
        """Blobs the session relies on whose pack a collector may delete regardless of its lock,
        and the packs that threaten so."""
        threat = frozenset().union(*(m.packs for m in self.markers
                                     if m.blockers is not None and (lock is None or lock not in m.blockers)))
        own: dict[bytes, str] = getattr(writer, "own_blobs", {})
        rescued: dict[bytes, str] = getattr(writer, "rescued", {})
        risky, mine = [], set()
        for b in writer.deduped | set(own):
            if b in rescued:
                continue
            loc = self.index.get(b)
            pack = loc.pack if loc is not None else own.get(b)
            if pack in threat:
                risky.append(b)
            elif b in own:
                mine.add(own[b])
        # A collector that finished meanwhile left no marker: the packs tell. Asked in parallel:
        # on an object store each is a round trip, and a large backup writes thousands of packs.
        gone = self._missing_packs(sorted(mine))
        if gone:
            raise FailedPreconditionError(
                f"unable to commit: pack '{gone[0][:8]}..' this backup wrote was deleted by garbage collection "
                "while it ran", hint="run the backup again")
        return risky, threat

    def _base_listed(self, base: BackupSet, lock: str | None) -> tuple[bool, bool]:
        """(whether set `base` is listed, whether that took waiting for a collector). A prune
        deletes the sets it forgets, then puts back those a backup's lock names as its base
        (docs/format.md): a backup that looks in between would fail for nothing. So while another
        process holds a gc lock, the listing is asked again until the base is back or the
        collector is gone (at most BASE_WAIT seconds; this session's lock stays held, so the
        collector sees it)."""
        deadline = time.monotonic() + BASE_WAIT
        waited = False
        while True:
            if base.id in {s.id for s in self.list_sets()}:
                return True, waited
            collecting = any(doc.get("gc") for doc in self.locks.others(lock or ""))
            if not collecting or time.monotonic() > deadline:
                return False, waited
            time.sleep(BASE_POLL)
            waited = True

    def _lost_pack(self, writer: BlobWriter) -> bool:
        """Whether a pack the index names for a blob the session deduplicated against, for a
        file it carried over by reference, or for the listing of a subtree it carried over from
        its base unread (the change journal said nothing below it changed), is gone.

        A pack a collector deleted is no longer named once the index is read again (it writes
        the index that drops a pack before deleting it): then True, and the caller looks again.
        A pack that is still named is lost (deleted by hand, a broken disk): the set would
        reference blobs nobody can read, so the commit is refused with CorruptionError, naming
        the way on. So is a pack cut shorter than the blobs the session relies on need (packs are
        immutable: nothing but damage shortens one). Many packs are checked against one listing
        of packs, a few one by one."""
        named: dict[str, bytes] = {}
        need: dict[str, int] = {}  # pack -> the end of the last blob of it the session relies on
        for b in writer.deduped | getattr(writer, "carried", set()):
            loc = self.index.get(b)
            if loc is not None:
                named.setdefault(loc.pack, b)
                need[loc.pack] = max(need.get(loc.pack, 0), loc.offset + loc.stored_len)
        for pack, (b, end) in list(getattr(writer, "relied", {}).items()):  # files carried over by reference
            loc = self.index.get(b)
            if loc is not None:  # (a collector may have moved it meanwhile: then its new pack is checked)
                named.setdefault(loc.pack, b)
                need[loc.pack] = max(need.get(loc.pack, 0), end if loc.pack == pack else loc.offset + loc.stored_len)
        if not named:
            return False
        packs = sorted(named)
        if len(packs) > LIST_PACKS_FROM:
            held = {i.name: i.size for i in self.backend.list_info("packs")}
        else:
            held = self._pack_sizes(packs)
        gone = [p for p in packs if p not in held]
        for p in packs:
            if p in held and held[p] < need[p]:
                raise CorruptionError(
                    f"unable to commit: pack '{p[:8]}..' holds blobs this backup relies on and is truncated: "
                    f"{held[p]} bytes, its indexed blobs need at least {need[p]}",
                    hint="run 'cairn repair index' (it keeps what is still whole in the pack and drops the rest, so "
                         "the next full backup stores it again), then back up again; 'cairn verify' lists the sets "
                         "that need it")
        if not gone:
            return False
        self.refresh_index()
        for p in gone:
            loc = self.index.get(named[p])
            if loc is not None and loc.pack == p:
                raise CorruptionError(
                    f"unable to commit: pack '{p[:8]}..' holds blobs this backup relies on and went missing from "
                    "the repository while it ran (not deleted by garbage collection: the index still names it)",
                    hint="run the backup again: it finds the pack missing when it starts and stores anew what it "
                         "needs of it; 'cairn verify' lists the older sets that need it, and 'cairn repair index' "
                         "drops its entries from the index")
        return True

    def _pack_sizes(self, packs: list[str]) -> dict[str, int]:
        """The size of each of `packs` the backend holds (one stat each)."""

        def size(p: str) -> int | None:
            try:
                return self.backend.stat("packs", p)
            except NotFoundError:
                return None

        if len(packs) <= 1:
            sizes = [size(p) for p in packs]
        else:
            with ThreadPoolExecutor(min(STAT_WORKERS, len(packs)), thread_name_prefix="commit-stat") as pool:
                sizes = list(pool.map(size, packs))
        return {p: n for p, n in zip(packs, sizes, strict=True) if n is not None}

    def _missing_packs(self, packs: list[str]) -> list[str]:
        """Those of `packs` the backend no longer holds (in the given order)."""

        def gone(p: str) -> bool:
            try:
                self.backend.stat("packs", p)
            except NotFoundError:
                return True
            return False

        if len(packs) <= 1:
            return [p for p in packs if gone(p)]
        with ThreadPoolExecutor(min(STAT_WORKERS, len(packs)), thread_name_prefix="commit-stat") as pool:
            return [p for p, g in zip(packs, pool.map(gone, packs), strict=True) if g]

    def _rescue(self, writer: BlobWriter, blobs: list[bytes], threat: frozenset[str]) -> None:
        """Copy `blobs` into new packs of this session (named apart from any marked pack by a
        random blob that nothing references)."""
        w = self.writer()
        try:
            w.put_data(TYPE_DATA, os.urandom(32))
            for b in blobs:
                loc = self.index.get(b)
                if loc is None:
                    raise FailedPreconditionError(f"unable to commit: blob '{b.hex()[:8]}..' this backup relies on "
                                                  "was removed while it ran", hint="run the backup again")
                w.put_forced(b, loc.type, self.reader.read(b))
            w.finish()
        except (NotFoundError, CorruptionError) as e:
            w.abort()
            raise FailedPreconditionError(f"unable to commit: a pack this backup relies on was deleted by garbage "
                                          f"collection while it ran ({e})", hint="run the backup again") from None
        except BaseException:
            w.abort()
            raise
        rescued: dict[bytes, str] = writer.rescued  # type: ignore[attr-defined]
        for b, pack in w.own_blobs.items():  # type: ignore[attr-defined]
            if b in blobs:
                rescued[b] = pack
        own: dict[bytes, str] = writer.own_blobs  # type: ignore[attr-defined]
        self._unname(writer, {own[b] for b in blobs if own.get(b) in threat})

    def _unname(self, writer: BlobWriter, packs: set[str]) -> None:
        """Rewrite this session's own index files without `packs` (the collector may delete
        them: no index file may go on naming them), then delete the old files."""
        files: dict[str, dict[str, list[PackEntry]]] = writer.own_files  # type: ignore[attr-defined]
        for name in [n for n, named in files.items() if packs & set(named)]:
            rest = {p: es for p, es in files.pop(name).items() if p not in packs}
            if rest:
                new, data = encode_index(rest)
                self.backend.put("index", new, data)
                files[new] = rest
            try:
                self.backend.delete("index", name)
            except NotFoundError:
                pass
        self.load_index()

    def read_blob(self, bid: bytes) -> bytes:
        """The plaintext of blob `bid`, verified. When this handle's index no longer matches the
        repository (another handle or host committed a set since it was read, or a prune
        rewrote the index and deleted the pack this handle knows the blob in), the index is
        refreshed once and the blob read from where it lies now; the error stands when the
        refreshed index says the same."""
        reader = self.reader
        try:
            return reader.read(bid)
        except (NotFoundError, CorruptionError):
            failed = reader.index.get(bid)
            self.refresh_index()
            now = self.index.get(bid)
            if now is None or (failed is not None and (now.pack, now.offset) == (failed.pack, failed.offset)):
                raise
        return self.reader.read(bid)

    def read_blobs(self, ids: list[bytes]) -> list[bytes | CairnError]:
        """For each blob of `ids`: its plaintext, verified, or the CairnError reading it met (an
        UnavailableError is raised). Read together (BlobReader.read_many); a blob that failed is
        read again by `read_blob`, which refreshes a stale index first."""
        out = self.reader.read_many(ids)
        for i, got in enumerate(out):
            if isinstance(got, (NotFoundError, CorruptionError)):
                try:
                    out[i] = self.read_blob(ids[i])
                except UnavailableError:
                    raise
                except CairnError as e:
                    out[i] = e
        return out

    # -- trees and sets ----------------------------------------------------------
    def load_tree(self, tree_id: bytes) -> list[Entry]:
        """The entries of tree `tree_id`, as a list (see `tree_entries` to iterate a large one)."""
        entries = self.tree_entries(tree_id)
        return entries if isinstance(entries, list) else list(entries)

    def tree_entries(self, tree_id: bytes) -> list[Entry] | StreamedTree:
        """The entries of tree `tree_id` to iterate. A small tree comes decoded, and is kept in
        this handle's cache of the last TREE_CACHE (and at most TREE_CACHE_BYTES of their
        plaintext); a large one (trees.STREAM_FROM) is never kept decoded: each pass over it
        decodes its plaintext anew, one entry at a time, so a directory of 200,000 entries costs
        its plaintext, not 200,000 decoded entries. Reading
        the blob raises here; a streamed tree that is not valid raises where iterating meets it."""
        with self._tree_lock:
            hit = None if self._stored_trees() else self._trees.get(tree_id)
            if hit is not None:
                self._trees.move_to_end(tree_id)
                return hit[0]
        data = self._own_tree(tree_id) if self.write_only else self._read_tree(tree_id)
        entries = tree_entries(tree_id, data)
        if isinstance(entries, list):
            with self._tree_lock:
                old = self._trees.pop(tree_id, None)
                if old is not None:
                    self._tree_bytes -= old[1]
                self._trees[tree_id] = (entries, len(data))
                self._tree_bytes += len(data)
                while len(self._trees) > TREE_CACHE or (self._tree_bytes > TREE_CACHE_BYTES and len(self._trees) > 1):
                    self._tree_bytes -= self._trees.popitem(last=False)[1][1]
        return entries

    def cached_trees(self) -> tuple[int, int]:
        """(trees kept decoded, their plaintext bytes together): what `tree_entries` holds."""
        with self._tree_lock:
            return len(self._trees), self._tree_bytes

    def _own_tree(self, tree_id: bytes) -> bytes:
        """A write-only handle's tree: only the trees of its own sets, from its cache."""
        data = self.host_cache.get("trees", tree_id.hex())  # type: ignore[union-attr]
        if data is not None and self.key.blob_id(data) != tree_id:  # type: ignore[union-attr]
            # damaged in the state directory: dropped; a backup walks that directory again (the
            # walker reads a listing it lost from the source), which caches the tree anew
            self.host_cache.remove("trees", tree_id.hex())  # type: ignore[union-attr]
            raise UnindexedError(f"unable to read tree '{tree_id.hex()[:8]}..': this host's cached copy is "
                                 "damaged (removed)")
        if data is None:
            raise crypto.WriteOnlyKeyError(f"unable to read tree '{tree_id.hex()[:8]}..': it is not one of this "
                                           "host's cached trees and the repository key is write-only")
        return data

    def _read_tree(self, tree_id: bytes) -> bytes:
        """The plaintext of tree blob `tree_id`; with a cache, from its verified copy there (kept
        as stored: codec u8, raw_len u32, the pack's name (64 ASCII hex digits: a pack sealed to
        the public key is opened with its header), then the compressed and sealed bytes)."""
        cache = self.cache
        if cache is None or self._stored_trees():
            self._refuse_unstored_tree(tree_id)
            return self.read_blob(tree_id)
        name = tree_id.hex()
        kept = cache.get("trees", name)
        if kept is not None and _cached_tree_form(kept):  # a damaged copy names no pack to ask the store about
            try:
                return self.reader.decode_stored(tree_id, kept[5:69].decode("ascii"), kept[0],
                                                 int.from_bytes(kept[1:5], "little"), kept[69:])
            except (CorruptionError, NotFoundError):
                pass  # damaged, or its pack (whose header opens a write-only host's blob) is gone: read anew
        if kept is not None:
            cache.drop("trees", name)
        self._refuse_unstored_tree(tree_id)
        try:
            loc, stored = self.reader.read_stored(tree_id)
            data = self.reader.decode_stored(tree_id, loc.pack, loc.codec, loc.raw_len, stored)
        except (NotFoundError, CorruptionError):
            return self.read_blob(tree_id)  # the index may be stale: read_blob refreshes it once
        if loc.codec != CODEC_ZSTD_REF and len(loc.pack) == 64:
            cache.put_later("trees", name, bytes([loc.codec]) + loc.raw_len.to_bytes(4, "little")
                            + loc.pack.encode("ascii") + bytes(stored))
        return data

    def _refuse_unstored_tree(self, tree_id: bytes) -> None:
        """A tree whose pack a backup found missing (`unstored`) is not in the repository: the
        walker then reads that directory from the source (UnindexedError), as for a listing
        no index file names, instead of failing on a pack it already knows is gone."""
        if not self.unstored:
            return
        loc = self.index.get(tree_id)
        if loc is not None and loc.pack in self.unstored:
            raise UnindexedError(f"unable to read tree '{short(tree_id.hex())}': pack '{short(loc.pack)}' is "
                                 "missing from the repository")

    def list_sets(self, source: str | None = None, *, complete: bool = False) -> list[BackupSet]:
        """The sets (of `source`), oldest first. A set object that cannot be read (damaged, or
        refused by the file system or the store) is left out and noted in `unreadable_sets`, so
        one bad object does not take every other set down with it. With `complete` (prune and
        garbage collection: what an unlisted set needs cannot be known) it is an error instead."""
        names = set(self.backend.list("sets"))
        if self.write_only:  # only this host's own sets, as its cache holds them
            names &= set(self.host_cache.names("sets"))  # type: ignore[union-attr]
        if self.cache is not None:
            self.cache.keep_only("sets", names)  # forgotten sets are never served
        with self._sets_lock:
            for gone in set(self._sets) - names:
                del self._sets[gone]
            unreadable: dict[str, str] = {}
            wanted = sorted(names if self._stored_only() else names - set(self._sets))
            for name, got in self._read_ahead("sets", wanted, decode_set):
                try:
                    if isinstance(got, Exception):
                        raise got
                    self._sets[name] = got
                except NotFoundError:  # forgotten since the listing
                    self._sets.pop(name, None)
                    continue
                except crypto.WriteOnlyKeyError:
                    if not self.write_only:
                        raise
                    # this host's record of it was dropped since the listing (found damaged by a
                    # call that listed at the same time, which named it): as forgotten here
                    self._sets.pop(name, None)
                    continue
                except UnavailableError:
                    raise  # the store does not answer: no set is unreadable for that
                except (CorruptionError, BackendError) as e:
                    self._sets.pop(name, None)  # read well before, damaged in the store now
                    unreadable[name] = e.message
                    if self.write_only and isinstance(e, CorruptionError):
                        # the damage is in this host's own record (its state directory), never in
                        # the repository, which it cannot read: dropped like a damaged tree record
                        self.host_cache.remove("sets", name)  # type: ignore[union-attr]
                        unreadable[name] = (f"this host's record of it in its state directory is damaged and was "
                                            f"dropped: {e.message}")
            self.unreadable_sets = unreadable
            sets = list(self._sets.values())
        if complete and unreadable:
            name = min(unreadable)
            raise FailedPreconditionError(
                f"unable to read set '{name[:12]}..' ({_why(unreadable[name])}): what it needs cannot be known, so "
                f"nothing may be deleted" + (f"; {len(unreadable) - 1} more sets are unreadable"
                                             if len(unreadable) > 1 else ""),
                hint="put back a good copy of the set object, or remove unreadable set objects with "
                     "'cairn repair sets'")
        sets = [s for s in sets if source is None or s.source == source]
        return sorted(sets, key=lambda s: (s.time_end, s.id))

    def refuse_other_host(self, host: str | None, own_host: str | None) -> None:
        """A write-only handle sees only its own sets: asking for another host's is refused
        (WriteOnlyKeyError), never answered "none"."""
        if self.write_only and host and host != own_host:
            raise crypto.WriteOnlyKeyError(f"unable to see the sets of host '{host}': this host's repository key is "
                                           "write-only (it sees only its own sets)",
                                           hint=f"{crypto.ASK_FULL_KEY} (passphrase or key file) to run 'cairn sets "
                                                f"--host {host}'")

    def hosts(self) -> set[str]:
        """The hosts the repository knows: every host that took a set now listed (readable), or
        that holds a lock object (an operation running now, or the stale lock of a host that is
        gone). A host whose sets were all forgotten and that holds no lock is not among them;
        nor is the host of a set object that cannot be read (see `unreadable_sets`)."""
        return {s.hostname for s in self.list_sets()} | self.locks.holders()

    def get_set(self, ref: str, source: str | None = None, host: str | None = None,
                own_host: str | None = None, own_machine: str = "") -> BackupSet:
        """The set `ref` names (snapshots/sets.py resolve: 'latest' prefers `own_host`'s sets,
        and `own_machine`'s among them where machines share that host name)."""
        try:
            return resolve(self.list_sets(), ref, source, host, own_host, own_machine)
        except NotFoundError:
            if self.write_only and len(ref) >= 4 and any(n.startswith(ref.lower()) for n in self.backend.list("sets")):
                raise crypto.WriteOnlyKeyError(f"unable to read set '{ref[:12]}': this host's repository key is "
                                               "write-only and this host holds no record of it (another host took "
                                               "it, or this host's record of it was damaged)",
                                               hint=f"{crypto.ASK_FULL_KEY} to run 'cairn ls {ref[:12]}'") from None
            if ref == "latest":
                self.refuse_other_host(host, own_host)
            bad = sorted(n for n in self.unreadable_sets if ref != "latest" and n.startswith(ref.lower()))
            if len(ref) >= 4 and len(bad) == 1:  # its object is there but damaged: say so, not "unknown"
                raise CorruptionError(f"unable to read set '{bad[0][:12]}': {_why(self.unreadable_sets[bad[0]])}",
                                      hint="'cairn verify' names the damage; 'cairn repair sets' removes damaged set "
                                           "objects") from None
            raise

    # -- backup --------------------------------------------------------------------
    def choose_base(self, source: str, level: str, host: str | None = None,
                    machine: str = "") -> tuple[str, BackupSet | None, str]:
        """Return (level actually taken, base set, note) by the rule of ARCHITECTURE.md. With
        `host`, only that host's sets are bases: hosts sharing a repository (and a source name)
        each build on their own sets, never on a tree another machine took; of that host's sets,
        only `machine`'s when it took any (a clone beside it: snapshots/sets.py of_machine)."""
        check_level(level)
        if level == "full":
            return "full", None, ""
        sets = self.list_sets(source)
        if host is not None:
            sets = of_machine([s for s in sets if s.hostname == host], machine)
        if level == "differential":
            sets = [s for s in sets if s.level == "full"]
        candidates = len(sets)
        sets = [s for s in sets if bytes.fromhex(s.tree) in self.index]
        if self.write_only:  # a base is only usable with its trees at hand
            sets = [s for s in sets if self.host_cache.get("trees", s.tree) is not None]  # type: ignore[union-attr]
        if not sets:
            want = "full set" if level == "differential" else "set"
            article = "an" if level[0] in "aeiou" else "a"
            if candidates and not self.write_only:
                return "full", None, (f"no {want} of source '{source}' can be the base of {article} {level}: the index "
                                      "does not name their trees ('cairn verify' says why): taken as full")
            return "full", None, f"no {want} of source '{source}' to base {article} {level} on: taken as full"
        if self.index_dropped_at is not None and sets[-1].time_end < self.index_dropped_at:
            return "full", None, ("the index lost data since the base set ('cairn repair index'): taken as full, "
                                  "so that files carried over unread do not reference what was lost")
        return level, sets[-1], ""

    def session(self, req: BackupRequest, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None,
                decision: tuple[str, BackupSet | None, str] | None = None) -> BackupSession:
        """Open a backup session to capture a set step by step (see store/snapshots/session.py);
        `decision` is a (level, base, note) from choose_base the caller made already."""
        return BackupSession(self, req, progress, cancel, workers=BACKUP_WORKERS, decision=decision)

    def backup(self, req: BackupRequest, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None) -> BackupSet:
        """Take one set. Raises AbortedError on cancel; nothing partial becomes visible."""
        with self.session(req, progress, cancel) as sess:
            sess.walk_all()
            return sess.commit()

    @staticmethod
    def _emit(progress: ProgressFn | None, p: Progress) -> None:
        if progress is not None:
            progress(p)

    # -- browsing ------------------------------------------------------------------
    def list_tree(self, s: BackupSet, path: str = "", recursive: bool = False,
                  problems: list[str] | None = None) -> list[TreeEntry]:
        """The entries at `path` of set `s` (all below it with `recursive`), as a list; see
        `iter_tree`."""
        return list(self.iter_tree(s, path, recursive, problems))

    def iter_tree(self, s: BackupSet, path: str = "", recursive: bool = False,
                  problems: list[str] | None = None) -> Iterator[TreeEntry]:
        """The entries at `path` of set `s` (all below it with `recursive`), as they are read: a
        listing of a million entries is never held whole (the daemon serves it in batches). The
        path and its own listing are checked here, before the first entry is asked for. With
        `problems` a recursive listing goes on past a directory whose listing cannot be read and
        notes it there ("unable to list 'a/b/': ..."); the listing asked for itself must be
        readable (a large tree is decoded as it is listed: one that breaks part way raises
        there, after the entries before it)."""
        chain, entry = find_entry(self.tree_entries, bytes.fromhex(s.tree), path)
        base = path.strip("/")
        if entry is not None and entry.kind != "dir":
            return iter([_tree_entry(base, entry)])
        tree = bytes.fromhex(s.tree) if entry is None else entry.subtree
        return self._list(self.tree_entries(tree) if tree else [], base, recursive, problems, top=True)

    def _list(self, entries: Iterable[Entry], prefix: str, recursive: bool,
              problems: list[str] | None, top: bool = False) -> Iterator[TreeEntry]:
        """The entries of one directory (and below it), each decoded as it is reached: a large
        tree's entries are never held at once (Repository.tree_entries)."""
        it = iter(entries)
        while True:
            try:
                e = next(it)
            except StopIteration:
                return
            except CairnError as err:  # a large tree turned out not to be one, part way through
                if problems is None or top:
                    raise
                problems.append(f"unable to list '{shown(prefix)}/': {err.message}")
                return
            path = f"{prefix}/{os.fsdecode(e.name)}" if prefix else os.fsdecode(e.name)
            yield _tree_entry(path, e)
            if recursive and e.kind == "dir" and e.subtree:
                try:
                    below = self.tree_entries(e.subtree)
                except CairnError as err:
                    if problems is None:
                        raise
                    problems.append(f"unable to list '{shown(path)}/': {err.message}")
                    continue
                yield from self._list(below, path, recursive, problems)

    def diff(self, a: BackupSet, b: BackupSet) -> SetDiff:
        changes: dict[str, list[str]] = {"added": [], "modified": [], "deleted": []}
        for change, path in self.iter_diff(a, b):
            changes[change].append(path)
        return SetDiff(tuple(changes["added"]), tuple(changes["modified"]), tuple(changes["deleted"]))

    def iter_diff(self, a: BackupSet, b: BackupSet, only: str | None = None) -> Iterator[tuple[str, str]]:
        """The changes going from set A to set B as they are found, never collected: (change, path),
        change 'added', 'modified' or 'deleted', in tree order (a directory's names sorted, what
        is below one right after it). With `only` just changes of that kind. Holds the entries of
        the directories on the way down, one level of each side at a time."""
        return self._diff(bytes.fromhex(a.tree), bytes.fromhex(b.tree), "", only)

    def _diff(self, ta: bytes, tb: bytes, prefix: str, only: str | None) -> Iterator[tuple[str, str]]:
        if ta == tb:
            return
        ea = {e.name: e for e in self.load_tree(ta)} if ta else {}
        eb = {e.name: e for e in self.load_tree(tb)} if tb else {}
        for name in sorted(set(ea) | set(eb)):
            path = f"{prefix}{os.fsdecode(name)}"
            x, y = ea.get(name), eb.get(name)
            if x is None or y is None or (x.kind == "dir") != (y.kind == "dir"):
                for side, change in ((x, "deleted"), (y, "added")):
                    if side is not None and only in (None, change):
                        yield from self._collect(side, path, change)
            elif x.kind == "dir":
                if only in (None, "modified") and (x.mode != y.mode or x.uid != y.uid or x.gid != y.gid
                                                   or x.xattrs != y.xattrs):
                    yield "modified", path + "/"
                yield from self._diff(x.subtree, y.subtree, path + "/", only)
            elif only in (None, "modified") and not x.same_content_and_meta(y):
                yield "modified", path

    def _collect(self, e: Entry, path: str, change: str) -> Iterator[tuple[str, str]]:
        yield change, path + "/" if e.kind == "dir" else path
        if e.kind == "dir" and e.subtree:
            for sub in self.tree_entries(e.subtree):
                yield from self._collect(sub, f"{path}/{os.fsdecode(sub.name)}", change)

    # -- restore -------------------------------------------------------------------
    def root_tree(self, s: BackupSet, attachment: str | None = None) -> bytes:
        """The root tree of a set, or of one of its attachments (e.g. 'db:appdb')."""
        if attachment is None:
            return bytes.fromhex(s.tree)
        if attachment not in s.attachments:
            raise NotFoundError(f"set '{s.id[:8]}' holds no '{attachment}'")
        return bytes.fromhex(s.attachments[attachment]["tree"])

    def restore_stream(self, s: BackupSet, paths: list[str] | None = None, *,
                       attachment: str | None = None, select: RestoreFilter | None = None,
                       manifest: bool = False, lanes: LaneGauge | None = None) -> Iterator[Record]:
        """The records that restore `s` (or chosen paths of it, or an attachment), content verified;
        `select` filters by pattern; `manifest` lists files' chunks instead of their content; with
        `lanes` (a consumer that takes lanes: fsio.records) large files' content comes as lanes."""
        self._full_key("to restore", "cairn restore")
        root = self.root_tree(s, attachment)
        for p in paths or ():
            find_entry(self.tree_entries, root, p)
        with self.reading_set(s, "restore"):
            whole = not paths and attachment is None and not (select is not None and select.includes)
            top = root_entry(s) if whole else None
            if top is not None:  # (chosen paths or --include patterns leave the target's own metadata alone)
                yield top  # the source directory's own metadata, applied to the target (last, as directories' are)
            pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="restore-read")
            try:
                yield from StreamBuilder(self.tree_entries, self.read_blob, pool, select=select,
                                         chunk_size=self._chunk_size if manifest else None,
                                         read_blobs=self.read_blobs, content_len=self._content_len).records(
                    root, paths, None if manifest else lanes)
                why = select.nothing_included() if select is not None else None
                if why:
                    raise NotFoundError(f"nothing to restore from set '{s.id[:8]}': {why}")
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def reading_set(self, s: BackupSet, what: str) -> Iterator[None]:
        """Within the block, `s` is read (restored): a lock names it, so a prune meanwhile
        neither forgets it nor deletes data it needs (prune keeps a set a lock names, as it keeps
        a running backup's base, and forgets it in a later run). NotFoundError when the set was
        forgotten before the lock said so. A read-only handle writes nothing, locks included:
        it holds none (give the collecting hosts `gc_grace`, docs/operations.md)."""
        if self.read_only or self.write_only:
            yield
            return
        with self.locks.hold(f"{what} of set '{s.id[:12]}'") as lock:
            self.locks.annotate(lock, base=s.id)
            if s.id not in set(self.backend.list("sets")):
                raise NotFoundError(f"set '{s.id[:12]}' was forgotten by a prune before its {what} began")
            yield

    def _chunk_size(self, bid: bytes) -> int:
        loc = self.index.get(bid)
        if loc is None:
            raise UnindexedError(f"blob '{bid.hex()[:8]}..' is not in the index")
        return loc.raw_len

    def _content_len(self, bid: bytes) -> int | None:
        loc = self.index.get(bid)
        return loc.raw_len if loc is not None else None

    def read_chunks(self, s: BackupSet, ids: list[bytes], attachment: str | None = None, *,
                    errors: bool = False, attachments: tuple[str, ...] = ()) -> Iterator[bytes | CairnError]:
        """The content of chunks `ids` of set `s` (or its attachment, or any of `attachments`), in
        order; NotFoundError before anything is read if one is not part of it. With `errors` a
        chunk that cannot be read comes as its CairnError instead of ending the stream."""
        self._full_key("to read file data", "cairn restore")
        roots = [self.root_tree(s, a) for a in attachments] if attachments else [self.root_tree(s, attachment)]
        allowed = set_chunks(self.tree_entries, roots)
        with self.reading_set(s, "read"):
            pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="restore-read")
            try:
                yield from read_chunks(ids, allowed, self.read_blobs, self._chunk_size, pool, errors=errors)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def restore(self, s: BackupSet, target: str, paths: list[str] | None = None, *, overwrite: bool = False,
                progress: ProgressFn | None = None, attachment: str | None = None) -> RestoreStats:
        self._full_key("to restore", "cairn restore")
        root = self.root_tree(s, attachment)
        for p in paths or ():  # unknown paths (or attachment) fail before the target is touched
            find_entry(self.tree_entries, root, p)
        writer = TreeWriter(target, overwrite=overwrite)
        # Progress against what is restored: an attachment's own totals; chosen paths: no total.
        files_total, total = s.stats.files, s.stats.bytes_total
        if attachment is not None:
            att = s.attachments.get(attachment) or {}
            files_total, total = int(att.get("files") or 0), int(att.get("bytes_total") or 0)
        elif paths:
            files_total = total = 0
        done = 0
        last = 0.0
        for rec in self.restore_stream(s, paths, attachment=attachment):
            writer.apply(rec)
            if isinstance(rec, (Data, LaneData)):
                done += len(rec.data)  # handed to the writer (its stats count complete files only)
            if progress is not None and time.monotonic() - last > 0.2:
                last = time.monotonic()
                progress(Progress("restore", writer.stats.files, files_total, done, total))
        st = writer.finish()
        return RestoreStats(files=st.files, dirs=st.dirs, bytes=st.bytes, errors=tuple(st.errors),
                            notices=tuple(st.notices))

    # -- maintenance -----------------------------------------------------------------
    def check(self, *, read_data: bool = False, set_ref: str | None = None,
              progress: ProgressFn | None = None, subset: str = "") -> CheckReport:
        """Check the repository (maintenance/check.py); `subset` ("n/m" or "P%") reads only
        those packs (it implies read_data)."""
        self._full_key("to verify (it reads every set and tree)", "cairn verify")
        if subset:
            checkmod.parse_subset(subset)  # bad input: refused before anything is read
        with self.reading_stored():  # the store's objects, not local copies
            forget_blocks = getattr(self.raw_backend, "forget_blocks", None)
            if forget_blocks is not None:  # nor the pack blocks an object store's backend kept in memory
                forget_blocks()
            self.load_index()
            return checkmod.Checker(self, progress).run(read_data=read_data, set_ref=set_ref, subset=subset)

    def prune(self, policy: PrunePolicy, *, dry_run: bool = False, source: str | None = None,
              lock_wait: float = PRUNE_LOCK_WAIT, grace: float | None = None) -> PruneReport:
        """Forget sets by `policy` and free what nothing references, in two phases beside
        running backups (see store/maintenance/prune.py): packs found unneeded are marked, and deleted by a
        later run once `grace` seconds (default: `gc_grace`, else prune.GRACE) have passed and
        every lock held when they were marked is gone. Waits up to `lock_wait` seconds
        (retrying with backoff) for another prune to end."""
        self._full_key("to prune", "cairn prune")
        if not dry_run:
            self._writable()
        if grace is None:
            grace = self.gc_grace if self.gc_grace is not None else prunemod.GRACE
        try:
            with self.locks.hold("prune", gc=not dry_run, wait=lock_wait) as lock, self.reading_stored(trees=False):
                # the Pruner loads the durable index itself, after listing the sets (their index
                # files are durable before them), so it plans from neither a stale nor an early view
                if not dry_run:
                    self.sweep_temp()
                before = self.list_sets(complete=True)
                check = self._prune_check(lock.check)
                report = prunemod.Pruner(self, check, lock.name).run(policy, dry_run=dry_run, source=source,
                                                                     grace=grace)
                decisions = retention.decide([s for s in before if source is None or s.source == source], policy)
                named = set(report.forgotten)  # a set forgotten by name is not "kept by" a rule
                in_use = dict(report.in_use)
                decisions = [replace(d, keep=True, reasons=(in_use_reason(in_use[d.set_id]),))
                             if d.set_id in in_use else d for d in decisions]
                report = replace(report, decisions=tuple(d for d in decisions if not (d.keep and d.set_id in named)))
                if policy.wal_keep is not None:
                    if not dry_run:
                        self.load_index()
                    report = self._wal_retention(policy.wal_keep, before, report, dry_run, check, lock.name,
                                                 grace)
                return report
        finally:
            if not dry_run:  # also after a failure: no later backup may dedup against deleted blobs
                self.load_index()

    def _prune_check(self, lock_check: Callable[[], None]) -> Callable[[], None]:
        """What a prune calls before each step that writes or deletes: `lock_check` (the gc lock was
        lost: LockedError), and once the owner of this handle sets `locks.stopping` (it shuts
        down), AbortedError. Stopping there is stopping between steps, which the collector's
        crash safety covers (store/maintenance/prune.py), with the lock released as usual."""

        def check() -> None:
            lock_check()
            if self.locks.stopping.is_set():
                raise AbortedError("prune stopped before its next step: its process is shutting down",
                                   hint="the repository is consistent; the next prune does the rest")

        return check

    def repair_index(self, *, read_data: bool = False, dry_run: bool = False, progress: ProgressFn | None = None,
                     lock_wait: float = PRUNE_LOCK_WAIT) -> repairmod.IndexRepairReport:
        """Rebuild the index from the packs that exist (store/maintenance/repair.py): entries of
        missing packs are dropped, unindexed packs added; with `read_data` every blob is verified
        and those that fail are dropped. Holds the gc lock (waits up to `lock_wait` seconds for
        another collector or repairer); backups keep running. The index is reloaded afterwards."""
        self._full_key("to repair the index", "cairn repair index")
        if not dry_run:
            self._writable()
        try:
            with self.locks.hold("repair-index", gc=not dry_run, wait=lock_wait) as lock:
                report = repairmod.IndexRepair(self, lock.check, progress).run(read_data=read_data, dry_run=dry_run)
            if not dry_run and (report.entries_missing or report.entries_damaged):
                self.index_dropped_at = time.time()
            return report
        finally:
            if not dry_run:  # also after a failure: what this handle knows must be what is durable
                self.load_index()

    def repair_sets(self, *, dry_run: bool = False, lock_wait: float = PRUNE_LOCK_WAIT) -> repairmod.SetRepairReport:
        """Delete the set objects that cannot be read (damaged, empty, not a set), or put back
        the verified copy the local cache holds of one; readable sets are never touched. Holds
        the gc lock as prune does."""
        self._full_key("to repair sets", "cairn repair sets")
        if not dry_run:
            self._writable()
        with self.locks.hold("repair-sets", gc=not dry_run, wait=lock_wait) as lock:
            report = repairmod.SetRepair(self, lock.check).run(dry_run=dry_run)
        self.list_sets()  # forget the removed sets (and their cached copies)
        return report

    def repair_wal(self, *, dry_run: bool = False, lock_wait: float = PRUNE_LOCK_WAIT) -> repairmod.WalRepairReport:
        """Delete the WAL catalog entries that cannot be read (damaged, not a catalog entry);
        readable entries are never touched. Holds the gc lock as prune does."""
        self._full_key("to repair the WAL catalog", "cairn repair wal")
        if not dry_run:
            self._writable()
        with self.locks.hold("repair-wal", gc=not dry_run, wait=lock_wait) as lock:
            return repairmod.WalRepair(self, lock.check).run(dry_run=dry_run)

    def unlock(self, *, host: str | None = None, everything: bool = False) -> tuple[list[dict], list[dict]]:
        """Remove stale locks, and with `host` every lock of that host, with `everything` every
        lock but this handle's own (store/content/locks.py break_locks): (removed, kept)."""
        self._full_key("to remove other processes' locks", "cairn unlock")
        self._writable()
        return self.locks.break_locks(host=host, everything=everything)

    def _wal_retention(self, window: float, before: list[BackupSet], report: PruneReport,
                       dry_run: bool, check_lock: Callable[[], None] | None = None, lock_name: str = "",
                       grace: float = 0.0) -> PruneReport:
        """Forget the WAL files WAL retention lets go (after the sets), then free their chunks."""
        gone = set(report.forgotten)
        kept, now = [s for s in before if s.id not in gone], time.time()
        by_space: dict[str, list[str]] = {}
        for ns, name in walmod.entries(self):
            by_space.setdefault(ns, []).append(name)
        doomed = {ns: retention.wal_forget(found, walmod.archived_times(self, ns), kept, before, now, window,
                                           namespace=ns, rules=self.segment_rules)
                  for ns, found in sorted(by_space.items())}
        names = [walmod.display_name(ns, n) for ns, found in doomed.items() for n in found]
        if not names:
            return report
        if dry_run:  # the figures of the sets' plan again, now without the chunks of these WAL files
            pruner = prunemod.Pruner(self, check_lock, lock_name)
            pruner.skip_wal = frozenset(walmod.object_name(ns, n) for ns, found in doomed.items() for n in found)
            plan = pruner.plan([s for s in before if s.id not in gone], [s for s in before if s.id in gone])
            return replace(report, wal_forgotten=tuple(names), packs_deleted=plan.packs_deleted,
                           packs_rewritten=plan.packs_rewritten, bytes_freed=plan.bytes_freed,
                           waiting_packs=plan.waiting_packs, waiting_bytes=plan.waiting_bytes,
                           waiting_on=plan.waiting_on)
        for ns, found in doomed.items():
            walmod.forget(self, found, ns)
        freed = prunemod.Pruner(self, check_lock, lock_name).run(PrunePolicy(), dry_run=False, source=None,
                                                                  grace=grace)
        self.load_index()
        return replace(report, wal_forgotten=tuple(names), packs_deleted=report.packs_deleted + freed.packs_deleted,
                       packs_rewritten=report.packs_rewritten + freed.packs_rewritten,
                       bytes_freed=report.bytes_freed + freed.bytes_freed)

    # -- WAL -------------------------------------------------------------------------
    segment_rules: SegmentRules = PlainSegments()

    def set_segment_rules(self, rules: SegmentRules) -> None:
        """The engine's rules for archive segment names: which are valid, their order, what a
        set needs (store/segments.py; the store itself knows no engine's)."""
        self.segment_rules = rules

    def set_segment_rule(self, rule: Callable[[str], bool]) -> None:
        """Only the rule a segment name must follow (no order: WAL retention forgets nothing)."""
        self.segment_rules = NameRule(rule)

    @property
    def segment_rule(self) -> Callable[[str], bool]:
        """The rule a segment name must follow."""
        return self.segment_rules.valid

    def put_wal(self, name: str, data: bytes, namespace: str = "") -> bool:
        self._writable()
        with self.locks.hold("wal-push") as lock:
            return walmod.put(self, name, data, check_lock=lock.check, lock=lock.name, namespace=namespace)

    def get_wal(self, name: str, namespace: str = "") -> bytes:
        """WAL file `name` of `namespace`, else its flat entry (store/snapshots/wal.py)."""
        self._full_key("to read archived WAL")
        return walmod.get(self, name, namespace)

    def get_wal_entry(self, name: str, namespace: str = "") -> tuple[str, bytes]:
        """(name space it was found in, content) of WAL file `name`, as get_wal finds it."""
        self._full_key("to read archived WAL")
        return walmod.get_entry(self, name, namespace)

    def stream_wal_entry(self, name: str, namespace: str = "") -> tuple[str, Iterator[bytes]]:
        """(name space it was found in, content piece by piece) of WAL file `name`, as
        get_wal_entry finds it; checked after the last piece (store/snapshots/wal.py)."""
        self._full_key("to read archived WAL")
        return walmod.stream_entry(self, name, namespace)

    def list_wal(self, namespace: str = "", flat: bool = True) -> list[str]:
        """The WAL file names a fetch in `namespace` finds: its own and (with `flat`) the flat entries."""
        return walmod.names_in(self, namespace, flat)

    def wal_entries(self) -> list[tuple[str, str]]:
        """Every WAL catalog entry as (name space, file name); "" is the flat name space."""
        return walmod.entries(self)


class _CurrentIndex:
    """Membership in whatever index its repository holds now (write sessions dedup against
    this, so a reload during a session is seen by it)."""

    __slots__ = ("_repo",)

    def __init__(self, repo: Repository) -> None:
        self._repo = repo

    def __contains__(self, bid: object) -> bool:
        repo = self._repo
        if not repo.pending and not repo.unstored:
            return bid in repo.index
        loc = repo.index.get(bid)  # type: ignore[arg-type]
        # marked packs, and packs found missing: write the blob anew
        return loc is not None and loc.pack not in repo.pending and loc.pack not in repo.unstored

    def get(self, bid: bytes) -> Location | None:
        """Where the blob lies, if a session may dedup against it (as `in`)."""
        repo = self._repo
        loc = repo.index.get(bid)
        if loc is None or (repo.pending and loc.pack in repo.pending) or (repo.unstored and loc.pack in repo.unstored):
            return None
        return loc

    def unstored_pack(self, bid: bytes) -> str | None:
        """The pack the index places `bid` in when storage was found to lack it, else None."""
        repo = self._repo
        if not repo.unstored:
            return None
        loc = repo.index.get(bid)
        return loc.pack if loc is not None and loc.pack in repo.unstored else None


def _cached_tree_form(kept: bytes) -> bool:
    """Whether a cached tree has the form the cache writes (codec u8, raw_len u32, its pack's
    name as 64 lowercase hex digits, then the stored bytes): a copy damaged in the state
    directory (zeroed, cut short) fails here, before its pack name reaches the store."""
    return len(kept) > 69 and all(c in b"0123456789abcdef" for c in kept[5:69])


def _tree_entry(path: str, e: Entry) -> TreeEntry:
    return TreeEntry(path=path, name=os.fsdecode(e.name), kind=e.kind, mode=e.mode, uid=e.uid, gid=e.gid,
                     mtime_ns=e.mtime_ns, size=e.size, target=os.fsdecode(e.target))


def _why(message: str) -> str:
    """Why a set object cannot be read, without the "unable to read set 'ab12..': " its own
    message starts with (a message naming the set wraps it once, not twice)."""
    return _SET_PREFIX.sub("", message, count=1)
