"""Restore records to and from the wire: the one mapping the daemon and the client share.

`add_record(batch, rec)` appends a non-data fsio record (entry, hole, failure, notice) to a
RestoreBatch and returns its approximate wire size, which the daemon uses to cut batches;
`record_of(r)` turns one wire RestoreRecord back into the fsio record the writer takes.
What always holds: `record_of` inverts `add_record` (and `data=` records) field for field;
an empty wire record is one clear error, never a silent skip.
"""

from __future__ import annotations

from cairn.errors import InvalidArgumentError
from cairn.fsio.names import text_safe
from cairn.fsio.records import Data, EntryMeta, Failed, Hole, Notice, Record
from cairn.proto.cairn.v1 import cairn_pb2 as pb

_NS = 1_000_000_000
_INT64 = 1 << 63


def put_mtime(msg: pb.EntryMeta | pb.TreeEntry, mtime_ns: int) -> None:
    """Set `msg`'s time: in mtime_ns while it fits int64 (1677 to 2262), else as mtime_s
    seconds plus mtime_ns nanoseconds (file systems keep times well past 2262)."""
    if -_INT64 <= mtime_ns < _INT64:
        msg.mtime_ns = mtime_ns
    else:
        msg.mtime_s, msg.mtime_ns = divmod(mtime_ns, _NS)


def mtime_of(msg: pb.EntryMeta | pb.TreeEntry) -> int:
    """The time `put_mtime` set, in nanoseconds."""
    return msg.mtime_s * _NS + msg.mtime_ns if msg.HasField("mtime_s") else msg.mtime_ns


def add_record(batch: pb.RestoreBatch, rec: Record) -> int:
    """Append a non-data record to `batch`; return its approximate wire size."""
    if isinstance(rec, EntryMeta):
        entry = batch.records.add(
            entry=pb.EntryMeta(
                path=rec.path,
                kind=rec.kind,
                mode=rec.mode,
                uid=rec.uid,
                gid=rec.gid,
                size=rec.size,
                xattrs=[pb.Xattr(name=k, value=v) for k, v in rec.xattrs.items()],
                target=rec.target,
                link_to=rec.link_to,
                rdev=rec.rdev,
                sparse=rec.sparse,
                chunks=rec.chunks,
                chunk_sizes=rec.chunk_sizes,
            )
        ).entry
        put_mtime(entry, rec.mtime_ns)
        extra = 40 * len(rec.chunks) + sum(len(k) + len(v) for k, v in rec.xattrs.items())
        return 64 + len(rec.path) + len(rec.target) + extra
    if isinstance(rec, Hole):
        batch.records.add(hole=rec.length)
        return 12
    if isinstance(rec, Failed):
        batch.records.add(failed=text_safe(rec.message))
        return 16 + len(rec.message)
    if isinstance(rec, Notice):
        batch.records.add(notice=text_safe(rec.message))
        return 16 + len(rec.message)
    raise TypeError(f"unknown restore record {type(rec).__name__}")


def record_of(r: pb.RestoreRecord) -> Record:
    """The fsio record of one wire record."""
    kind = r.WhichOneof("record")
    if kind == "data":
        return Data(r.data)
    if kind == "entry":
        e = r.entry
        return EntryMeta(
            path=e.path,
            kind=e.kind,
            mode=e.mode,
            uid=e.uid,
            gid=e.gid,
            mtime_ns=mtime_of(e),
            size=e.size,
            xattrs={x.name: x.value for x in e.xattrs},
            target=e.target,
            link_to=e.link_to,
            rdev=e.rdev,
            sparse=e.sparse,
            chunks=tuple(e.chunks),
            chunk_sizes=tuple(e.chunk_sizes),
        )
    if kind == "hole":
        return Hole(r.hole)
    if kind == "failed":
        return Failed(r.failed)
    if kind == "notice":
        return Notice(r.notice)
    raise InvalidArgumentError("the daemon sent an empty restore record")
