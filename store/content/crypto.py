"""Encryption at rest (repository format 2): the master key, its wrapping, sealing, keyed ids.

What always holds:
- every repository of format 2 has one random 32-byte master secret, generated at init and
  never stored in the clear: only wrapped (AES-256-GCM) under a key-encryption key that comes
  from a passphrase (Argon2id, parameters in the key object) or from a key file (32 random
  bytes, base64);
- from the master secret come, by blake3's key derivation, the data key (AES-256-GCM for
  blobs, sets and WAL entries), the id key (blob ids are keyed blake3) and the
  chunker's gear seed; none of them is ever written anywhere;
- a sealed byte string is `nonce (12 random bytes) | ciphertext | tag (16)`; the associated
  data names what it is (a blob's id, or an object's kind and name), so a ciphertext moved to
  another place, or any changed byte, fails to open with a CorruptionError;
- a wrong passphrase or key file is a WrongKeyError with one clear message;
- the master secret also gives the index key (AES-256-GCM for the objects every writer must
  read: index files, locks, gc markers) and a repository X25519 key pair; a *write-only* key
  object wraps only the id key, the chunker seed, the index key and the public key, so a host
  holding it can write blobs, trees, sets and WAL (sealed to the public key: a random data key
  per write session, wrapped in every pack's header by an ephemeral X25519 exchange, or one exchange
  per small object) and deduplicate against the index, but open nothing another writer sealed
  (WriteOnlyKey); a full key (RepoKey) opens both forms.
See docs/format.md, "Format version 2" and "Write-only keys".
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import (
    BackendError,
    CorruptionError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    WrongKeyError,
    short,
)
from ..storage.backend import Backend, shown_id

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
CTX_INDEX = "cairn 2026-12 index key v2"
CTX_X25519 = "cairn 2026-12 repository x25519 key v2"
HKDF_INFO = b"cairn 2026-12 public-key seal v2"

CONTROL_KINDS = ("index", "locks", "gc")  # sealed under the index key: every writer reads them
PK_OBJECT = b"\x01"  # first byte of a small object sealed to the repository's public key
PK_HEADER = b"CAIRNPKW"  # header magic of a pack whose blobs are sealed to the public key
PUBLIC_LEN = 32
WRAP_LEN = PUBLIC_LEN + NONCE + MASTER_LEN + TAG  # ephemeral public key | nonce | sealed data key
PK_HEADER_LEN = len(PK_HEADER) + WRAP_LEN
WRITE_ONLY_PAYLOAD = 32 + 8 + 32 + PUBLIC_LEN  # id key | chunker seed u64 | index key | public key
PACK_KEY_CACHE = 4096


class WriteOnlyKeyError(FailedPreconditionError):
    """What a write-only key cannot do (read others' data, restore, delete, manage keys)."""


ASK_FULL_KEY = "ask a host with a full key"  # how a write-only host is told what only such a host can do


def write_only_refusal(what: str, command: str = "") -> WriteOnlyKeyError:
    """The refusal of `what` ("to prune") on a write-only handle; `command` ("cairn prune") is what
    to ask of a host with a full key."""
    hint = (f"{ASK_FULL_KEY} (passphrase or key file) to run '{command}'" if command
            else "use a full key (passphrase or key file) on a host allowed to read")
    return WriteOnlyKeyError(f"refusing {what}: this host's repository key is write-only", hint=hint)


def _derive(context: str, master: bytes, length: int = 32) -> bytes:
    return blake3.blake3(master, derive_key_context=context).digest(length)


def _seed_of(master: bytes) -> int:
    seed = int.from_bytes(_derive(CTX_CHUNKER, master, 8), "little")
    return (seed >> 1) or 1  # 63 bits (pyfastcdc shifts it left once); 0 means none


def _shared_key(shared: bytes, ephemeral: bytes, public: bytes) -> bytes:
    """The AES-256-GCM key of one X25519 exchange (HKDF-SHA256 bound to both public keys)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=HKDF_INFO + ephemeral + public).derive(shared)


def seal_to(public: bytes, data: bytes, ad: bytes) -> bytes:
    """`ephemeral public key (32) | nonce (12) | AES-256-GCM(HKDF(X25519(e, public)), data, ad)`."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    key = _shared_key(eph.exchange(X25519PublicKey.from_public_bytes(public)), eph_pub, public)
    nonce = os.urandom(NONCE)
    return eph_pub + nonce + AESGCM(key).encrypt(nonce, data, ad)


def _aead_open(aead: AESGCM, sealed: bytes, ad: bytes) -> bytes | None:
    if len(sealed) < OVERHEAD:
        return None
    try:
        return aead.decrypt(sealed[:NONCE], sealed[NONCE:], ad)
    except InvalidTag:
        return None


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


def _seal_with(aead: AESGCM, data: bytes | memoryview, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + aead.encrypt(nonce, bytes(data) if isinstance(data, memoryview) else data, ad)


class _BlobIds:
    """What both kinds of key share: blob ids under the repository's id key (keyed blake3)."""

    _id_key: bytes

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    @property
    def id_key(self) -> bytes:
        """The key of blob ids (keyed blake3): what compares a file with a set's chunk ids."""
        return self._id_key


class RepoKey(_BlobIds):
    """The keys derived from one repository's master secret. Thread-safe; AESGCM releases the
    GIL while it works, so blobs are sealed in parallel on the compress threads."""

    def __init__(self, master: bytes) -> None:
        if len(master) != MASTER_LEN:
            raise CorruptionError("master key has the wrong length")
        self.master = master
        self._aead = AESGCM(_derive(CTX_DATA, master))
        self._id_key = _derive(CTX_IDS, master)
        self.chunker_seed = _seed_of(master)
        self._index_key = _derive(CTX_INDEX, master)
        self._index_aead = AESGCM(self._index_key)
        self._private = X25519PrivateKey.from_private_bytes(_derive(CTX_X25519, master))
        self.public = self._private.public_key().public_bytes_raw()
        self._pack_keys: dict[str, AESGCM] = {}  # packs sealed to the public key: their data key
        self._pack_keys_lock = threading.Lock()
        # reads a pack's first PK_HEADER_LEN bytes when a caller gives no header (set by the
        # repository handle, so every reader of blobs opens packs sealed to the public key)
        self.pack_header_reader: Callable[[str], bytes] | None = None

    write_only = False
    pack_header = b"CAIRNPK1"  # a full key writes symmetric packs (store/content/packs.py HEADER)

    def write_only_payload(self) -> bytes:
        """What a write-only key object wraps: id key | chunker seed | index key | public key."""
        return self._id_key + self.chunker_seed.to_bytes(8, "little") + self._index_key + self.public

    def _unwrap_to_me(self, wrapped: bytes, ad: bytes) -> bytes | None:
        """Open `seal_to(self.public, ...)` output."""
        if len(wrapped) < PUBLIC_LEN + OVERHEAD:
            return None
        eph_pub = wrapped[:PUBLIC_LEN]
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        except ValueError:  # an all-zero shared secret (a low-order point): not ours
            return None
        return _aead_open(AESGCM(_shared_key(shared, eph_pub, self.public)), wrapped[PUBLIC_LEN:], ad)

    def _pack_aead(self, pack: str, header: bytes | Callable[[], bytes] | None) -> AESGCM | None:
        """The data key of a pack sealed to the public key (from its header), else None."""
        aead = self._pack_keys.get(pack)
        if aead is not None or header is None:
            return aead
        head = header() if callable(header) else header
        if len(head) < PK_HEADER_LEN or head[:len(PK_HEADER)] != PK_HEADER:
            return None
        data_key = self._unwrap_to_me(bytes(head[len(PK_HEADER):PK_HEADER_LEN]), b"pack-key")
        if data_key is None:
            return None
        aead = AESGCM(data_key)
        with self._pack_keys_lock:  # restore threads read packs in parallel
            if len(self._pack_keys) >= PACK_KEY_CACHE:
                self._pack_keys.pop(next(iter(self._pack_keys)), None)
            self._pack_keys[pack] = aead
        return aead

    def _open_packed(self, pack: str, sealed: bytes, ad: bytes,
                     header: bytes | Callable[[], bytes] | None) -> bytes | None:
        known = self._pack_keys.get(pack)
        if known is not None:
            return _aead_open(known, sealed, ad)
        if header is None and self.pack_header_reader is not None:
            read = self.pack_header_reader
            header = lambda: read(pack)  # noqa: E731
        plain = self.open(sealed, ad)
        if plain is None:
            aead = self._pack_aead(pack, header)
            plain = _aead_open(aead, sealed, ad) if aead is not None else None
        return plain

    def seal(self, data: bytes | memoryview, ad: bytes) -> bytes:
        return _seal_with(self._aead, data, ad)

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

    def open_blob(self, pack: str, bid: bytes, sealed: bytes,
                  header: bytes | Callable[[], bytes] | None = None) -> bytes:
        """Open a blob sealed under the data key, or (given the pack's `header`, or a reader of
        it) under the data key of a pack sealed to the public key."""
        plain = self._open_packed(pack, sealed, b"blob" + bid, header)
        if plain is None:
            raise CorruptionError(f"unable to read pack '{short(pack)}': authentication failed "
                                  f"for blob '{short(bid.hex())}'")
        return plain

    # pack trailers: the associated data is b"pack-trailer"
    def seal_trailer(self, trailer: bytes) -> bytes:
        return self.seal(trailer, b"pack-trailer")

    def open_trailer(self, pack: str, sealed: bytes, header: bytes | Callable[[], bytes] | None = None) -> bytes:
        plain = self._open_packed(pack, sealed, b"pack-trailer", header)
        if plain is None:
            raise CorruptionError(f"unable to read pack '{short(pack)}': authentication failed for its trailer")
        return plain

    # small objects: the associated data is b"object:" + kind + b"/" + name
    # (index files, locks and gc markers under the index key; others under the data key;
    # objects sealed to the public key start with PK_OBJECT; readers try every form they know)
    def seal_object(self, kind: str, name: str, data: bytes) -> bytes:
        ad = f"object:{kind}/{name}".encode()
        if kind in CONTROL_KINDS:
            nonce = os.urandom(NONCE)
            return nonce + self._index_aead.encrypt(nonce, data, ad)
        return self.seal(data, ad)

    def reseal_control(self, kind: str, name: str, sealed: bytes) -> bytes | None:
        """A control object sealed under the data key (as written before the index key
        existed), sealed again under the index key; None when it needs nothing or is damaged."""
        ad = f"object:{kind}/{name}".encode()
        if kind not in CONTROL_KINDS or _aead_open(self._index_aead, sealed, ad) is not None:
            return None
        plain = self.open(sealed, ad)
        return None if plain is None else self.seal_object(kind, name, plain)

    def open_object(self, kind: str, name: str, sealed: bytes) -> bytes:
        ad = f"object:{kind}/{name}".encode()
        plain = _aead_open(self._index_aead, sealed, ad) if kind in CONTROL_KINDS else None
        if plain is None:
            plain = self.open(sealed, ad)  # the data key (control objects written before the index key)
        if plain is None and sealed[:1] == PK_OBJECT:
            plain = self._unwrap_to_me(sealed[1:], ad)
        if plain is None:
            raise CorruptionError(f"unable to read {kind} object '{shown_id(name)}': authentication failed")
        return plain


class WriteOnlyKey(_BlobIds):
    """What a write-only key object unwraps to: ids, the chunker seed, the index key and the
    repository's public key. It seals blobs and pack trailers under a random data key of its
    own (wrapped to the public key in `pack_header`, which starts every pack it writes; each
    write session gets its own by `for_writer`), sets and WAL catalog entries to the public
    key, and index files, locks and markers under the index key. It opens only index-key
    objects and what this very object sealed: never a blob, tree, set or WAL entry of another
    writer or session (CorruptionError: authentication failed)."""

    write_only = True
    master = None

    def __init__(self, payload: bytes) -> None:
        if len(payload) != WRITE_ONLY_PAYLOAD:
            raise CorruptionError("write-only key material has the wrong length")
        self._payload = payload
        self._id_key = payload[:32]
        self.chunker_seed = int.from_bytes(payload[32:40], "little")
        self._index_aead = AESGCM(payload[40:72])
        self.public = payload[72:]
        data_key = os.urandom(MASTER_LEN)  # this object's: no other ever holds it
        self._aead = AESGCM(data_key)
        self.pack_header = PK_HEADER + seal_to(self.public, data_key, b"pack-key")

    def for_writer(self) -> WriteOnlyKey:
        """The same key with a data key of its own, for one write session: what one session
        sealed, no later session (nor the handle) can open again."""
        return WriteOnlyKey(self._payload)

    def _seal(self, data: bytes | memoryview, ad: bytes) -> bytes:
        return _seal_with(self._aead, data, ad)

    def seal_blob(self, bid: bytes, stored: bytes | memoryview) -> bytes:
        return self._seal(stored, b"blob" + bid)

    def open_blob(self, pack: str, bid: bytes, sealed: bytes,
                  header: bytes | Callable[[], bytes] | None = None) -> bytes:
        plain = _aead_open(self._aead, sealed, b"blob" + bid)  # only what this handle wrote
        if plain is None:
            raise CorruptionError(f"unable to read pack '{short(pack)}': authentication failed "
                                  f"for blob '{short(bid.hex())}' (the key is write-only)")
        return plain

    def seal_trailer(self, trailer: bytes) -> bytes:
        return self._seal(trailer, b"pack-trailer")

    def open_trailer(self, pack: str, sealed: bytes, header: bytes | Callable[[], bytes] | None = None) -> bytes:
        plain = _aead_open(self._aead, sealed, b"pack-trailer")
        if plain is None:
            raise CorruptionError(f"unable to read pack '{short(pack)}': authentication failed for its trailer "
                                  "(the key is write-only)")
        return plain

    def seal_object(self, kind: str, name: str, data: bytes) -> bytes:
        ad = f"object:{kind}/{name}".encode()
        if kind in CONTROL_KINDS:
            nonce = os.urandom(NONCE)
            return nonce + self._index_aead.encrypt(nonce, data, ad)
        return PK_OBJECT + seal_to(self.public, data, ad)

    def open_object(self, kind: str, name: str, sealed: bytes) -> bytes:
        ad = f"object:{kind}/{name}".encode()
        plain = _aead_open(self._index_aead, sealed, ad) if kind in CONTROL_KINDS else None
        if plain is None:
            raise CorruptionError(f"unable to read {kind} object '{shown_id(name)}': authentication failed"
                                  + ("" if kind in CONTROL_KINDS else " (the key is write-only)"))
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


def _key_ad(repo_id: str, key_id: str, access: str = "full") -> bytes:
    base = f"key:{repo_id}/{key_id}"
    return (base if access == "full" else f"{base}/{access}").encode()


def make_key_object(repo_id: str, master: bytes, secret: Secret, argon2: dict | None = None,
                    *, write_only: bytes | None = None) -> tuple[str, bytes]:
    """A new key object wrapping `master` under `secret`: returns (key id, bytes). With
    `write_only` (RepoKey.write_only_payload()) it wraps that instead and says
    `"access": "write-only"` (bound into the associated data)."""
    key_id = os.urandom(16).hex()
    salt = os.urandom(16)
    if secret.kind == "passphrase":
        kdf = {"name": "argon2id", "salt": _b64(salt), **(argon2 or ARGON2)}
    else:
        kdf = {"name": "blake3-derive", "salt": _b64(salt)}
    nonce = os.urandom(NONCE)
    access = "full" if write_only is None else "write-only"
    payload = master if write_only is None else write_only
    wrapped = nonce + AESGCM(_kek(secret, kdf)).encrypt(nonce, payload, _key_ad(repo_id, key_id, access))
    doc = {"magic": KEY_MAGIC, "version": KEY_VERSION, "type": secret.kind, "kdf": kdf,
           "cipher": CIPHER, "wrapped": _b64(wrapped), "created": round(time.time(), 3),
           "repository": repo_id}  # not secret (the config says it too); names a key put in the wrong place
    if write_only is not None:
        doc["access"] = access
    return key_id, (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    type: str
    created: float
    kdf: str
    access: str = "full"  # or "write-only"


def parse_key_object(key_id: str, data: bytes) -> tuple[KeyInfo, dict]:
    try:
        doc = json.loads(data)
        if doc["magic"] != KEY_MAGIC or doc["version"] != KEY_VERSION or doc["cipher"] != CIPHER:
            raise ValueError("magic")
        base64.b64decode(doc["wrapped"], validate=True)
        access = str(doc.get("access", "full"))
        if access not in ("full", "write-only"):
            raise ValueError("access")
        info = KeyInfo(key_id, str(doc["type"]), float(doc["created"]), str(doc["kdf"]["name"]), access)
        return info, doc
    except (ValueError, KeyError, TypeError):
        raise CorruptionError(f"unable to read key '{short(key_id)}': not a valid key object") from None


def unwrap(repo_id: str, key_id: str, doc: dict, secret: Secret) -> bytes | None:
    """What key object `doc` wraps (the master secret, or a write-only key's material) if
    `secret` opens it, else None."""
    if doc["type"] != secret.kind:
        return None
    try:
        kek = _kek(secret, doc["kdf"])
        wrapped = base64.b64decode(doc["wrapped"])
        ad = _key_ad(repo_id, key_id, str(doc.get("access", "full")))
        return AESGCM(kek).decrypt(wrapped[:NONCE], wrapped[NONCE:], ad)
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
        except (CorruptionError, BackendError) as e:  # damaged, or refused (not a file, no permission)
            yield key_id, None, None, str(e)


def unlock(backend: Backend, repo_id: str, secret: Secret) -> tuple[str, bytes]:
    """(key id, master secret) of the first key object `secret` opens; WrongKeyError if none."""
    key_id, key = unlock_key(backend, repo_id, secret)
    if isinstance(key, WriteOnlyKey):
        raise WrongKeyError(WRONG_KEY)
    return key_id, key.master


def unlock_key(backend: Backend, repo_id: str, secret: Secret) -> tuple[str, RepoKey | WriteOnlyKey]:
    """(key id, key) of a key object `secret` opens, full keys before write-only ones (a
    secret that opens both gives the full key); WrongKeyError if none."""
    limited: tuple[str, WriteOnlyKey] | None = None
    readable, damaged = 0, []
    for key_id, info, doc, problem in iter_keys(backend):
        if doc is None or info is None:
            damaged.append(problem)
            continue
        readable += 1
        if info.access == "write-only" and limited is not None:
            continue
        payload = unwrap(repo_id, key_id, doc, secret)
        if payload is None:
            continue
        if info.access == "full" and len(payload) == MASTER_LEN:
            return key_id, RepoKey(payload)
        if info.access == "write-only" and len(payload) == WRITE_ONLY_PAYLOAD:
            limited = (key_id, WriteOnlyKey(payload))
    if limited is not None:
        return limited
    owners = {str(doc.get("repository", "")) for _, info, doc, _ in iter_keys(backend) if doc is not None}
    if readable and "" not in owners and repo_id not in owners:  # every key names another repository
        raise CorruptionError(
            f"unable to open repository: its config is repository '{short(repo_id)}', but its key objects "
            f"belong to {', '.join(repr(short(o)) for o in sorted(owners))}: the config or the keys are "
            "another repository's", hint="put back this repository's own config/config and keys/ objects")
    if damaged and not readable:  # not a wrong secret: there is no key object to try it on
        raise CorruptionError(f"unable to open repository: no key object can be read ({len(damaged)} damaged: "
                              f"{damaged[0]})", hint="restore the keys/ objects from a copy of the repository")
    if damaged:
        raise WrongKeyError(f"{WRONG_KEY} ({len(damaged)} more key objects cannot be read: {damaged[0]})")
    if not readable:  # an encrypted repository always has a key object: they were deleted
        raise CorruptionError("unable to open repository: it is encrypted and holds no key object (keys/ is empty)",
                              hint="restore the keys/ objects from a copy of the repository; without one of "
                                   "them its data cannot be decrypted")
    raise WrongKeyError(WRONG_KEY)


class SealedBackend:
    """A Backend whose small objects (SEALED_KINDS) are sealed on put and opened on get.

    Packs pass through: their blobs are sealed one by one by the blob writer, so ranged reads
    still work. Config and key objects pass through (they must be readable before the key)."""

    def __init__(self, inner: Backend, key: RepoKey | WriteOnlyKey) -> None:
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
