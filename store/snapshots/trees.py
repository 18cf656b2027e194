"""Tree objects: one per directory, stored as a blob of type tree (a Merkle tree).

A tree is compact JSON: {"v": 1, "e": [entry, ...]} with entries sorted by name bytes. An
entry holds: "n" name (UTF-8 text) or "nb" (base64 of raw bytes when the name is not valid
UTF-8), "t" kind (file, dir, symlink, fifo, chardev, blockdev), "m" st_mode, "u"/"g" uid/gid,
"mt" mtime_ns, "ct" ctime_ns, "i" inode, "s" size, and by kind: "c" list of chunk ids (hex)
for files, "d" subtree id for directories, "l" symlink target (or "lb" base64), "x" xattrs
{base64 name: base64 value}, "h" hardlink key "dev:ino" for files with several links, "sp"
true for sparse files, "r" rdev for devices. Unchanged directories encode identically and so
dedup like data.

What always holds: a tree is encoded one entry at a time and read one entry at a time when it
is large, so neither side holds the whole JSON document of a large directory as Python objects.
Reading a tree of more than STREAM_FROM bytes (`tree_entries`) yields its entries as the
plaintext is scanned, a window of it at a time, each entry decoded by the standard library's
JSON scanner (so any string escape reads exactly as `json.loads` reads it); a tree whose bytes
do not start as every writer starts one (`{"v":1,"e":[`) is read whole, as before. Any valid
tree reads to the same entries either way. Bytes that are no tree raise CorruptionError: read
whole, before any entry; streamed, at the entry where they stop being one.

Why the standard library's scanner and not an incremental JSON parser (ijson's yajl backend is
as fast here): the scanner is the code `json.loads` runs for each value, so every tree an older
reader read reads the same, while yajl refuses integers of 2^63 and more (an inode number is
64 bits unsigned) and reads a lone surrogate escape as '?'; and it adds no dependency. Only
the array's frame (commas, brackets, whitespace) is scanned here.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from json import scanner

from ..errors import CorruptionError, short

TREE_VERSION = 1
# Trees of more plaintext than this (about 1,000 entries) are decoded as they are iterated and
# never kept decoded; smaller ones are decoded whole with json.loads, as fast as ever.
STREAM_FROM = 256 * 1024
WINDOW = 256 * 1024  # plaintext decoded to text at a time while a large tree is scanned
_HEAD = b'{"v":%d,"e":[' % TREE_VERSION  # how every writer starts a tree
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_scan = scanner.make_scanner(json.JSONDecoder())  # one JSON value at an index of a str, as json.loads


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


def _invalid(tree_id: bytes) -> CorruptionError:
    return CorruptionError(f"unable to read tree '{short(tree_id.hex())}': not a valid tree")


def decode_tree(tree_id: bytes, data: bytes) -> list[Entry]:
    """Parse tree blob bytes into a list; CorruptionError if they are not a tree. A large tree
    is scanned entry by entry (as `iter_tree_entries` does), never held as one JSON document."""
    try:
        if len(data) > STREAM_FROM and data.startswith(_HEAD):
            return [_entry(d) for d in _entry_docs(data)]
        doc = json.loads(data)
        if doc.get("v") != TREE_VERSION:
            raise ValueError("version")
        return [_entry(d) for d in doc["e"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _invalid(tree_id) from None


class StreamedTree:
    """The entries of one large tree, decoded from its plaintext as they are iterated: each
    pass scans the bytes anew and holds one entry (and a window of text) at a time. Decoding is
    deterministic, so a pass that ended without error means every later pass does too."""

    __slots__ = ("tree_id", "data")

    def __init__(self, tree_id: bytes, data: bytes) -> None:
        self.tree_id = tree_id
        self.data = data

    def __iter__(self) -> Iterator[Entry]:
        return iter_tree_entries(self.tree_id, self.data)


def tree_entries(tree_id: bytes, data: bytes) -> list[Entry] | StreamedTree:
    """The entries of a tree to iterate: decoded whole when the tree is small, else a
    StreamedTree (whose iteration raises CorruptionError where the bytes stop being a tree)."""
    if len(data) > STREAM_FROM and data.startswith(_HEAD):
        return StreamedTree(tree_id, data)
    return decode_tree(tree_id, data)


def iter_tree_entries(tree_id: bytes, data: bytes) -> Iterator[Entry]:
    """The entries of tree bytes, one at a time, as `decode_tree` reads them; CorruptionError
    at the first entry (or the end) where the bytes are not a tree."""
    if not data.startswith(_HEAD):  # not as a writer starts a tree (other key order, spaces): whole
        yield from decode_tree(tree_id, data)
        return
    try:
        for d in _entry_docs(data):
            yield _entry(d)  # (a consumer's own errors never come in here: nothing throws into it)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _invalid(tree_id) from None


def _entry_docs(data: bytes) -> Iterator[dict]:
    """The JSON values of the array that `data` (starting with _HEAD) holds under "e", each
    scanned by the standard library's scanner from a window of the text (WINDOW bytes of it
    decoded at a time, more while one value is longer); ValueError where the bytes are not JSON
    or hold more than a tree does (a repeated "v" or "e")."""
    decode = codecs.getincrementaldecoder("utf-8")("surrogatepass").decode  # as json.loads(bytes) does
    ws = _WS.match
    size = len(data)
    pos = len(_HEAD)  # bytes of data decoded so far
    text, i = "", 0  # the window, and where in it the next value (or ',' or ']') is

    def refill(text: str, i: int, pos: int, want: int) -> tuple[str, int, int]:
        end = min(size, pos + want)
        return text[i:] + decode(data[pos:end], end >= size), 0, end

    expect_value = True  # after '[' or ','
    first = True
    while True:
        if expect_value:
            try:
                doc, j = _scan(text, i)
                whole = j < len(text) or pos >= size  # a number could go on past the window's end
            except (ValueError, StopIteration):
                whole = False
            if whole:
                yield doc
                i, expect_value, first = j, False, False
                continue
            k = ws(text, i).end()
            if k > i:  # whitespace before the value
                i = k
                continue
            if first and text[i : i + 1] == "]":  # an empty array
                i += 1
                break
            if pos >= size:
                raise ValueError("not a JSON array of values")
            want = WINDOW  # the value is longer than what the window holds: read more of it
            while len(text) - i >= want:
                want *= 2
            text, i, pos = refill(text, i, pos, want)
            continue
        c = text[i : i + 1]
        if c == ",":
            i += 1
            expect_value = True
        elif c == "]":
            i += 1
            break
        elif c and c in " \t\n\r":
            i = ws(text, i).end()
        elif not c and pos < size:
            text, i, pos = refill(text, i, pos, WINDOW)
        else:
            raise ValueError("not a JSON array")
    rest = (text[i:] + decode(data[pos:], True)).strip(" \t\n\r")
    if rest != "}":  # more members after "e" (no writer adds any): allowed, unless they repeat one
        if not rest.startswith(","):
            raise ValueError("not an object")
        if {"v", "e"} & set(json.loads("{" + rest[1:])):
            raise ValueError("a repeated key")
