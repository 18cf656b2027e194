"""The one error hierarchy of Cairn (cairn.errors; cairn.store.errors re-exports it).

Every failure a user can see is a `CairnError` with a one-line message in the style
"unable to read pack 'ab12..': checksum mismatch" and a stable `code` that the gRPC layer
maps to a status code and the client to an exit status. Nothing here imports beyond the
standard library, so every package (store, fsio, daemon, client) may use it.
"""

from __future__ import annotations


class CairnError(Exception):
    """Base of every Cairn error. `code` is a stable machine-readable kind."""

    code = "internal"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(CairnError):
    """The caller asked for something malformed (bad level, bad path, bad option)."""

    code = "invalid_argument"


class NotFoundError(CairnError):
    """An unknown set, path, source, object or WAL segment."""

    code = "not_found"


class AlreadyExistsError(CairnError):
    """Something that must be unique already exists (WAL segment with other content, ...)."""

    code = "already_exists"


class FailedPreconditionError(CairnError):
    """The system is not in a state where the request can run (target not empty, read-only, ...)."""

    code = "failed_precondition"


class BusyError(FailedPreconditionError):
    """A job of the same kind is already running (one backup per source)."""

    code = "busy"


class LockedError(FailedPreconditionError):
    """The repository is locked by another process in a conflicting mode."""

    code = "locked"


class RepositoryError(CairnError):
    """The repository cannot be used: missing, not a repository, unsupported version."""

    code = "repository"


class NotARepositoryError(RepositoryError):
    """A path or backend that holds no Cairn repository."""

    code = "not_a_repository"


class FormatVersionError(RepositoryError):
    """The repository was written by a newer Cairn and has a format this one cannot read."""

    code = "format_version"


class WrongKeyError(RepositoryError):
    """An encrypted repository was given no passphrase or key file, or one that opens no key."""

    code = "wrong_key"


class CorruptionError(CairnError):
    """Stored data failed its checksum or could not be parsed."""

    code = "corruption"


class UnindexedError(CorruptionError):
    """A blob a set needs is in no index file (its index file was lost or repaired away): the
    repository is damaged, the set is not unknown."""

    code = "corruption"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "'cairn verify' names what is lost; 'cairn repair index' indexes "
                                          "the packs that hold it again")


class BackendError(CairnError):
    """The storage backend failed an operation (I/O error, injected fault, ...)."""

    code = "backend"


class UnavailableError(BackendError):
    """The store did not answer: its endpoint is unreachable, or it failed every retry of an
    operation with transient errors. Not a fact about one object: an operation over many
    objects stops here instead of failing each of them in turn."""

    code = "backend"


class AbortedError(CairnError):
    """An operation was cancelled (shutdown, deadline, client went away)."""

    code = "aborted"


class DeadlineError(AbortedError):
    """An operation ran past its deadline (quiesce window, hook timeout)."""

    code = "deadline"


def short(hex_id: str) -> str:
    """Return the short form of an object id used in messages: 'ab12cd34..'."""
    return hex_id[:8] + ".." if len(hex_id) > 8 else hex_id
