"""Structured logfmt logging."""

from __future__ import annotations

import io
import logging

import pytest
from cairn.daemon.runtime.logs import LogfmtFormatter, logfmt_value, setup_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_lines_carry_level_logger_message_and_extra_fields(restore_root_logger, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    log = logging.getLogger("cairn.daemon.test")
    log.info("set %s done", "ab12", extra={"source": "app", "bytes_added": 1024, "note": 'say "hi" = ok'})
    log.debug("hidden at info level")
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.startswith("ts=")
    assert ' level=info logger=cairn.daemon.test msg="set ab12 done" source=app bytes_added=1024 ' in line
    assert line.rstrip("\n").endswith('note="say \\"hi\\" = ok"')


def test_exceptions_stay_on_one_line_and_journal_drops_timestamps(restore_root_logger, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("x").exception("failed")
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.startswith("level=error logger=x msg=failed error=\"ValueError: bad thing\" exc=\"Traceback")
    assert "ValueError: bad\\nthing" in line


def test_setup_replaces_its_own_handler(restore_root_logger):
    first, second = io.StringIO(), io.StringIO()
    setup_logging("warning", stream=first)
    setup_logging("warning", stream=second)
    logging.getLogger("y").warning("once")
    assert first.getvalue() == "" and "msg=once" in second.getvalue()
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud")


def test_value_quoting():
    assert logfmt_value("plain") == "plain"
    assert logfmt_value("") == '""'
    assert logfmt_value("a b") == '"a b"'
    assert logfmt_value("k=v") == '"k=v"'
    assert logfmt_value(3.5) == "3.5"
    record = logging.LogRecord("n", logging.INFO, "f", 1, "m", (), None)
    assert LogfmtFormatter(timestamps=False).format(record) == "level=info logger=n msg=m"


def test_python_warnings_of_libraries_become_logfmt_lines(restore_root_logger, monkeypatch):
    import warnings

    monkeypatch.setenv("JOURNAL_STREAM", "8:1")
    stream = io.StringIO()
    logging.captureWarnings(False)  # as in a fresh process (an earlier test's setup may have taken them)
    setup_logging("info", stream=stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Callback with id 'x' already exists, it will be overwritten.", RuntimeWarning,
                          stacklevel=1)
    finally:
        logging.captureWarnings(False)
    line = stream.getvalue()
    assert line.count("\n") == 1, line
    assert line.startswith("level=warning logger=py.warnings msg=") and "RuntimeWarning" in line


def test_the_s3_librarys_info_lines_stay_out_of_the_daemons_log(restore_root_logger):
    """boto's "Found credentials in ..." at every start made a daemon's one-line error several."""
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    logging.getLogger("botocore.credentials").info("Found credentials in shared credentials file")
    logging.getLogger("botocore.regions").info("Found endpoint for s3 via: environment_service.")
    assert stream.getvalue() == ""
    logging.getLogger("botocore.credentials").warning("credentials expire soon")
    assert "credentials expire soon" in stream.getvalue()
