"""Taking the spool's write lock while another process holds it: fine-grained waits instead
of SQLite's busy handler (1, 2, 5, 10 ms ...), a clear error when it never comes free, and the
connection's own busy timeout kept for everything else."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from mxdesk.gateway import spoolfile
from mxdesk.gateway.spoolfile import begin_immediate


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    return conn


def test_waits_in_short_steps_for_the_other_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other, ours = connect(tmp_path / "s.db"), connect(tmp_path / "s.db")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    slept: list[float] = []
    real_sleep = spoolfile.time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 20:  # the other process commits while we wait
            other.execute("COMMIT")
        real_sleep(seconds)

    monkeypatch.setattr(spoolfile.time, "sleep", sleep)
    begin_immediate(ours)
    ours.execute("INSERT INTO t VALUES (2)")
    ours.execute("COMMIT")
    assert len(slept) == 20
    assert slept[0] == pytest.approx(0.0001) and max(slept) <= 0.002
    assert [r[0] for r in ours.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    # Everything else keeps the connection's own busy timeout (sqlite3's default 5 s).
    assert ours.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_gives_up_with_database_is_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other, ours = connect(tmp_path / "s.db"), connect(tmp_path / "s.db")
    other.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(spoolfile, "BUSY_SECONDS", 0.2)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(ours)
    assert not ours.in_transaction
    other.execute("ROLLBACK")
    begin_immediate(ours)  # free now: at once
    assert ours.in_transaction
    ours.execute("ROLLBACK")


def test_writers_in_threads_all_get_their_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    connect(path).close()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        conn = connect(path)
        try:
            for i in range(50):
                begin_immediate(conn)
                conn.execute("INSERT INTO t VALUES (?)", (n * 1000 + i,))
                conn.execute("COMMIT")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert connect(path).execute("SELECT count(*) FROM t").fetchone()[0] == 200
