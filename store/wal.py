"""Archived PostgreSQL WAL files: content as chunks, one catalog object per file name.

The catalog object "wal/<name>" is JSON {"size", "hash" (blake3 of the content), "chunks"}.
It is written after the pack and index holding the chunks, so a listed segment is complete.
Pushing identical content again is a no-op; different content under an archived name is an
error (PostgreSQL's archive_command contract). The store is engine-neutral: what a valid name
is, is the rule the repository was given (Repository.set_segment_rule; the daemon gives it
PostgreSQL's, cairn.walnames.is_wal_file_name); without one, any plain file name is accepted.
"""

from __future__ import annotations

import json
import re
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


def _catalog(repo: Repository, name: str) -> dict | None:
    try:
        return json.loads(repo.backend.get("wal", name))
    except NotFoundError:
        return None
    except ValueError:
        raise CorruptionError(f"unable to read WAL catalog entry '{name}': not valid JSON") from None


def put(repo: Repository, name: str, data: bytes) -> bool:
    """Store WAL file `name`; True if new, False if identical content was already there."""
    check_name(name, repo.segment_rule)
    digest = blake3.blake3(data).hexdigest()
    have = _catalog(repo, name)
    if have is not None:
        if have.get("hash") == digest and have.get("size") == len(data):
            return False
        raise AlreadyExistsError(f"WAL file '{name}' is already archived with different content")
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
    doc = {"size": len(data), "hash": digest, "chunks": chunks}
    repo.backend.put("wal", name, json.dumps(doc).encode())
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
        doc = _catalog(repo, name)
        if doc:
            out.update(bytes.fromhex(c) for c in doc.get("chunks", ()))
    return out
