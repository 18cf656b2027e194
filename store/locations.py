"""Repository locations: a local directory or `s3://bucket/prefix`, turned into a Backend.

What always holds: `s3://` locations give an `S3Backend` that has already probed its bucket
(so a bad bucket, credentials or endpoint, or a store that leaves the probe unanswered for
`stall_timeout`, fails here, in one line); anything else is a local directory. The
object-store options are accepted only for `s3://` locations.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AlreadyExistsError, InvalidArgumentError, NotARepositoryError, NotFoundError
from .storage.backend import Backend, LocalBackend

if TYPE_CHECKING:
    from .content.crypto import Secret
    from .repository import Repository

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class S3Options:
    """How to reach an object store; None means "boto3's usual sources" (environment, files)."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    credentials_file: str | None = None
    stall_timeout: float | None = None  # seconds an operation may wait unanswered (None: the default)


def is_s3(location: str) -> bool:
    """Whether `location` names an object-store repository."""
    return location.startswith(S3_SCHEME)


_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


def parse_s3(location: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; InvalidArgumentError if malformed."""
    if not is_s3(location):
        raise InvalidArgumentError(f"expected a location like 's3://bucket/prefix', got '{location}'")
    bucket, _, prefix = location[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise InvalidArgumentError(f"invalid repository location '{location}': no bucket name")
    if not _BUCKET.fullmatch(bucket):  # what the S3 client accepts (stores are stricter: 3-63, lower case)
        raise InvalidArgumentError(f"invalid repository location '{location}': bucket name '{bucket}' may hold "
                                   "only letters, digits, '.', '-' and '_'")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise InvalidArgumentError(f"invalid repository location '{location}': empty or dot path segment")
    return bucket, prefix


def open_backend(location: str, options: S3Options | None = None, *, probe_conditional: bool = True) -> Backend:
    """The backend of `location`. For S3 this connects and probes (see s3backend.py)."""
    if is_s3(location):
        from .storage.s3 import S3Backend  # boto3 is imported only when a bucket is used

        opts = options or S3Options()
        bucket, prefix = parse_s3(location)
        path_style = opts.path_style
        if path_style is None and opts.endpoint is None and _endpoint_from_environment():
            path_style = True  # as for a configured endpoint: S3-compatible stores rarely do virtual hosts
        stall = {} if opts.stall_timeout is None else {"stall_timeout": opts.stall_timeout}
        return S3Backend(bucket, prefix, endpoint=opts.endpoint, region=opts.region,
                         path_style=path_style, credentials_file=opts.credentials_file,
                         probe_conditional=probe_conditional, **stall)
    if options is not None and options != S3Options():
        raise InvalidArgumentError(f"endpoint, region, path_style, credentials_file and stall_timeout need an s3:// "
                                   f"repository, not '{location}'")
    return LocalBackend(location)


def refuse_occupied(backend: Any) -> None:
    """Refuse to make a repository under a bucket prefix that holds other objects (another
    tool's repository, anything): only key objects of an init killed before its config, which
    init checks and replaces, and conditional-write probes may be there."""
    other = backend.first_object_outside(("keys",))
    if other is not None:
        raise AlreadyExistsError(f"unable to create a repository at '{backend.location()}': the prefix holds "
                                 f"objects already ('{other}')",
                                 hint="choose an empty prefix: a repository is never made over other objects")


def _endpoint_from_environment() -> bool:
    """Whether boto3 takes the S3 endpoint from the environment (AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL), as `cairnd --repo s3://...` on a recovery host does."""
    return bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def open_repository(location: str, options: S3Options | None = None, *, create: bool = False,
                    read_only: bool = False, secret: Secret | None = None, cache_dir: str | None = None,
                    cache_size: int | None = None) -> Repository:
    """Open the repository at `location` (with `secret` for an encrypted one); with `create`,
    initialise an empty location first (encrypted under `secret` when given). An object-store
    repository keeps its index files, sets and trees in a local cache under `cache_dir`
    (store/storage/cache.py; a local repository needs none)."""
    from .repository import Repository  # imported here: repository.py may come to use this module

    if not is_s3(location):
        return Repository.open_local(location, create=create, read_only=read_only, secret=secret)
    backend = open_backend(location, options, probe_conditional=not read_only)
    try:
        try:
            backend.get("config", "config")
        except NotFoundError:
            if create:
                refuse_occupied(backend)
                return Repository.init(backend, secret=secret)
            raise NotARepositoryError(f"'{backend.location()}' is not a Cairn repository: no config") from None
        return Repository.open(backend, read_only=read_only, secret=secret, cache_dir=cache_dir,
                               cache_size=cache_size)
    except BaseException:
        backend.close()
        raise

