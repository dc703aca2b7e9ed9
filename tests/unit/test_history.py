"""The spool's history (kept after an entry left, pruned at its bound), what a listing shows of
an entry's state, and the observability settings."""

from __future__ import annotations

import os
import pwd
import sqlite3
import time
from pathlib import Path

import pytest

from mxdesk import config as cfg
from mxdesk.configread import Listen
from mxdesk.gateway import history
from mxdesk.gateway.entries import (
    DELIVERED,
    FAILED,
    SCHEMA,
    NewEntry,
    Recipient,
    apply_results,
    delivered_whole,
    insert_entry,
    read_entry,
    spool_counts,
    spooled,
)
from mxdesk.gateway.queuectl import invoking_user
from mxdesk.gateway.spool import Spool
from mxdesk.metrics import reply_codes
from mxdesk.state import migrate

DAY = 86400.0


def spool_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


def entry(queue_id: str, kind: str = "out", held: str = "") -> NewEntry:
    rcpt = Recipient("cliente@example.com", "cliente@example.com", "marca")
    return NewEntry(queue_id, kind, "uid 0", "suporte@marca.example", (rcpt,), b"x", held=held)


def add_event(conn: sqlite3.Connection, queue_id: str, at: float, event: str = "accepted") -> None:
    conn.execute(
        "INSERT INTO history (entry, kind, time, event) VALUES (?, 'out', ?, ?)",
        (queue_id, at, event),
    )


def entries_known(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT DISTINCT entry FROM history")}


def test_prune_forgets_whole_histories_of_gone_entries_at_the_bound() -> None:
    conn = spool_db()
    now = 1_000_000_000.0
    cutoff = now - 30 * DAY
    add_event(conn, "AT_BOUND", cutoff - 5)
    add_event(conn, "AT_BOUND", cutoff, "delivered")  # its last event at the bound: kept
    add_event(conn, "JUST_PAST", cutoff - 5)
    add_event(conn, "JUST_PAST", cutoff - 0.001, "delivered")
    add_event(conn, "LATER", now - DAY)
    insert_entry(conn, entry("STILL_HERE"))  # in the spool: kept however old its history is
    conn.execute("UPDATE history SET time=? WHERE entry='STILL_HERE'", (now - 400 * DAY,))

    assert history.prune(conn, cutoff) == 2
    assert entries_known(conn) == {"AT_BOUND", "LATER", "STILL_HERE"}
    assert [e.event for e in history.events(conn, "AT_BOUND")] == ["accepted", "delivered"]


async def test_the_spool_prunes_after_history_days(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", history_days=2)
    await spool.open()
    try:
        conn = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
        add_event(conn, "OLD", time.time() - 3 * DAY)
        add_event(conn, "RECENT", time.time() - 1 * DAY)
        conn.close()
        await spool.commit(entry("NEW"))
        conn = sqlite3.connect(tmp_path / "spool.db")
        assert entries_known(conn) == {"RECENT", "NEW"}
        conn.close()
    finally:
        await spool.close()


def test_accepted_and_held_at_commit_are_recorded() -> None:
    conn = spool_db()
    insert_entry(conn, entry("Q1", held="domain marca.example not active yet"))
    events = history.events(conn, "Q1")
    assert [(e.event, e.actor) for e in events] == [("accepted", "gateway"), ("held", "gateway")]
    assert (
        events[0].detail == "from <suporte@marca.example> to <cliente@example.com> (uid 0, 1 bytes)"
    )
    assert events[1].detail == "domain marca.example not active yet"


def test_an_entry_delivered_whole_ends_as_the_long_way_ends_it() -> None:
    """delivered_whole (every recipient delivered by one attempt) leaves the same history and
    spool as apply_results; any other outcome is left to apply_results."""
    two = (
        Recipient("a@x.example", "a@x.example", "m"),
        Recipient("b@x.example", "b@x.example", "m"),
    )
    ends = []
    for fast in (True, False):
        conn = spool_db()
        new = NewEntry("Q1", "in", "127.0.0.1", "c@y.example", two, b"x")
        insert_entry(conn, new, 100.0)
        results = {r.mailbox: (DELIVERED, "250 ok") for r in two}
        if not (fast and delivered_whole(conn, spooled(new, 100.0), results)):
            apply_results(conn, "Q1", results, None, False, "", False)
        rows = conn.execute("SELECT event, detail FROM history WHERE entry='Q1' ORDER BY seq")
        ends.append(([tuple(r) for r in rows], conn.execute("SELECT count(*) FROM entries")))
    assert ends[0][0] == ends[1][0] and ends[0][0][-1] == ("delivered", "to all 2 recipients")
    assert ends[0][1].fetchone()[0] == ends[1][1].fetchone()[0] == 0
    conn = spool_db()
    new = NewEntry("Q2", "in", "127.0.0.1", "c@y.example", two, b"x")
    insert_entry(conn, new, 100.0)
    one_failed = {"a@x.example": (DELIVERED, "250 ok"), "b@x.example": (FAILED, "550 no")}
    assert not delivered_whole(conn, spooled(new, 100.0), one_failed)
    assert not delivered_whole(conn, spooled(new, 100.0), {"a@x.example": (DELIVERED, "250")})
    assert conn.execute("SELECT count(*) FROM history WHERE entry='Q2'").fetchone()[0] == 1


def test_a_spool_without_history_reads_as_empty() -> None:
    conn = sqlite3.connect(":memory:")
    migrate(conn, SCHEMA[:2])  # as an older gateway left it
    assert history.events(conn, "Q1") == []
    assert history.recent_results(conn, 0)["out"] == {"delivered": 0, "deferred": 0, "failed": 0}


def test_recent_results_count_attempts_per_kind_and_result() -> None:
    conn = spool_db()
    history.record_attempts(conn, "Q1", "out", [("a@x.example", "deferred", "451 4.7.1 later")])
    history.record_attempts(conn, "Q1", "out", [("a@x.example", "delivered", "250 2.0.0 ok")])
    history.record_attempts(conn, "Q2", "in", [("s@m.example", "failed", "550 5.1.1 no")])
    conn.execute("UPDATE history SET time=0 WHERE entry='Q2'")  # long ago
    assert history.recent_results(conn, time.time() - 3600) == {
        "in": {"delivered": 0, "deferred": 0, "failed": 0},
        "out": {"delivered": 1, "deferred": 1, "failed": 0},
    }


@pytest.mark.parametrize(
    ("event", "detail", "actor", "said"),
    [
        ("cancelled", "", "ana", "it was cancelled by ana at "),
        ("bounced", "<a@x.example>: 550 5.1.1 no", "gateway", "it bounced at "),
        ("delivered", "to its recipient", "gateway", "it was delivered to its recipient at "),
    ],
)
def test_fate_says_which(event: str, detail: str, actor: str, said: str) -> None:
    past = [
        history.HistoryEvent("Q1", "out", 1.0, "accepted", actor="gateway"),
        history.HistoryEvent("Q1", "out", 2.0, event, detail=detail, actor=actor),
    ]
    assert history.fate(past).startswith(said)
    assert detail in history.fate(past)


def test_a_queued_entry_tried_already_is_shown_deferred() -> None:
    conn = spool_db()
    insert_entry(conn, entry("NEVER_TRIED"))
    insert_entry(conn, entry("TRIED"))
    insert_entry(conn, entry("HELD", held="waiting"))
    conn.execute("UPDATE entries SET attempts=1 WHERE id IN ('TRIED', 'HELD')")
    shown = {
        row["id"]: read_entry(conn, row, with_data=False).shown_state
        for row in conn.execute("SELECT * FROM entries")
    }
    assert shown == {"NEVER_TRIED": "queued", "TRIED": "deferred", "HELD": "held"}
    counts, oldest = spool_counts(conn)
    assert counts == [("out", "deferred", 1), ("out", "held", 1), ("out", "queued", 1)]
    assert oldest is not None and oldest <= time.time()


@pytest.mark.parametrize(
    ("reply", "codes"),
    [
        ("550 5.1.1 Recipient address rejected", ("550", "5.1.1")),
        ("421 4.7.0 Error: too many connections", ("421", "4.7.0")),
        ("500 Error: bad syntax", ("500", "")),
        ("garbage", ("", "")),
    ],
)
def test_reply_codes(reply: str, codes: tuple[str, str]) -> None:
    assert reply_codes(reply) == codes


def test_metrics_and_history_settings() -> None:
    assert cfg.parse({}).metrics.listen is None
    assert cfg.parse({}).gateway.history_days == 30
    parsed = cfg.parse({"metrics": {"listen": "127.0.0.1:9125"}, "gateway": {"history_days": 7}})
    assert parsed.metrics.listen == Listen("127.0.0.1", 9125)
    assert parsed.gateway.history_days == 7
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({"metrics": {"listen": "9125", "port": 1}, "gateway": {"history_days": 0}})
    text = "\n".join(info.value.errors)
    for key in ("metrics.listen", "metrics.port", "gateway.history_days"):
        assert key in text


def test_who_runs_the_command_names_the_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    user = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert invoking_user() == user
    monkeypatch.setenv("SUDO_USER", "ana")
    assert invoking_user() == (user if user == "ana" else f"{user} (sudo by ana)")
