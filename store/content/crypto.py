"""Encryption at rest (repository format 2): the master key, its wrapping, sealing, keyed ids.

What always holds:
- every repository of format 2 has one random 32-byte master secret, generated at init and
  never stored in the clear: only wrapped (AES-256-GCM) under a key-encryption key that comes
  from a passphrase (Argon2id, parameters in the key object) or from a key file (32 random
  bytes, base64);
- from the master secret come, by blake3's key derivation, the data key (AES-256-GCM for
  every blob and every small object), the id key (blob ids are keyed blake3) and the
  chunker's gear seed; none of them is ever written anywhere;
- a sealed byte string is `nonce (12 random bytes) | ciphertext | tag (16)`; the associated
  data names what it is (a blob's id, or an object's kind and name), so a ciphertext moved to
  another place, or any changed byte, fails to open with a CorruptionError;
- a wrong passphrase or key file is a WrongKeyError with one clear message.
See docs/format.md, "Format version 2".
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import CorruptionError, InvalidArgumentError, NotFoundError, WrongKeyError, short
from ..storage.backend import Backend

CIPHER = "aes-256-gcm"
NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG  # bytes a sealed string is longer than its plaintext
MASTER_LEN = 32
KEYFILE_LEN = 32
KEY_MAGIC = "cairn-key"
KEY_VERSION = 1
# Argon2id (RFC 9106, second recommended option): 64 MiB, 3 passes, 1 lane.
ARGON2 = {"memory_kib": 64 * 1024, "iterations": 3, "lanes": 1}
SEALED_KINDS = ("index", "sets", "wal", "locks", "gc")  # small objects stored sealed in format 2
WRONG_KEY = "unable to open repository: wrong passphrase or key file"

CTX_DATA = "cairn 2026-12 data key v2"
CTX_IDS = "cairn 2026-12 blob id key v2"
CTX_CHUNKER = "cairn 2026-12 chunker seed v2"
CTX_KEYFILE = "cairn 2026-12 key file wrapping v2"


@dataclass(frozen=True)
class Secret:
    """What unlocks a repository: a passphrase or the 32 bytes of a key file."""

    kind: str  # "passphrase" | "keyfile"
    value: bytes

    @classmethod
    def from_passphrase_file(cls, path: str) -> Secret:
        data = _read_secret_file(path, "passphrase file")
        value = data.split(b"\n", 1)[0].rstrip(b"\r")  # the first line
        if not value:
            raise InvalidArgumentError(f"passphrase file '{path}' is empty")
        return cls("passphrase", value)

    @classmethod
    def from_key_file(cls, path: str) -> Secret:
        return cls("keyfile", decode_key_file(_read_secret_file(path, "key file"), path))

    @classmethod
    def new_key_file(cls) -> Secret:
        return cls("keyfile", os.urandom(KEYFILE_LEN))


def _read_secret_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64 * 1024)
    except OSError as e:
        raise InvalidArgumentError(f"unable to read {what} '{path}': {e.strerror}") from None


def encode_key_file(value: bytes) -> bytes:
    return base64.b64encode(value) + b"\n"


def decode_key_file(data: bytes, where: str) -> bytes:
    try:
        value = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        value = b""
    if len(value) != KEYFILE_LEN:
        raise InvalidArgumentError(f"key file '{where}' is not a Cairn key file (base64 of 32 bytes)")
    return value


class RepoKey:
    """The keys derived from one repository's master secret. Thread-safe; AESGCM releases the
    GIL while it works, so blobs are sealed in parallel on the compress threads."""

    def __init__(self, master: bytes) -> None:
        if len(master) != MASTER_LEN:
            raise CorruptionError("master key has the wrong length")
        self.master = master
        self._aead = AESGCM(blake3.blake3(master, derive_key_context=CTX_DATA).digest())
        self._id_key = blake3.blake3(master, derive_key_context=CTX_IDS).digest()
        seed = int.from_bytes(blake3.blake3(master, derive_key_context=CTX_CHUNKER).digest(8), "little")
        self.chunker_seed = (seed >> 1) or 1  # 63 bits (pyfastcdc shifts it left once); 0 means none

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    def seal(self, data: bytes | memoryview, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, bytes(data) if isinstance(data, memoryview) else data, ad)

    def open(self, sealed: bytes, ad: bytes) -> bytes | None:
        """The plaintext, or None when `sealed` is not what was sealed with `ad` under this key."""
        if len(sealed) < OVERHEAD:
            return None
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], ad)
        except InvalidTag:
            return None

    # blobs: the associated data is b"blob" + the blob's id
    def seal_blob(self, bid: bytes, stored: bytes | memoryview) -> bytes:
        return self.seal(stored, b"blob" + bid)

    def open_blob(self, pack: str, bid: bytes, sealed: bytes) -> bytes:
        plain = self.open(sealed, b"blob" + bid)
        if plain is None:
            raise CorruptionError(f"unable to read pack '{short(pack)}': authentication failed "
                                  f"for blob '{short(bid.hex())}'")
        return plain

    # pack trailers: the associated data is b"pack-trailer"
    def seal_trailer(self, trailer: bytes) -> bytes:
        return self.seal(trailer, b"pack-trailer")

    def open_trailer(self, pack: str, sealed: bytes) -> bytes:
        plain = self.open(sealed, b"pack-trailer")
        if plain is None:
            raise CorruptionError(f"unable to read pack '{short(pack)}': authentication failed for its trailer")
        return plain

    # small objects: the associated data is b"object:" + kind + b"/" + name
    def seal_object(self, kind: str, name: str, data: bytes) -> bytes:
        return self.seal(data, f"object:{kind}/{name}".encode())

    def open_object(self, kind: str, name: str, sealed: bytes) -> bytes:
        plain = self.open(sealed, f"object:{kind}/{name}".encode())
        if plain is None:
            raise CorruptionError(f"unable to read {kind} object '{short(name)}': authentication failed")
        return plain


# -- key objects ------------------------------------------------------------------------
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _kek(secret: Secret, kdf: dict) -> bytes:
    salt = base64.b64decode(kdf["salt"])
    if kdf["name"] == "argon2id" and secret.kind == "passphrase":
        return Argon2id(salt=salt, length=32, iterations=int(kdf["iterations"]), lanes=int(kdf["lanes"]),
                        memory_cost=int(kdf["memory_kib"])).derive(secret.value)
    if kdf["name"] == "blake3-derive" and secret.kind == "keyfile":
        return blake3.blake3(salt + secret.value, derive_key_context=CTX_KEYFILE).digest()
    raise ValueError("kdf does not fit the secret")


def _key_ad(repo_id: str, key_id: str) -> bytes:
    return f"key:{repo_id}/{key_id}".encode()


def make_key_object(repo_id: str, master: bytes, secret: Secret, argon2: dict | None = None) -> tuple[str, bytes]:
    """A new key object wrapping `master` under `secret`: returns (key id, bytes)."""
    key_id = os.urandom(16).hex()
    salt = os.urandom(16)
    if secret.kind == "passphrase":
        kdf = {"name": "argon2id", "salt": _b64(salt), **(argon2 or ARGON2)}
    else:
        kdf = {"name": "blake3-derive", "salt": _b64(salt)}
    nonce = os.urandom(NONCE)
    wrapped = nonce + AESGCM(_kek(secret, kdf)).encrypt(nonce, master, _key_ad(repo_id, key_id))
    doc = {"magic": KEY_MAGIC, "version": KEY_VERSION, "type": secret.kind, "kdf": kdf,
           "cipher": CIPHER, "wrapped": _b64(wrapped), "created": round(time.time(), 3)}
    return key_id, (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    type: str
    created: float
    kdf: str


def parse_key_object(key_id: str, data: bytes) -> tuple[KeyInfo, dict]:
    try:
        doc = json.loads(data)
        if doc["magic"] != KEY_MAGIC or doc["version"] != KEY_VERSION or doc["cipher"] != CIPHER:
            raise ValueError("magic")
        base64.b64decode(doc["wrapped"], validate=True)
        info = KeyInfo(key_id, str(doc["type"]), float(doc["created"]), str(doc["kdf"]["name"]))
        return info, doc
    except (ValueError, KeyError, TypeError):
        raise CorruptionError(f"unable to read key '{short(key_id)}': not a valid key object") from None


def unwrap(repo_id: str, key_id: str, doc: dict, secret: Secret) -> bytes | None:
    """The master secret if `secret` opens key object `doc`, else None."""
    if doc["type"] != secret.kind:
        return None
    try:
        kek = _kek(secret, doc["kdf"])
        wrapped = base64.b64decode(doc["wrapped"])
        return AESGCM(kek).decrypt(wrapped[:NONCE], wrapped[NONCE:], _key_ad(repo_id, key_id))
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None


def iter_keys(backend: Backend) -> Iterator[tuple[str, KeyInfo | None, dict | None, str]]:
    """(id, info, doc, problem) of every key object; info and doc are None when unreadable."""
    for key_id in sorted(backend.list("keys")):
        try:
            info, doc = parse_key_object(key_id, backend.get("keys", key_id))
            yield key_id, info, doc, ""
        except NotFoundError:
            continue
        except CorruptionError as e:
            yield key_id, None, None, str(e)


def unlock(backend: Backend, repo_id: str, secret: Secret) -> tuple[str, bytes]:
    """(key id, master secret) of the first key object `secret` opens; WrongKeyError if none."""
    for key_id, _info, doc, _problem in iter_keys(backend):
        if doc is None:
            continue
        master = unwrap(repo_id, key_id, doc, secret)
        if master is not None and len(master) == MASTER_LEN:
            return key_id, master
    raise WrongKeyError(WRONG_KEY)


class SealedBackend:
    """A Backend whose small objects (SEALED_KINDS) are sealed on put and opened on get.

    Packs pass through: their blobs are sealed one by one by the blob writer, so ranged reads
    still work. Config and key objects pass through (they must be readable before the key)."""

    def __init__(self, inner: Backend, key: RepoKey) -> None:
        self.inner = inner
        self.key = key

    def get(self, kind: str, name: str) -> bytes:
        data = self.inner.get(kind, name)
        return self.key.open_object(kind, name, data) if kind in SEALED_KINDS else data

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        if kind in SEALED_KINDS:
            raise CorruptionError(f"a ranged read of sealed {kind} object '{short(name)}'")
        return self.inner.get_range(kind, name, offset, length)

    def put(self, kind: str, name: str, data: bytes) -> None:
        self.inner.put(kind, name, self.key.seal_object(kind, name, data) if kind in SEALED_KINDS else data)

    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool:
        sealed = self.key.seal_object(kind, name, data) if kind in SEALED_KINDS else data
        return self.inner.put_if_absent(kind, name, sealed)  # type: ignore[attr-defined]

    def list(self, kind: str) -> Iterator[str]:
        return self.inner.list(kind)

    def delete(self, kind: str, name: str) -> None:
        self.inner.delete(kind, name)

    def stat(self, kind: str, name: str) -> int:
        return self.inner.stat(kind, name)

    def location(self) -> str:
        return self.inner.location()

    def __getattr__(self, attr: str):  # sweep_temp, close, list_with_times, ...: the inner backend's
        return getattr(self.inner, attr)
