"""Tree objects: one per directory, stored as a blob of type tree (a Merkle tree).

A tree is compact JSON: {"v": 1, "e": [entry, ...]} with entries sorted by name bytes. An
entry holds: "n" name (UTF-8 text) or "nb" (base64 of raw bytes when the name is not valid
UTF-8), "t" kind (file, dir, symlink, fifo, chardev, blockdev), "m" st_mode, "u"/"g" uid/gid,
"mt" mtime_ns, "ct" ctime_ns, "i" inode, "s" size, and by kind: "c" list of chunk ids (hex)
for files, "d" subtree id for directories, "l" symlink target (or "lb" base64), "x" xattrs
{base64 name: base64 value}, "h" hardlink key "dev:ino" for files with several links, "sp"
true for sparse files, "r" rdev for devices. Unchanged directories encode identically and so
dedup like data.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from ..errors import CorruptionError, short

TREE_VERSION = 1


@dataclass(slots=True)
class Entry:
    """One directory entry as stored in a tree."""

    name: bytes
    kind: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    size: int = 0
    chunks: list[bytes] = field(default_factory=list)
    subtree: bytes = b""
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    hardlink: str = ""
    sparse: bool = False
    rdev: int = 0

    def same_meta(self, other: Entry) -> bool:
        """True when stat data says the content is unchanged (size, mtime, ctime, inode, kind)."""
        return (self.kind == other.kind and self.size == other.size and self.mtime_ns == other.mtime_ns
                and self.ctime_ns == other.ctime_ns and self.ino == other.ino)

    def same_content_and_meta(self, other: Entry) -> bool:
        """True when a restore would produce the same entry (for diff)."""
        return (self.kind == other.kind and self.mode == other.mode and self.uid == other.uid
                and self.gid == other.gid and self.mtime_ns == other.mtime_ns and self.size == other.size
                and self.chunks == other.chunks and self.target == other.target
                and self.xattrs == other.xattrs and self.rdev == other.rdev)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _text_or_b64(d: dict, key: str, value: bytes) -> None:
    try:
        d[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        d[key + "b"] = _b64(value)


def _entry_doc(e: Entry) -> dict:
    d: dict = {}
    _text_or_b64(d, "n", e.name)
    d.update(t=e.kind, m=e.mode, u=e.uid, g=e.gid, mt=e.mtime_ns, ct=e.ctime_ns, i=e.ino, s=e.size)
    if e.kind == "file":
        d["c"] = [c.hex() for c in e.chunks]
    if e.subtree:
        d["d"] = e.subtree.hex()
    if e.kind == "symlink":
        _text_or_b64(d, "l", e.target)
    if e.xattrs:
        d["x"] = {_b64(k): _b64(v) for k, v in sorted(e.xattrs.items())}
    if e.hardlink:
        d["h"] = e.hardlink
    if e.sparse:
        d["sp"] = True
    if e.rdev:
        d["r"] = e.rdev
    return d


def encode_tree(entries: list[Entry]) -> bytes:
    """Serialise entries (sorted here by name bytes) into tree blob bytes."""
    entries = sorted(entries, key=lambda e: e.name)
    # the bytes of json.dumps({"v": .., "e": [..]}) with these separators, one entry's document
    # at a time: a directory of 200,000 entries never holds 200,000 dicts at once
    dump = json.JSONEncoder(separators=(",", ":")).encode
    body = ",".join(dump(_entry_doc(e)) for e in entries)
    return f'{{"v":{TREE_VERSION},"e":[{body}]}}'.encode()


def _bytes_field(d: dict, key: str) -> bytes:
    if key in d:
        return d[key].encode("utf-8")
    if key + "b" in d:
        return base64.b64decode(d[key + "b"])
    return b""


def _entry(d: dict) -> Entry:
    return Entry(
        name=_bytes_field(d, "n"), kind=d["t"], mode=d["m"], uid=d["u"], gid=d["g"], mtime_ns=d["mt"],
        ctime_ns=d.get("ct", 0), ino=d.get("i", 0), size=d.get("s", 0),
        chunks=[bytes.fromhex(c) for c in d.get("c", ())],
        subtree=bytes.fromhex(d["d"]) if "d" in d else b"",
        target=_bytes_field(d, "l"),
        xattrs={base64.b64decode(k): base64.b64decode(v) for k, v in d.get("x", {}).items()},
        hardlink=d.get("h", ""), sparse=d.get("sp", False), rdev=d.get("r", 0))


def decode_tree(tree_id: bytes, data: bytes) -> list[Entry]:
    """Parse tree blob bytes; CorruptionError if they are not a tree."""
    try:
        doc = json.loads(data)
        if doc.get("v") != TREE_VERSION:
            raise ValueError("version")
        return [_entry(d) for d in doc["e"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptionError(f"unable to read tree '{short(tree_id.hex())}': not a valid tree") from None
