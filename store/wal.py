"""Archived PostgreSQL WAL files: content as chunks, one catalog object per file name.

The catalog object "wal/<name>" is compact sorted JSON {"size", "hash" (blake3 of the
content), "chunks", "time" (when it was archived, seconds since the epoch), "sum" (blake3 of
the same JSON without "sum")}; entries written before "sum" or "time" existed lack them and
are still read. It is written after the pack and index holding the chunks, so a listed
segment is complete. A damaged entry is a CorruptionError naming it.
Pushing identical content again is a no-op; different content under an archived name is an
error (PostgreSQL's archive_command contract). The store is engine-neutral: what a valid name
is, is the rule the repository was given (Repository.set_segment_rule; the daemon gives it
PostgreSQL's, cairn.walnames.is_wal_file_name); without one, any plain file name is accepted.
WAL retention forgets a file by deleting its catalog entry; the next garbage collection frees
its chunks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import blake3

from .chunker import Chunker
from .errors import AlreadyExistsError, CorruptionError, InvalidArgumentError, NotFoundError
from .filereader import SEGMENT
from .packs import TYPE_DATA

if TYPE_CHECKING:
    from .repository import Repository

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # a safe object name, any engine's


def plain_name(name: str) -> bool:
    """The rule without an engine's: a plain file name (no '/', not '.' or '..')."""
    return bool(PLAIN_NAME.match(name))


def check_name(name: str, rule: Callable[[str], bool] = plain_name) -> str:
    if not (plain_name(name) and rule(name)):
        raise InvalidArgumentError(f"'{name}' is not a WAL file name")
    return name


CATALOG_KEYS = {"size", "hash", "chunks"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def encode_catalog(size: int, digest: str, chunks: list[str], when: float | None = None) -> bytes:
    """A catalog entry: compact sorted JSON with "sum", the blake3 of the same JSON without it."""
    doc: dict = {"size": size, "hash": digest, "chunks": chunks}
    if when is not None:
        doc["time"] = when
    doc["sum"] = blake3.blake3(_compact(doc)).hexdigest()
    return _compact(doc)


def _compact(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_catalog(name: str, data: bytes) -> dict:
    """Parse and verify a catalog entry. Entries written before "sum" existed are accepted
    when well-formed; an entry with "sum" must match it and be in canonical form, so any
    changed byte is found. Raises CorruptionError naming the entry."""
    def bad(why: str) -> CorruptionError:
        return CorruptionError(f"unable to read WAL catalog entry '{name}': {why}")
    try:
        doc = json.loads(data)
    except ValueError:
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict) or not set(doc) <= CATALOG_KEYS | {"sum", "time"} or not CATALOG_KEYS <= set(doc):
        raise bad("not a catalog entry")
    size, digest, chunks = doc["size"], doc["hash"], doc["chunks"]
    if (not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str)
            or not HEX64.match(digest) or not isinstance(chunks, list)
            or not all(isinstance(c, str) and HEX64.match(c) for c in chunks)):
        raise bad("malformed fields")
    if "time" in doc and (not isinstance(doc["time"], int | float) or isinstance(doc["time"], bool)):
        raise bad("malformed fields")
    if "sum" in doc:
        rest = {k: v for k, v in doc.items() if k != "sum"}
        if doc["sum"] != blake3.blake3(_compact(rest)).hexdigest() or data != _compact(doc):
            raise bad("checksum mismatch")
    return doc


def _catalog(repo: Repository, name: str) -> dict | None:
    try:
        data = repo.backend.get("wal", name)
    except NotFoundError:
        return None
    return decode_catalog(name, data)


def put(repo: Repository, name: str, data: bytes, check_lock: Callable[[], None] | None = None,
        lock: str | None = None) -> bool:
    """Store WAL file `name`; True if new, False if identical content was already there."""
    check_name(name, repo.segment_rule)
    digest = blake3.blake3(data).hexdigest()
    have = _catalog(repo, name)
    if have is not None:
        if have.get("hash") == digest and have.get("size") == len(data):
            return False
        raise AlreadyExistsError(f"WAL file '{name}' is already archived with different content")
    repo.refresh_index()
    writer = repo._writer()
    try:
        chunks = []
        view = memoryview(data)
        cut = Chunker(repo.config.chunker)
        for off, length in cut.cut(view) if len(data) > SEGMENT // 8 else [(0, len(data))]:
            chunks.append(writer.put_data(TYPE_DATA, view[off:off + length]).hex())
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    repo.confirm_deduped(writer, lock=lock)
    if check_lock is not None:
        check_lock()
    repo.backend.put("wal", name, encode_catalog(len(data), digest, chunks, time.time()))
    return True


def get(repo: Repository, name: str) -> bytes:
    """Return the archived content of WAL file `name`, verified."""
    check_name(name, repo.segment_rule)
    doc = _catalog(repo, name)
    if doc is None:
        raise NotFoundError(f"WAL file '{name}' is not in the archive")
    data = b"".join(repo.reader.read(bytes.fromhex(c)) for c in doc["chunks"])
    if len(data) != doc["size"] or blake3.blake3(data).hexdigest() != doc["hash"]:
        raise CorruptionError(f"unable to read WAL file '{name}': checksum mismatch")
    return data


def referenced_chunks(repo: Repository) -> set[bytes]:
    """Every chunk id any WAL catalog entry names (for prune)."""
    out: set[bytes] = set()
    for name in list(repo.backend.list("wal")):
        doc = _catalog(repo, name)  # a damaged entry raises: its chunks cannot be known
        if doc:
            out.update(bytes.fromhex(c) for c in doc["chunks"])
    return out


def archived_times(repo: Repository) -> dict[str, float | None]:
    """Every catalog entry's archive time (None where the entry does not record one)."""
    out: dict[str, float | None] = {}
    for name in list(repo.backend.list("wal")):
        try:
            doc = _catalog(repo, name)
        except CorruptionError:
            doc = None
        when = doc.get("time") if isinstance(doc, dict) else None
        out[name] = float(when) if isinstance(when, int | float) else None
    return out


def forget(repo: Repository, names: list[str]) -> None:
    """Delete the catalog entries of `names` (already gone ones are skipped)."""
    for name in names:
        try:
            repo.backend.delete("wal", check_name(name))
        except NotFoundError:
            pass
