"""Structured logging: one logfmt line per record on stderr, which journald keeps as is.

A line reads `level=info logger=cairn.daemon.scheduling.scheduler msg="scheduled full set due" source=app`:
the level, the logger, the message, then every `extra={...}` field of the record. Values
with spaces, quotes or '=' are quoted; newlines are escaped, so one record is always one line.
An exception shows as its cause (`error="OSError: [Errno 5] ..."`); its traceback is added
(`exc=...`) only at debug level. A timestamp leads the line except when stderr is already the
journal. Python warnings (a library's `warnings.warn`) are logged the same way, under the
logger `py.warnings`, never printed raw.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}
_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
    "error": logging.ERROR, "critical": logging.CRITICAL,
}


def logfmt_value(value: Any) -> str:
    """Format one value: bare if safe, else double-quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(ch in text for ch in ' ="\\\n\r\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    """Formats records as logfmt lines."""

    def __init__(self, timestamps: bool = True, tracebacks: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = []
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            pairs.append(("ts", f"{stamp}.{int(record.msecs):03d}Z"))
        pairs += [("level", record.levelname.lower()), ("logger", record.name), ("msg", record.getMessage())]
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                pairs.append((key, value))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            pairs.append(("error", " ".join(f"{type(exc).__name__}: {exc}".split())))
            if self.tracebacks:
                pairs.append(("exc", self.formatException(record.exc_info)))
        elif record.exc_text and self.tracebacks:
            pairs.append(("exc", record.exc_text))
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in pairs)


_handler: logging.Handler | None = None


QUIET_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer")  # at warning or above, whatever the level


def setup_logging(level: str | int = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Send all logging to `stream` (stderr) as logfmt at `level`; calling again replaces it."""
    global _handler
    numeric = _LEVELS.get(level.lower(), None) if isinstance(level, str) else level
    if numeric is None:
        raise ValueError(f"unknown log level '{level}': expected debug, info, warning or error")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    # systemd sets JOURNAL_STREAM when stderr is the journal, which stamps lines itself.
    handler.setFormatter(LogfmtFormatter(timestamps=not os.environ.get("JOURNAL_STREAM"),
                                         tracebacks=numeric <= logging.DEBUG))
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LIBRARIES:  # their INFO lines ("Found credentials in ...") are not the daemon's news
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)  # a library's warnings.warn(...) becomes a logfmt line too
    _handler = handler
    return handler
