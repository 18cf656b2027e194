"""A repository in an S3-compatible object store (AWS S3, Ceph RGW, SeaweedFS, MinIO), on boto3.

`S3Backend` implements the `Backend` protocol of backend.py over one bucket and key prefix.
Object keys mirror the local layout: `<prefix>/<kind>/<name>`, packs fanned out by the first
two hex digits (`<prefix>/packs/ab/ab12...`). What always holds:
- the backend is usable once constructed: the constructor probes the bucket, so a missing
  bucket, wrong credentials or an unreachable endpoint is one clear line at open
  (BackendError, or NotFoundError for a missing bucket), never at the first backup;
- `put` returns only after the object store answered the PUT with success (S3 makes an object
  visible whole or not at all, so there is no temp-and-rename);
- every operation is retried as a whole on transient failures (connection errors, timeouts,
  500/502/503/504, throttling), at most `attempts` times with capped exponential backoff and
  jitter, on top of botocore's own retries; the last failure is raised as BackendError;
- a silent store is bounded: every request has socket timeouts (connect, and each send or
  read: at most a quarter of `stall_timeout`), and once an operation (all its attempts,
  botocore's and ours, and the backoff between them) has waited `stall_timeout` seconds
  without any answer it stops retrying and raises UnavailableError "unable to <what> at
  s3://b/p: the object store at <endpoint> did not answer within <N> s" (silence.py says what
  counts); the probe at open likewise, so a daemon started against a stalled store exits with
  that line instead of waiting. An answer of any kind resets the count, and a transfer that is
  moving is never cut, however long it takes. Once one operation has failed so, each later
  one ends at its first unanswered request until the store answers again;
- `get` / `get_range` / `stat` / `delete` of a missing object raise NotFoundError;
- `put_if_absent` creates an object only if none exists, with a conditional write
  (`If-None-Match: *`) when the store honours it. Whether it does is probed at open (a probe
  object is written twice; the second write must be refused with 412) and exposed as
  `conditional_writes`. When it is False, `put_if_absent` falls back to "stat, then put",
  which is atomic only against writers of this process: two hosts creating the same
  create-once object at once may both believe they won, and the last writer's content stays.
  Content-addressed objects (packs, index, trees) are unaffected, since both writers store the
  same bytes; lock and other create-once objects written by several hosts are not safe then;
- requests carry botocore's own checksums (CRC32 of every upload, checks of every download:
  its `request_checksum_calculation` / `response_checksum_validation`, on by default since
  boto3 1.36) only when the operation requires them, unless the operator set either in the
  environment (AWS_REQUEST_CHECKSUM_CALCULATION, ...) or the profile's config file. Several
  S3-compatible stores (OVH, Backblaze B2, Huawei OBS, older MinIO) refuse PUTs with those
  headers; the repository's own integrity does not rest on them (every blob is checked against
  its id, sealed blobs by AES-GCM), and computing them cost about 7 ms of CPU per 16 MiB pack
  uploaded here;
- over plain HTTP the SigV4 signature covers every body's SHA-256 (nothing else protects it in
  transit); over HTTPS it does not (`UNSIGNED-PAYLOAD`, S3's `payload_signing_enabled` off, as
  botocore itself does for streaming uploads): TLS protects the body in transit, and hashing it
  cost about 11 ms of CPU per 16 MiB pack here, more than half of what a PUT costs the client;
- an upload's body is sent from the caller's buffer, never copied, in pieces of at most 64 KiB:
  each send must finish within the socket timeout, so a link that moves 64 KiB per timeout
  (2 KiB/s at the default bound) never cuts an upload (the HTTP layer's own piece is 16 KiB);
- a small read of a pack fetches the aligned 2 MiB block around it and keeps the last 16 blocks
  (packs never change once written), and starts fetching the next block in the background: a
  restore's thousands of chunk reads become a few GETs, overlapped with its work.
  A pack deleted by another host may still be served from those blocks for a short while;
  garbage collection's grace period is what makes that harmless. `forget_blocks()` drops them
  all, so that a check reads every pack from the store, never from what was read before it.
"""

from __future__ import annotations

import configparser
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import boto3
import botocore.exceptions as bexc
import urllib3.exceptions
from botocore.config import Config as BotoConfig

from ..errors import BackendError, CairnError, NotFoundError, UnavailableError
from .backend import KINDS, ObjectInfo, shown_id
from .silence import Silence

T = TypeVar("T")

DEFAULT_UPLOADS = 4  # pack PUTs a write session keeps in flight (`[repository] uploads`)
DEFAULT_ATTEMPTS = 4  # whole-operation attempts (each with botocore's own retries inside)
SDK_ATTEMPTS = 3  # botocore's own attempts per request (its "standard" retry mode)
DEFAULT_BACKOFF = 0.25  # seconds before the second attempt; doubles each time
MAX_BACKOFF = 8.0
DEFAULT_STALL = 120.0  # seconds an operation may wait unanswered (`[repository] stall_timeout`)
CONNECT_TIMEOUT = 10.0  # socket timeouts of each request, at most a quarter of the stall bound
READ_TIMEOUT = 60.0
SEND_BLOCK = 64 * 1024  # most bytes of an upload's body handed to one send (module docstring)
READ_BLOCK = 2 * 1024 * 1024  # small pack reads fetch the aligned block around them ...
CACHED_BLOCKS = 16  # ... and keep this many blocks (32 MiB) for the reads that follow
PROBE_DIR = "probe"  # under the prefix, beside the kinds; holds only short-lived probe objects
PROBE_MAX_AGE = 3600.0  # a probe object older than this is a leftover: the next open that may delete it does
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
})
TRANSIENT_EXC = (
    bexc.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, timeouts, proxy errors
    bexc.HTTPClientError,
    bexc.IncompleteReadError,
    bexc.ResponseStreamingError,
    urllib3.exceptions.HTTPError,  # a body read cut short
    OSError,
)
SILENCE_EXC = (  # a request that got no answer in time (the store is silent, not refusing)
    bexc.ConnectTimeoutError,
    bexc.ReadTimeoutError,
    urllib3.exceptions.TimeoutError,
    TimeoutError,
)


def _status(e: bexc.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(e: bexc.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code") or "")


def _is_missing(e: bexc.ClientError) -> bool:
    return _status(e) == 404 or _code(e) in ("NoSuchKey", "NotFound", "404")


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, TRANSIENT_EXC):
        return True
    if isinstance(e, bexc.ClientError):
        return _status(e) in TRANSIENT_STATUS or _code(e) in TRANSIENT_CODES
    return False


def _is_silence(e: BaseException) -> bool:
    """Whether `e` says a request got no answer in time: a timeout, also one botocore reports as
    a closed connection (sending a body the store stopped reading timed out). A connection
    refused is not silence (urllib3 makes its error a kind of connect timeout)."""
    stack, looked = [e], 0
    while stack and looked < 8:
        x = stack.pop()
        looked += 1
        if isinstance(x, bexc.EndpointConnectionError | urllib3.exceptions.NewConnectionError):
            return False
        if isinstance(x, SILENCE_EXC):
            return True
        inner = getattr(x, "kwargs", {}).get("error") if isinstance(getattr(x, "kwargs", None), dict) else None
        stack += [a for a in (inner, x.__cause__, *x.args) if isinstance(a, BaseException)]
    return False


def _reason(e: BaseException) -> str:
    """One line saying what went wrong, without botocore's operation boilerplate."""
    if isinstance(e, bexc.ClientError):
        code, status = _code(e), _status(e)
        msg = str(e.response.get("Error", {}).get("Message") or "").strip()
        head = f"{code} (HTTP {status})" if code and code != str(status) else f"HTTP {status}"
        return f"{head}: {msg}" if msg and msg != code else head
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # botocore puts the reason on line 2
    return " ".join(lines) if lines else type(e).__name__


def read_credentials_file(path: str, profile: str = "default") -> dict[str, str]:
    """Keys for boto3 from an AWS-style credentials file (INI, [profile] with aws_access_key_id
    and aws_secret_access_key, optionally aws_session_token). BackendError if unusable."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise BackendError(f"unable to read credentials file '{path}': {e.strerror or e}") from e
    except configparser.Error as e:
        raise BackendError(f"unable to read credentials file '{path}': not an INI file") from e
    if not parser.has_section(profile):
        raise BackendError(f"credentials file '{path}' has no [{profile}] section")
    section = parser[profile]
    out: dict[str, str] = {}
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        value = section.get(key, "").strip()
        if value:
            out[key] = value
    for key in ("aws_access_key_id", "aws_secret_access_key"):
        if key not in out:
            raise BackendError(f"credentials file '{path}' has no {key} in [{profile}]")
    return out


CHECKSUM_SETTINGS = ("request_checksum_calculation", "response_checksum_validation")


def sdk_checksums(session: Any) -> dict[str, str]:
    """botocore's checksum settings for a client of `session`: "when_required" for each that the
    operator did not set (module docstring); an operator's own setting is left to botocore."""
    try:
        scoped = session._session.get_scoped_config()
    except bexc.BotoCoreError:
        scoped = {}  # a profile that does not exist: botocore names it when the client is made
    return {key: "when_required" for key in CHECKSUM_SETTINGS
            if not os.environ.get(f"AWS_{key.upper()}") and not scoped.get(key)}


class S3Backend:
    """Objects under `s3://bucket/prefix`. Thread-safe: boto3 clients may be shared by threads."""

    default_uploads = DEFAULT_UPLOADS  # a write session's uploads in flight unless configured

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 region: str | None = None, path_style: bool | None = None,
                 credentials_file: str | None = None, attempts: int = DEFAULT_ATTEMPTS,
                 backoff: float = DEFAULT_BACKOFF, sdk_attempts: int = SDK_ATTEMPTS,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 stall_timeout: float = DEFAULT_STALL, max_connections: int = 16,
                 probe_conditional: bool = True, read_block: int = READ_BLOCK,
                 cached_blocks: int = CACHED_BLOCKS, readahead: bool = True) -> None:
        if not bucket:
            raise BackendError("invalid S3 location: no bucket name")
        if attempts < 1:
            raise BackendError(f"invalid S3 retry attempts {attempts}: expected at least 1")
        if not stall_timeout > 0:
            raise BackendError(f"invalid S3 stall timeout {stall_timeout}: expected above zero")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint or None
        self.attempts = attempts
        self.backoff = backoff
        self.stall_timeout = stall_timeout
        self.connect_timeout = min(connect_timeout, stall_timeout / 4)  # so a silence is asked again,
        self.read_timeout = min(read_timeout, stall_timeout / 4)  # and a failure's later steps stay short
        self._silence = Silence(stall_timeout)
        self._lock = threading.Lock()
        self.read_block = read_block
        self._blocks = _BlockCache(cached_blocks)
        self.readahead = readahead and read_block > 0 and cached_blocks > 1
        self._ahead: ThreadPoolExecutor | None = None
        keys = read_credentials_file(credentials_file) if credentials_file else {}
        if path_style is None:
            path_style = self.endpoint is not None  # S3-compatible stores rarely do virtual hosts
        try:
            session = boto3.session.Session(region_name=region or None)
            checksums = sdk_checksums(session)

            def client(s3: dict[str, Any]) -> Any:
                config = BotoConfig(
                    region_name=region or None,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_pool_connections=max_connections,
                    retries={"mode": "standard", "total_max_attempts": sdk_attempts},
                    s3=s3,
                    **checksums,
                )
                return session.client("s3", endpoint_url=self.endpoint, config=config, **keys)

            s3_options = {"addressing_style": "path" if path_style else "auto"}
            self._s3 = client(s3_options)
            if self._s3.meta.endpoint_url.startswith("https:"):
                # TLS protects every body in transit: the signature need not hash it (module docstring)
                self._s3 = client({**s3_options, "payload_signing_enabled": False})
        except (bexc.BotoCoreError, ValueError) as e:
            raise BackendError(f"unable to set up S3 client for {self.location()}: {_reason(e)}") from e
        self.where = self._s3.meta.endpoint_url  # as resolved: config, AWS_ENDPOINT_URL*, or AWS's
        events = self._s3.meta.events  # botocore's own attempts count towards the silence too
        events.register_first("before-send.s3", self._on_send)
        events.register_first("needs-retry.s3", self._on_attempt)
        self._probe_bucket()
        self.conditional_writes: bool | None = None  # unknown until probed
        if probe_conditional:
            self.conditional_writes = self._probe_conditional()

    # -- naming ------------------------------------------------------------------------------

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _base(self, kind: str) -> str:
        if kind not in KINDS:
            raise BackendError(f"unknown object kind '{kind}'")
        return f"{self.prefix}/{kind}/" if self.prefix else f"{kind}/"

    def _key(self, kind: str, name: str) -> str:
        base = self._base(kind)
        if "/" in name or name in ("", ".", ".."):
            raise BackendError(f"invalid object name '{name}'")
        return f"{base}{name[:2]}/{name}" if kind == "packs" else base + name

    # -- retries -----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], *, missing: str | None = None,
              attempts: int | None = None) -> T:
        """Run `fn` (one whole operation), retrying transient failures with backoff.

        A 404 becomes NotFoundError(`missing`) when `missing` is given; other failures become
        BackendError naming `what`, the location and the reason."""
        attempts = attempts or self.attempts
        with self._silence.operation():
            return self._attempts(what, fn, missing, attempts)

    def _attempts(self, what: str, fn: Callable[[], T], missing: str | None, attempts: int) -> T:
        for attempt in range(1, attempts + 1):
            delay = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            try:
                return fn()
            except bexc.ClientError as e:
                if missing is not None and _is_missing(e):
                    if _code(e) == "NoSuchBucket":
                        raise NotFoundError(self._no_bucket()) from None
                    raise NotFoundError(missing) from None
                if not _is_transient(e):
                    raise BackendError(self._failure(what, e, attempt)) from e
                if attempt == attempts:
                    raise UnavailableError(self._failure(what, e, attempt)) from e
            except bexc.NoCredentialsError as e:
                raise BackendError(self._no_credentials()) from e
            except (bexc.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as e:
                if _is_silence(e):
                    self._silence.timed_out(e, self._timeout_of(e))
                    if self._silence.exhausted(ahead=delay if attempt < attempts else 0.0):
                        raise UnavailableError(self._stalled(what)) from e
                if not _is_transient(e) or attempt == attempts:
                    unanswered = _is_transient(e) or isinstance(e, bexc.EndpointConnectionError)
                    raise (UnavailableError if unanswered else BackendError)(self._failure(what, e, attempt)) from e
            time.sleep(delay)
        raise AssertionError("unreachable")

    # -- silence -----------------------------------------------------------------------------

    def _timeout_of(self, e: BaseException) -> float:
        return self.connect_timeout if isinstance(e, bexc.ConnectTimeoutError) else self.read_timeout

    def _on_send(self, **_: Any) -> None:
        """botocore is sending a request (each of its attempts)."""
        self._silence.attempt()

    def _on_attempt(self, response: Any = None, caught_exception: BaseException | None = None, **_: Any) -> None:
        """After each of botocore's attempts, before its retry handler: an answer resets the
        silence; a timeout counts, and once the silence reaches the bound botocore's further
        retries are cut by raising the timeout (the operation's caller reports it)."""
        if response is not None:
            self._silence.answered()
        elif caught_exception is not None and _is_silence(caught_exception):
            self._silence.timed_out(caught_exception, self._timeout_of(caught_exception))
            if self._silence.exhausted():
                raise caught_exception

    def _stalled(self, what: str) -> str:
        return (f"unable to {what} at {self.location()}: the object store at {self.where} "
                f"did not answer within {self.stall_timeout:g} s")

    def _failure(self, what: str, e: BaseException, attempt: int) -> str:
        tries = f" (after {attempt} attempts)" if attempt > 1 else ""
        if isinstance(e, bexc.EndpointConnectionError):
            return f"unable to {what}: S3 endpoint '{self.where}' is unreachable{tries}"
        return f"unable to {what} at {self.location()}: {_reason(e)}{tries}"

    def _no_bucket(self) -> str:
        return f"bucket '{self.bucket}' does not exist at endpoint {self.where}"

    def _no_credentials(self) -> str:
        return ("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a shared "
                "credentials file, or repository.credentials_file")

    # -- probes at open ----------------------------------------------------------------------

    def _probe_bucket(self) -> None:
        """List one key under the prefix: proves the endpoint answers, the bucket exists and
        the credentials are accepted. One line per failure, raised now rather than later; a
        store that stays silent is retried until `stall_timeout` and then reported."""
        with self._silence.operation():
            for attempt in range(1, self.attempts + 1):
                try:
                    self._s3.list_objects_v2(Bucket=self.bucket, Prefix=self._base("config"), MaxKeys=1)
                    return
                except (bexc.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as e:
                    if not _is_silence(e):
                        self._unopened(e)
                    self._silence.timed_out(e, self._timeout_of(e))
                    if self._silence.exhausted(ahead=self.backoff if attempt < self.attempts else 0.0):
                        raise UnavailableError(self._stalled("open the repository")) from None
                    if attempt == self.attempts:
                        self._unopened(e)
                    time.sleep(self.backoff)  # silent but not for long enough: ask again
                except bexc.ClientError as e:
                    self._refused(e)

    def _unopened(self, e: BaseException) -> NoReturn:
        """The probe's failure that is not silence: one line saying which."""
        if isinstance(e, bexc.NoCredentialsError):
            raise BackendError(self._no_credentials()) from None
        if isinstance(e, bexc.EndpointConnectionError):
            raise BackendError(f"S3 endpoint '{self.where}' is unreachable") from None
        if isinstance(e, bexc.BotoCoreError):
            raise BackendError(f"unable to open {self.location()} at {self.where}: {_reason(e)}") from None
        raise e

    def _refused(self, e: bexc.ClientError) -> NoReturn:
        """The probe's answer, when it is a refusal: one line saying which."""
        code, status = _code(e), _status(e)
        if code == "NoSuchBucket" or (status == 404 and code in ("", "404", "NotFound")):
            raise NotFoundError(self._no_bucket()) from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "AuthorizationHeaderMalformed") or status == 401:
            raise BackendError(
                f"S3 credentials were refused by {self.where} for bucket '{self.bucket}': {code or status}"
            ) from None
        if code == "AccessDenied" or status == 403:
            raise BackendError(
                f"access denied to bucket '{self.bucket}' at endpoint {self.where}: "
                "the credentials lack permission to list it"
            ) from None
        raise BackendError(f"unable to open {self.location()} at {self.where}: {_reason(e)}") from None

    def first_object_outside(self, kinds: tuple[str, ...]) -> str | None:
        """The key of the first object under the prefix that is neither in one of `kinds` nor a
        conditional-write probe: what says the prefix holds something that is not (only) Cairn's
        objects of those kinds (init refuses such a prefix). None when there is none."""
        base = f"{self.prefix}/" if self.prefix else ""
        inside = tuple(f"{base}{k}/" for k in (*kinds, PROBE_DIR))
        found: list[str] = []

        def op() -> None:
            found.clear()
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", ()):
                    if not obj["Key"].startswith(inside):
                        found.append(obj["Key"])
                        return

        self._call("list the objects under the prefix", op,
                   missing="unable to list the objects under the prefix: not found")
        return found[0] if found else None

    def _probe_conditional(self) -> bool:
        """Whether the store refuses a second `If-None-Match: *` write of one key (412)."""
        key = f"{self.prefix}/{PROBE_DIR}/conditional-{uuid.uuid4().hex}".lstrip("/")

        def write(body: bytes) -> bool:
            """True if stored, False if refused as a failed precondition or an unknown header."""
            try:
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                return True
            except bexc.ClientError as e:
                if _status(e) in (412, 409) or _code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                if _status(e) in (400, 501) or _code(e) in ("NotImplemented", "InvalidArgument"):
                    return False
                raise

        try:
            if not self._call("write a probe object", lambda: write(b"1")):
                return False  # the header itself is refused: no conditional writes
            return not self._call("write a probe object", lambda: write(b"2"))
        finally:
            with self._silence.operation():  # a silent store cuts botocore's retries at the bound
                try:
                    self._s3.delete_object(Bucket=self.bucket, Key=key)
                except (bexc.ClientError, bexc.BotoCoreError):
                    pass  # denied (a write-only host's policy): an older probe is swept by the next host that may
            with self._silence.operation():
                self._sweep_probes(key)

    def _sweep_probes(self, own: str) -> None:
        """Delete probe objects older than PROBE_MAX_AGE seconds (left where deletes are denied,
        or by a process killed mid-probe); best effort, as the probe's own delete."""
        base = f"{self.prefix}/{PROBE_DIR}/".lstrip("/")
        older_than = PROBE_MAX_AGE
        try:
            now = time.time()
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", ()):
                    if obj["Key"] != own and now - obj["LastModified"].timestamp() > older_than:
                        self._s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
        except (bexc.ClientError, bexc.BotoCoreError):
            pass

    # -- the Backend protocol ----------------------------------------------------------------

    def get(self, kind: str, name: str) -> bytes:
        key = self._key(kind, name)

        def op() -> bytes:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

        return self._call(f"read {kind} object '{shown_id(name)}'", op,
                          missing=f"unable to read {kind} object '{shown_id(name)}': not found")

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the object, fewer at its end, b"" past it.

        Packs never change once written, so a small read of a pack fetches the aligned
        `read_block` around it and keeps it: a restore reads a pack's chunks in order, and one
        GET per block instead of one per chunk is what makes that fast over HTTP."""
        self._key(kind, name)
        if length <= 0:
            self.stat(kind, name)
            return b""
        block = self.read_block
        if kind != "packs" or block <= 0 or length >= block:
            return self._ranged_get(kind, name, offset, length)
        first, last = offset // block, (offset + length - 1) // block
        parts = []
        for i in range(first, last + 1):
            data = self._blocks.get((name, i), lambda i=i: self._ranged_get(kind, name, i * block, block))
            lo = offset - i * block if i == first else 0
            hi = offset + length - i * block
            parts.append(data[max(lo, 0):hi])
            if len(data) < block:
                break  # the object ends in this block
        else:
            if self.readahead:
                self._read_ahead(kind, name, last + 1)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_ahead(self, kind: str, name: str, index: int) -> None:
        """Start fetching block `index` of a pack in the background (reads go on in order)."""
        key = (name, index)
        if self._blocks.has(key):
            return
        with self._lock:
            if self._ahead is None:
                self._ahead = ThreadPoolExecutor(max_workers=2, thread_name_prefix="s3-readahead")
            pool = self._ahead

        def fetch() -> None:
            try:
                self._blocks.get(key, lambda: self._ranged_get(kind, name, index * self.read_block, self.read_block))
            except CairnError:
                pass  # a failed read-ahead is not kept; the read that needs the block retries

        try:
            pool.submit(fetch)
        except RuntimeError:
            pass  # closed

    def _ranged_get(self, kind: str, name: str, offset: int, length: int) -> bytes:
        key = self._key(kind, name)

        def op() -> bytes:
            try:
                resp = self._s3.get_object(Bucket=self.bucket, Key=key,
                                           Range=f"bytes={offset}-{offset + length - 1}")
            except bexc.ClientError as e:
                if _status(e) == 416 or _code(e) == "InvalidRange":
                    return b""  # the object exists and ends before `offset`
                raise
            data = resp["Body"].read()
            if resp.get("ContentRange") is None and len(data) > length:
                data = data[offset:offset + length]  # a store that ignored the Range header
            return data

        return self._call(f"read {kind} object '{shown_id(name)}'", op,
                          missing=f"unable to read {kind} object '{shown_id(name)}': not found")

    def put(self, kind: str, name: str, data: bytes) -> None:
        key = self._key(kind, name)
        if kind == "packs":
            self._blocks.forget(name)

        def op() -> None:
            resp = self._s3.put_object(Bucket=self.bucket, Key=key, Body=_Body(data))
            self._require_success(resp)

        self._call(f"write {kind} object '{shown_id(name)}'", op)

    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool:
        """Create the object only if none exists: True if this call created it, False if an
        object of that name was already there (its content is left as it was)."""
        key = self._key(kind, name)
        body = bytes(data)
        if not self.conditional_writes:
            with self._lock, self._silence.operation():  # only atomic within this process (module docstring)
                try:
                    self.stat(kind, name)
                    return False
                except NotFoundError:
                    self.put(kind, name, body)
                    return True
        tries = [0]

        def op() -> bool:
            tries[0] += 1
            try:
                resp = self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
            except bexc.ClientError as e:
                if _status(e) == 412 or _code(e) == "PreconditionFailed":
                    if tries[0] > 1:
                        # An earlier attempt may have been stored before its answer was lost:
                        # identical content means that attempt won.
                        return self.get(kind, name) == body
                    return False
                if _status(e) == 409 or _code(e) == "ConditionalRequestConflict":
                    return False
                raise
            self._require_success(resp)
            return True

        return self._call(f"create {kind} object '{shown_id(name)}'", op)

    @staticmethod
    def _require_success(resp: dict[str, Any]) -> None:
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if not 200 <= status < 300:
            raise bexc.ClientError({"Error": {"Code": str(status), "Message": "unexpected answer to PUT"},
                                    "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    def list(self, kind: str) -> Iterator[str]:
        for info in self.list_info(kind):  # one listing: names come with their sizes and times
            yield info.name

    def list_info(self, kind: str) -> Iterator[ObjectInfo]:
        """The objects of `kind` with size and last-modified time, sorted by name."""
        base = self._base(kind)
        found: list[ObjectInfo] = []

        def op() -> None:
            found.clear()
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", ()):
                    rest = obj["Key"][len(base):]
                    if kind == "packs":
                        fan, _, rest = rest.partition("/")
                        if not rest or "/" in rest or not rest.startswith(fan):
                            continue
                    elif not rest or "/" in rest:
                        continue
                    found.append(ObjectInfo(rest, int(obj.get("Size") or 0), obj["LastModified"].timestamp()))

        self._call(f"list {kind} objects", op, missing=f"unable to list {kind} objects: not found")
        yield from sorted(found)

    def delete(self, kind: str, name: str) -> None:
        key = self._key(kind, name)
        if kind == "packs":
            self._blocks.forget(name)
        with self._silence.operation():  # one operation: its two requests share the bound
            self.stat(kind, name)  # S3 deletes of missing keys succeed; the protocol says NotFoundError
            self._call(f"delete {kind} object '{shown_id(name)}'",
                       lambda: self._s3.delete_object(Bucket=self.bucket, Key=key))

    def stat(self, kind: str, name: str) -> int:
        key = self._key(kind, name)
        resp = self._call(f"stat {kind} object '{shown_id(name)}'",
                          lambda: self._s3.head_object(Bucket=self.bucket, Key=key),
                          missing=f"{kind} object '{shown_id(name)}' not found")
        return int(resp["ContentLength"])

    def forget_blocks(self) -> None:
        """Drop every pack block kept for reads: the reads that follow fetch from the store
        (verify: what this process read before proves nothing about what the store holds now)."""
        self._blocks.forget(None)

    def close(self) -> None:
        """Release the client's connection pool and the cached blocks."""
        with self._lock:
            ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.shutdown(wait=True, cancel_futures=True)
        self._blocks.forget(None)
        try:
            self._s3.close()
        except (AttributeError, bexc.BotoCoreError):
            pass


class _Body:
    """A request body read straight from the caller's buffer (module docstring): no copy of it is
    made, and each read hands out a view of at most max(asked, SEND_BLOCK) bytes, the piece the
    HTTP layer then sends in one call. Seekable, so botocore can hash it and rewind it for a
    retry. The buffer must not change until the PUT has returned (a pack's does not)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int | None = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else self._pos + max(size, SEND_BLOCK)
        piece = self._view[self._pos:end]
        self._pos += len(piece)
        return piece

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._view)}[whence]
        self._pos = min(max(0, base + offset), len(self._view))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class _Loading:
    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data = b""
        self.error: BaseException | None = None


class _BlockCache:
    """At most `size` blocks of packs, least recently used dropped first. Concurrent readers of
    one block wait for a single fetch; a failed fetch is not kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._loading: dict[tuple[str, int], _Loading] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int], fetch: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
                return data
            loading = self._loading.get(key)
            owner = loading is None
            if owner:
                loading = self._loading[key] = _Loading()
        assert loading is not None
        if not owner:
            loading.done.wait()
            if loading.error is not None:
                raise loading.error
            return loading.data
        try:
            loading.data = fetch()
        except BaseException as e:
            loading.error = e
            raise
        finally:
            with self._lock:
                self._loading.pop(key, None)
                if loading.error is None and self.size > 0:
                    self._blocks[key] = loading.data
                    while len(self._blocks) > self.size:
                        self._blocks.popitem(last=False)
            loading.done.set()
        return loading.data

    def has(self, key: tuple[str, int]) -> bool:
        """Whether the block is kept or being fetched."""
        with self._lock:
            return key in self._blocks or key in self._loading

    def forget(self, pack: str | None) -> None:
        """Drop the blocks of `pack` (of every pack for None)."""
        with self._lock:
            for key in [k for k in self._blocks if pack is None or k[0] == pack]:
                del self._blocks[key]
