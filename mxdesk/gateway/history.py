"""The spool's history: one row per event of an entry, kept after the entry left the spool.

Rows are written inside the spool's own transactions (an event is recorded if and only if the
change it describes is committed), and pruned once an entry has been gone for
`[gateway] history_days`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Entry events; `attempt` is one per recipient and attempt, its result delivered, deferred
# (a 4xx or no answer: tried again later) or failed (a 5xx, or given up).
ACCEPTED, ATTEMPT, HELD, RELEASED, RETRIED, REQUEUED, NOTICE = (
    "accepted",
    "attempt",
    "held",
    "released",
    "retried",
    "requeued",
    "notice",
)
DELIVERED, BOUNCED, CANCELLED = "delivered", "bounced", "cancelled"
DEFERRED = "deferred"
# Who did it: the daemon itself, or the Unix user of a command.
GATEWAY = "gateway"
DETAIL_LIMIT = 500
COLUMNS = "entry, kind, time, event, recipient, result, detail, actor"


@dataclass(frozen=True)
class HistoryEvent:
    entry: str
    kind: str
    time: float
    event: str
    recipient: str = ""
    result: str = ""
    detail: str = ""
    actor: str = ""


def record(
    conn: sqlite3.Connection,
    entry_id: str,
    event: str,
    detail: str = "",
    actor: str = GATEWAY,
) -> None:
    """An event of an entry still in the spool (record the end of an entry before deleting)."""
    record_where(conn, "id=?", (entry_id,), event, detail, actor)


def record_where(
    conn: sqlite3.Connection,
    where: str,
    args: Sequence[object],
    event: str,
    detail: str = "",
    actor: str = GATEWAY,
) -> None:
    """The same event for every spool entry that matches where (an SQL condition on entries)."""
    conn.execute(
        f"INSERT INTO history ({COLUMNS}) SELECT id, kind, ?, ?, '', '', ?, ? FROM entries"
        f" WHERE {where}",
        (time.time(), event, detail[:DETAIL_LIMIT], actor, *args),
    )


def record_attempts(
    conn: sqlite3.Connection, entry_id: str, kind: str, replies: Iterable[tuple[str, str, str]]
) -> None:
    """One attempt row per (recipient, result, reply)."""
    now = time.time()
    conn.executemany(
        f"INSERT INTO history ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
        [
            (entry_id, kind, now, ATTEMPT, rcpt, result, reply[:DETAIL_LIMIT], GATEWAY)
            for rcpt, result, reply in replies
        ],
    )


def prune(conn: sqlite3.Connection, cutoff: float) -> int:
    """Forgets the entries that left the spool and whose last event is older than cutoff
    (whole histories, never part of one); returns how many rows went."""
    cursor = conn.execute(
        "DELETE FROM history WHERE entry IN (SELECT DISTINCT h.entry FROM history h"
        " WHERE h.time < ?1"
        " AND NOT EXISTS (SELECT 1 FROM history n WHERE n.entry = h.entry AND n.time >= ?1)"
        " AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.id = h.entry))",
        (cutoff,),
    )
    return cursor.rowcount


def has_history(conn: sqlite3.Connection) -> bool:
    """False for a spool that no gateway of this version has opened yet."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='history'")
    return row.fetchone() is not None


def events(conn: sqlite3.Connection, entry_id: str) -> list[HistoryEvent]:
    """The events of an entry, oldest first."""
    if not has_history(conn):
        return []
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM history WHERE entry=? ORDER BY time, seq", (entry_id,)
    ).fetchall()
    return [HistoryEvent(*row) for row in rows]


def recent_results(conn: sqlite3.Connection, since: float) -> dict[str, dict[str, int]]:
    """Attempts since a time, per kind (in, out) and result (delivered, deferred, failed)."""
    counts: dict[str, dict[str, int]] = {
        kind: {DELIVERED: 0, DEFERRED: 0, "failed": 0} for kind in ("in", "out")
    }
    if not has_history(conn):
        return counts
    rows = conn.execute(
        "SELECT kind, result, count(*) FROM history WHERE event=? AND time>=?"
        " GROUP BY kind, result",
        (ATTEMPT, since),
    )
    for kind, result, count in rows:
        counts.setdefault(kind, {})[result] = count
    return counts


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fate(history: Sequence[HistoryEvent]) -> str:
    """What became of an entry that is no longer in the spool, in a few words."""
    final = next((e for e in reversed(history) if e.event in (DELIVERED, BOUNCED, CANCELLED)), None)
    if final is None:
        return "it is not in the spool (see 'mxdesk queue history')"
    if final.event == CANCELLED:
        return f"it was cancelled by {final.actor} at {_when(final.time)}"
    if final.event == BOUNCED:
        return f"it bounced at {_when(final.time)} ({final.detail})"
    return f"it was delivered {final.detail} at {_when(final.time)}".replace("  ", " ")
