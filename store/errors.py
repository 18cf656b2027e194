"""Re-export of cairn.errors, the one error hierarchy, for code inside and above the store."""

from cairn.errors import (  # noqa: F401
    AbortedError,
    AlreadyExistsError,
    BackendError,
    BusyError,
    CairnError,
    CorruptionError,
    DeadlineError,
    FailedPreconditionError,
    FormatVersionError,
    InvalidArgumentError,
    LockedError,
    NotARepositoryError,
    NotFoundError,
    RepositoryError,
    UnavailableError,
    UnindexedError,
    WrongKeyError,
    short,
)
