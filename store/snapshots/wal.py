"""Archived segments (a database's WAL): content as chunks, one catalog object per file name and name space.

Every database cluster starts at the same WAL file names, so a repository keeps one name space
per cluster: the catalog object of file <name> in name space <ns> is "wal/<ns>@<name>". The
store does not know what a name space means (the daemon uses its cluster's identity); it is
any NAMESPACE-shaped string. Entries written before name spaces existed are "wal/<name>"
(the flat name space, ""): they are still read, and a fetch in a name space that does not hold a
name falls back to the flat entry of that name. Listings, retention, verify and prune cover both.
The catalog object is compact sorted JSON {"size", "hash" (blake3 of the
content), "chunks", "time" (when it was archived, seconds since the epoch), "sum" (blake3 of
the same JSON without "sum")}; entries written before "sum" or "time" existed lack them and
are still read. It is written after the pack and index holding the chunks, so a listed
segment is complete. A damaged entry is a CorruptionError naming it.
Pushing identical content again is a no-op; different content under an archived name is an
error (an archiver's contract). The store is engine-neutral: what a valid name is, is the rule
the repository was given (Repository.set_segment_rules, store/segments.py: the daemon gives it
its engine's); without one, any plain file name is accepted.
WAL retention forgets a file by deleting its catalog entry; the next garbage collection frees
its chunks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING

import blake3

from ..content.chunker import Chunker
from ..content.packs import TYPE_DATA
from ..errors import AlreadyExistsError, CorruptionError, InvalidArgumentError, NotFoundError
from ..segments import PLAIN_NAME, plain_name  # noqa: F401  (the plain-name rule, re-exported)
from .filereader import SEGMENT

if TYPE_CHECKING:
    from .handle import RepositoryHandle

def check_name(name: str, rule: Callable[[str], bool] = plain_name) -> str:
    if not (plain_name(name) and rule(name)):
        raise InvalidArgumentError(f"'{name}' is not a WAL file name")
    return name


NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no '.' or '@': the object name splits at '@'
SEP = "@"


def check_namespace(namespace: str) -> str:
    if namespace and not NAMESPACE.match(namespace):
        raise InvalidArgumentError(f"'{namespace}' is not a WAL name space (letters, digits, '_' and '-')")
    return namespace


def object_name(namespace: str, name: str) -> str:
    """The catalog object name of WAL file `name` in `namespace` ("" is the flat name space)."""
    return f"{check_namespace(namespace)}{SEP}{name}" if namespace else name


def split_object(obj: str) -> tuple[str, str]:
    """(name space, file name) of a catalog object name ("" for a flat entry)."""
    ns, sep, name = obj.partition(SEP)
    return (ns, name) if sep else ("", obj)


def display_name(namespace: str, name: str) -> str:
    """How people see an entry: "<ns>/<name>", or the bare name of a flat entry."""
    return f"{namespace}/{name}" if namespace else name


def entries(repo: RepositoryHandle) -> list[tuple[str, str]]:
    """Every catalog entry as (name space, file name), sorted; "" is the flat name space."""
    out = []
    for obj in repo.backend.list("wal"):
        ns, name = split_object(obj)
        if plain_name(name) and (not ns or NAMESPACE.match(ns)):
            out.append((ns, name))
    return sorted(out)


def names_in(repo: RepositoryHandle, namespace: str, flat: bool = True) -> list[str]:
    """The file names a fetch in `namespace` finds: its own entries and (with `flat`) the flat
    ones, sorted."""
    check_namespace(namespace)
    spaces = ("", namespace) if flat else (namespace,)
    return sorted({name for ns, name in entries(repo) if ns in spaces})


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


def _catalog(repo: RepositoryHandle, obj: str) -> dict | None:
    try:
        data = repo.backend.get("wal", obj)
    except NotFoundError:
        return None
    return decode_catalog(obj, data)


def put(repo: RepositoryHandle, name: str, data: bytes, check_lock: Callable[[], None] | None = None,
        lock: str | None = None, namespace: str = "") -> bool:
    """Store WAL file `name` in `namespace`; True if new, False if identical content was already
    there. Only that name space's own entry counts: a flat entry of the same name is another
    cluster's as far as the store knows."""
    check_name(name, repo.segment_rule)
    obj = object_name(namespace, name)
    digest = blake3.blake3(data).hexdigest()
    have = _catalog(repo, obj)
    if have is not None:
        if have.get("hash") == digest and have.get("size") == len(data):
            return False
        raise AlreadyExistsError(f"WAL file '{display_name(namespace, name)}' is already archived with different "
                                 "content")
    repo.refresh_index()
    writer = repo.writer()
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
    repo.backend.put("wal", obj, encode_catalog(len(data), digest, chunks, time.time()))
    return True


def get(repo: RepositoryHandle, name: str, namespace: str = "") -> bytes:
    """Return the archived content of WAL file `name` in `namespace`, verified; a name the name
    space does not hold is read from the flat name space (entries from before name spaces)."""
    return get_entry(repo, name, namespace)[1]


def get_entry(repo: RepositoryHandle, name: str, namespace: str = "") -> tuple[str, bytes]:
    """(the name space it was found in, content) of WAL file `name`, as `get` finds it."""
    found, pieces = stream_entry(repo, name, namespace)
    return found, b"".join(pieces)


def read_content(repo: RepositoryHandle, label: str, doc: dict) -> bytes:
    """The content a decoded catalog entry names, checked against its size and hash."""
    return b"".join(content_pieces(repo, label, doc))


def stream_entry(repo: RepositoryHandle, name: str, namespace: str = "") -> tuple[str, Iterator[bytes]]:
    """(the name space it was found in, its content piece by piece) of WAL file `name`, found as
    `get` finds it. The pieces are its chunks; the whole is checked only after the last one, so
    a consumer must discard what it took when the iterator raises (CorruptionError)."""
    check_name(name, repo.segment_rule)
    found, doc = namespace, _catalog(repo, object_name(namespace, name))
    if doc is None and namespace:
        found, doc = "", _catalog(repo, name)
    if doc is None:
        raise NotFoundError(f"WAL file '{display_name(namespace, name)}' is not in the archive")
    return found, content_pieces(repo, display_name(found, name), doc)


def content_pieces(repo: RepositoryHandle, label: str, doc: dict) -> Iterator[bytes]:
    """The chunks of a decoded catalog entry in order; after the last one, the whole is checked
    against the entry's size and hash (CorruptionError)."""
    hasher, size = blake3.blake3(), 0
    for c in doc["chunks"]:
        data = repo.reader.read(bytes.fromhex(c))
        hasher.update(data)
        size += len(data)
        yield data
    if size != doc["size"] or hasher.hexdigest() != doc["hash"]:
        raise CorruptionError(f"unable to read WAL file '{label}': checksum mismatch")


def referenced_chunks(repo: RepositoryHandle, skip: Collection[str] = ()) -> set[bytes]:
    """Every chunk id any WAL catalog entry names (for prune), but those of the objects in
    `skip` (entries a dry run of WAL retention takes as forgotten)."""
    out: set[bytes] = set()
    for name in list(repo.backend.list("wal")):
        if name in skip:
            continue
        try:
            doc = _catalog(repo, name)
        except CorruptionError as e:  # its chunks cannot be known
            raise CorruptionError(
                f"{e.message}: the chunks it names cannot be known, so nothing may be deleted",
                hint="'cairn repair wal' removes the WAL catalog entries that cannot be read (the WAL files they "
                     "stood for cannot be fetched either way), or put back a good copy of the entry") from None
        if doc:
            out.update(bytes.fromhex(c) for c in doc["chunks"])
    return out


def archived_times(repo: RepositoryHandle, namespace: str = "") -> dict[str, float | None]:
    """The archive time of every entry of `namespace` by file name (None where the entry does
    not record one)."""
    out: dict[str, float | None] = {}
    for ns, name in entries(repo):
        if ns != namespace:
            continue
        try:
            doc = _catalog(repo, object_name(ns, name))
        except CorruptionError:
            doc = None
        when = doc.get("time") if isinstance(doc, dict) else None
        out[name] = float(when) if isinstance(when, int | float) else None
    return out


def forget(repo: RepositoryHandle, names: list[str], namespace: str = "") -> None:
    """Delete the catalog entries of `names` in `namespace` (already gone ones are skipped)."""
    for name in names:
        try:
            repo.backend.delete("wal", object_name(namespace, check_name(name)))
        except NotFoundError:
            pass
