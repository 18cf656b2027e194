"""The repository's `config` object: identity, format version and data parameters.

Written once at init and never changed. A reader refuses a repository whose format version
is newer than it understands, and anything that is not a Cairn config. New configs carry
"checksum" (blake3 of the canonical JSON without it) and must be in canonical form, so any
changed byte is a CorruptionError (also a changed version digit: a version newer than this
Cairn's whose checksum is that of a version it knows is damage, not a newer format); configs
written before it existed are still read. Every error
about a damaged config says how to put it back.
Version 1 is plaintext (`encryption` None); version 2 is encrypted and `encryption` names the
cipher, id and KDF scheme (see store/content/crypto.py). The config itself is never secret: the
chunker seed written in it is 0 and the real one derives from the master key.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import blake3

from ..errors import CorruptionError, FormatVersionError, NotARepositoryError

MAGIC = "cairn-repository"
FORMAT_VERSION = 2  # the newest format this Cairn reads and writes
PLAINTEXT_VERSION = 1
ENCRYPTED_VERSION = 2


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC 2020 parameters (pyfastcdc): bytes; the realised mean is about avg + min."""

    algorithm: str = "fastcdc2020"
    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024
    seed: int = 0


@dataclass(frozen=True)
class RepoConfig:
    """Immutable repository parameters."""

    id: str
    version: int = PLAINTEXT_VERSION
    created: float = 0.0
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression: str = "zstd"
    compression_level: int = 1  # measured on the bench corpus: same repo size as 3, ~25% less CPU
    pack_size: int = 16 * 1024 * 1024
    encryption: dict | None = None

    def encode(self) -> bytes:
        """The config object, with "checksum": blake3 of the same document without it."""
        doc = {"magic": MAGIC, **asdict(self)}
        doc["checksum"] = blake3.blake3(_canonical(doc)).hexdigest()
        return _canonical(doc)

    @classmethod
    def new(cls, **kw) -> RepoConfig:
        return cls(id=os.urandom(16).hex(), created=time.time(), **kw)

    @classmethod
    def decode(cls, data: bytes, where: str) -> RepoConfig:
        try:
            doc = json.loads(data)
        except ValueError:
            raise NotARepositoryError(f"'{where}' is not a Cairn repository: config is not readable "
                                      f"({len(data)} bytes)", hint=DAMAGED_CONFIG_HINT) from None
        if not isinstance(doc, dict) or doc.get("magic") != MAGIC:
            raise NotARepositoryError(f"'{where}' is not a Cairn repository: bad config magic",
                                      hint=DAMAGED_CONFIG_HINT)
        damaged = f"unable to read the config of repository '{where}'"
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptionError(f"{damaged}: no valid format version", hint=PUT_BACK_HINT)
        rest = {k: v for k, v in doc.items() if k != "checksum"}
        if version > FORMAT_VERSION:
            # a damaged digit is not a newer format: the checksum tells what the version was written as
            written = next((v for v in range(1, FORMAT_VERSION + 1)
                            if "checksum" in doc and _sums_to(doc["checksum"], {**rest, "version": v})), None)
            if written is not None:
                raise CorruptionError(f"{damaged}: checksum mismatch (format version {written} when written, "
                                      f"{version} now)", hint=PUT_BACK_HINT)
            raise FormatVersionError(
                f"repository '{where}' has format version {version}, newer than this Cairn supports "
                f"({FORMAT_VERSION})", hint="upgrade Cairn to read it")
        unknown = sorted(set(doc) - KEYS - {"checksum"})
        if unknown:
            raise CorruptionError(f"{damaged}: unexpected key '{unknown[0]}'", hint=PUT_BACK_HINT)
        if "checksum" in doc and (not _sums_to(doc["checksum"], rest) or data != _canonical(doc)):
            raise CorruptionError(f"{damaged}: checksum mismatch", hint=PUT_BACK_HINT)
        try:
            ch = ChunkerParams(**doc["chunker"])
            return cls(id=doc["id"], version=version, created=doc.get("created", 0.0), chunker=ch,
                       compression=doc["compression"], compression_level=doc["compression_level"],
                       pack_size=doc["pack_size"], encryption=doc.get("encryption"))
        except (KeyError, TypeError) as e:
            raise CorruptionError(f"{damaged}: malformed ({e})", hint=PUT_BACK_HINT) from None


PUT_BACK_HINT = ("the config object (config/config) is damaged: put it back from a copy of the repository (it is "
                 "small and never changes)")
DAMAGED_CONFIG_HINT = ("if it is one, its config object (config/config) is damaged: put it back from a copy of the "
                       "repository (it is small and never changes)")
KEYS = {"magic", "id", "version", "created", "chunker", "compression", "compression_level", "pack_size",
        "encryption"}


def _sums_to(checksum: object, rest: dict) -> bool:
    """Whether `checksum` is that of the config `rest` (the config without its checksum)."""
    return checksum == blake3.blake3(_canonical(rest)).hexdigest()


def _canonical(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
