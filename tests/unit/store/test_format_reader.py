"""A second reader of repository format 2, written from docs/format.md alone.

It imports nothing of cairn.store's reading code: only blake3, zstandard, cryptography and
json, with the constants the document gives. Cairn writes a repository (several packs,
a delta attachment is not needed: codecs 0 and 1, trees, a WAL entry), and this reader opens
it with the key file, checks every pack as the document says, and reads every file of the
newest set and the WAL file back. If the document and the code drift apart, this fails.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct

import blake3
import pytest
import zstandard
from cairn.store.content import crypto
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from storekit import backup, make_tree, write_random

KEY = bytes(range(32))


class DocReader:
    """Reads a version-2 repository directory by docs/format.md."""

    def __init__(self, root: str, keyfile: bytes) -> None:
        self.root = root
        raw = self.read("config", "config")
        self.config = json.loads(raw)
        doc = {k: v for k, v in self.config.items() if k != "checksum"}
        canonical = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        assert blake3.blake3(canonical).hexdigest() == self.config["checksum"]
        assert raw == (json.dumps(self.config, indent=1, sort_keys=True) + "\n").encode()
        assert self.config["magic"] == "cairn-repository" and self.config["version"] == 2
        assert self.config["encryption"]["cipher"] == "aes-256-gcm"
        self.master = self.unlock(keyfile)
        self.data_key = AESGCM(blake3.blake3(self.master, derive_key_context="cairn 2026-12 data key v2").digest())
        self.index_key = AESGCM(blake3.blake3(self.master, derive_key_context="cairn 2026-12 index key v2").digest())
        self.id_key = blake3.blake3(self.master, derive_key_context="cairn 2026-12 blob id key v2").digest()
        self.index: dict[bytes, tuple[str, int, int, int, int, int]] = {}

    # storage layout: <root>/<kind>/<name>, packs fanned out by two hex digits
    def path(self, kind: str, name: str) -> str:
        if kind == "packs":
            return os.path.join(self.root, kind, name[:2], name)
        return os.path.join(self.root, kind, name)

    def read(self, kind: str, name: str) -> bytes:
        with open(self.path(kind, name), "rb") as f:
            return f.read()

    def names(self, kind: str) -> list[str]:
        base = os.path.join(self.root, kind)
        if not os.path.isdir(base):
            return []
        if kind == "packs":
            return sorted(n for d in os.listdir(base) for n in os.listdir(os.path.join(base, d))
                          if not n.startswith(".tmp-"))
        return sorted(n for n in os.listdir(base) if not n.startswith(".tmp-"))

    def unlock(self, keyfile: bytes) -> bytes:
        for key_id in self.names("keys"):
            doc = json.loads(self.read("keys", key_id))
            if doc["magic"] != "cairn-key" or doc["type"] != "keyfile":
                continue
            salt = base64.b64decode(doc["kdf"]["salt"])
            kek = blake3.blake3(salt + keyfile, derive_key_context="cairn 2026-12 key file wrapping v2").digest()
            wrapped = base64.b64decode(doc["wrapped"])
            ad = f"key:{self.config['id']}/{key_id}".encode()
            return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], ad)
        raise AssertionError("no key object opens with the key file")

    def open_sealed(self, sealed: bytes, ad: bytes) -> bytes:
        return self.data_key.decrypt(sealed[:12], sealed[12:], ad)

    def small(self, kind: str, name: str) -> bytes:
        sealed, ad = self.read(kind, name), f"object:{kind}/{name}".encode()
        if kind in ("index", "locks", "gc"):  # control objects: under the index key
            return self.index_key.decrypt(sealed[:12], sealed[12:], ad)
        return self.open_sealed(sealed, ad)

    def load_index(self) -> None:
        entry = struct.Struct("<32sBBIIII")
        for name in self.names("index"):
            data = self.small("index", name)
            assert blake3.blake3(data).hexdigest() == name
            assert data[:8] == b"CAIRNIX1" and blake3.blake3(data[:-32]).digest() == data[-32:]
            (npacks,) = struct.unpack_from("<I", data, 8)
            packs = [data[12 + 32 * i: 44 + 32 * i].hex() for i in range(npacks)]
            assert packs == sorted(packs)
            at = 12 + 32 * npacks
            (count,) = struct.unpack_from("<I", data, at)
            at += 4
            for i in range(count):
                bid, btype, codec, pack_no, offset, stored_len, raw_len = entry.unpack_from(data, at + i * entry.size)
                self.index[bid] = (packs[pack_no], offset, stored_len, raw_len, btype, codec)
            assert at + count * entry.size + 32 == len(data)

    def check_pack(self, name: str) -> list[tuple]:
        data = self.read("packs", name)
        assert blake3.blake3(data).hexdigest() == name and data[:8] == b"CAIRNPK1"
        trailer_offset, count, trailer_hash, magic = struct.unpack("<QI32s8s", data[-52:])
        assert magic == b"CAIRNPKE"
        sealed = data[trailer_offset:-52]
        assert blake3.blake3(sealed).digest() == trailer_hash
        trailer = self.open_sealed(sealed, b"pack-trailer")
        assert len(trailer) == 50 * count
        entries = [struct.unpack_from("<32sBBIIQ", trailer, 50 * i) for i in range(count)]
        expect = 8
        for _bid, _t, _c, _raw, stored_len, offset in entries:  # blobs back to back from offset 8
            assert offset == expect
            expect += stored_len
        assert expect == trailer_offset
        return entries

    def blob(self, bid: bytes) -> bytes:
        pack, offset, stored_len, raw_len, _btype, codec = self.index[bid]
        with open(self.path("packs", pack), "rb") as f:
            f.seek(offset)
            sealed = f.read(stored_len)
        stored = self.open_sealed(sealed, b"blob" + bid)
        assert len(sealed) == len(stored) + 28
        if codec == 0:
            plain = stored
        elif codec == 1:
            plain = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
        else:
            ref = self.blob(stored[:32])
            d = zstandard.ZstdCompressionDict(ref, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            plain = zstandard.ZstdDecompressor(dict_data=d).decompress(stored[32:], max_output_size=raw_len)
        assert len(plain) == raw_len
        assert blake3.blake3(plain, key=self.id_key).digest() == bid  # keyed id
        return plain

    def sets(self) -> list[dict]:
        out = []
        for name in self.names("sets"):
            data = self.small("sets", name)
            assert blake3.blake3(data).hexdigest() == name
            doc = json.loads(data)
            assert data == (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
            assert doc["magic"] == "cairn-set" and doc["version"] == 1
            out.append(doc)
        return sorted(out, key=lambda d: d["time_end"])

    def files(self, tree: bytes, prefix: str = "") -> dict[str, bytes]:
        data = self.blob(tree)
        doc = json.loads(data)
        assert doc["v"] == 1
        names = [e.get("n", "").encode() if "n" in e else base64.b64decode(e["nb"]) for e in doc["e"]]
        assert names == sorted(names)
        assert json.dumps(doc, separators=(",", ":")).encode() == data  # the writer's exact encoding
        out: dict[str, bytes] = {}
        for e in doc["e"]:
            path = prefix + e["n"]
            if e["t"] == "dir":
                out.update(self.files(bytes.fromhex(e["d"]), path + "/"))
            elif e["t"] == "file":
                out[path] = b"".join(self.blob(bytes.fromhex(c)) for c in e["c"])
                assert len(out[path]) == e["s"]
        return out

    def wal(self) -> dict[str, bytes]:
        out = {}
        for name in self.names("wal"):
            data = self.small("wal", name)
            doc = json.loads(data)
            compact = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            assert data == compact
            rest = {k: v for k, v in doc.items() if k != "sum"}
            assert doc["sum"] == blake3.blake3(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
                                               ).hexdigest()
            content = b"".join(self.blob(bytes.fromhex(c)) for c in doc["chunks"])
            assert len(content) == doc["size"] and blake3.blake3(content).hexdigest() == doc["hash"]
            out[name] = content
        return out


def _source_files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.mark.parametrize("seed", [7])
def test_a_reader_written_from_the_format_document_reads_what_cairn_wrote(tmp_path, seed):
    rng = random.Random(seed)
    src = tmp_path / "src"
    make_tree(str(src), rng, files=12, max_size=96 * 1024)
    write_random(str(src / "big.bin"), 3 * 1024 * 1024, rng)  # several chunks
    (src / "text.txt").write_bytes(b"compressible line\n" * 5000)  # codec 1
    (src / "tiny").write_bytes(b"x")  # codec 0
    secret = crypto.Secret("keyfile", KEY)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), RepoConfig.new(pack_size=1024 * 1024),
                           secret=secret)
    backup(repo, str(src))
    (src / "tiny").write_bytes(b"changed")
    last = backup(repo, str(src), "incremental")
    wal = os.urandom(2 * 1024 * 1024)
    repo.put_wal("000000010000000000000001", wal)
    repo.close()

    reader = DocReader(str(tmp_path / "repo"), KEY)
    packs = reader.names("packs")
    assert len(packs) > 1
    codecs = {e[2] for p in packs for e in reader.check_pack(p)}
    assert {0, 1} <= codecs
    reader.load_index()
    sets = reader.sets()
    assert [s["tree"] for s in sets][-1] == last.tree and sets[-1]["level"] == "incremental"
    assert reader.files(bytes.fromhex(sets[-1]["tree"])) == _source_files(str(src))
    assert reader.wal() == {"000000010000000000000001": wal}
    for kind in ("index", "sets", "wal", "locks", "gc"):  # sealed: not JSON or magic in the clear
        for name in reader.names(kind):
            raw = reader.read(kind, name)
            assert not raw.startswith(b"CAIRN")  # (a random nonce starts with "{" one time in 256)
            with pytest.raises(ValueError):
                json.loads(raw)
