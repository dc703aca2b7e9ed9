"""The daemons' log under journald: each line carries its syslog priority (sd-daemon(3))."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from mxdesk import daemon


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("mxdesk.gateway.mx", level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<2>"),
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
    ],
)
def test_each_level_gets_its_syslog_priority(level: int, prefix: str) -> None:
    line = daemon.JournalFormatter().format(record(level, "queue_id=Q1 result=accepted"))
    assert line == f"{prefix}mxdesk.gateway.mx: queue_id=Q1 result=accepted"


def test_every_line_of_a_traceback_keeps_the_priority() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = record(logging.ERROR, "failed")
        entry.exc_info = sys.exc_info()
    lines = daemon.JournalFormatter().format(entry).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)


def _stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_the_journal_is_recognised_only_when_it_is_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, other = tmp_path / "journal", tmp_path / "other"
    journal.touch()
    other.touch()
    with open(journal, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", _stream_of(journal))
        assert daemon.stderr_is_journal()
        assert daemon.error_line("cannot bind") == "<3>mxdesk: cannot bind"
        # Inherited by a child whose stderr is something else: not the journal.
        monkeypatch.setenv("JOURNAL_STREAM", _stream_of(other))
        assert not daemon.stderr_is_journal()
        assert daemon.error_line("cannot bind") == "mxdesk: cannot bind"
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not daemon.stderr_is_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not daemon.stderr_is_journal()


def test_setup_logging_writes_priorities_to_the_journal_and_times_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = tmp_path / "stderr"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        with open(log_file, "w") as stream:
            monkeypatch.setattr(sys, "stderr", stream)
            monkeypatch.setenv("JOURNAL_STREAM", _stream_of(log_file))
            daemon.setup_logging("info")
            logging.getLogger("mxdesk.gateway").warning("domain=marca.helpdesk.example held")
            logging.getLogger("mxdesk.gateway").debug("not shown at info")
            monkeypatch.delenv("JOURNAL_STREAM")
            daemon.setup_logging("debug")
            logging.getLogger("mxdesk.gateway").debug("shown at debug")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    first, second = log_file.read_text().splitlines()
    assert first == "<4>mxdesk.gateway: domain=marca.helpdesk.example held"
    assert second.endswith(" DEBUG mxdesk.gateway: shown at debug") and second[:4].isdigit()


def test_the_time_of_a_line_is_what_logging_would_write() -> None:
    """The formatter that keeps the last second's text writes what logging.Formatter does, for
    records of the same second, of the next, and of a second long past."""
    ours = daemon.TimedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    theirs = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for created in (1_790_000_000.0, 1_790_000_000.999, 1_790_000_001.25, 1_700_000_000.5):
        entry = record(logging.INFO, "queue_id=Q1 result=accepted")
        entry.created, entry.msecs = created, int(created % 1 * 1000) + 0.0
        assert ours.format(entry) == theirs.format(entry)
