"""What each channel has committed (UIDVALIDITY + UID, UIDLs, a Message-ID ledger) and its health,
in spool.db: written in the very transaction that commits the fetched entries."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mxdesk.gateway.entries import NewEntry, insert_entry
from mxdesk.gateway.senders import header_values

LEDGER_DAYS = 400  # a message is recognised again for this long (a UIDVALIDITY change, a move)

# What a channel is doing, for `mxdesk channel list`.
CONNECTING, IDLE, POLLING, FAILING, PAUSED = "connecting", "idle", "polling", "failing", "paused"
STATUS_COLUMNS = (
    "status",
    "status_since",
    "last_success",
    "last_fetch",
    "fetched",
    "skipped",
    "last_error",
    "failing_since",
    "alerted",
    "note",
)


@dataclass(frozen=True)
class FetchState:
    uidvalidity: int
    last_uid: int
    started: float  # when the channel first looked: mail from then on is imported
    # > 0 while the mailbox is read by date (--since on the first look, or after a UIDVALIDITY
    # change): messages that arrived before it are not imported.
    floor: float


@dataclass(frozen=True)
class Fetched:
    """One message read from the mailbox, ready to commit: uid is the IMAP UID or POP3 UIDL."""

    uid: str
    key: str
    entry: NewEntry | None  # None: the ledger knows it already (only the state moves on)


def message_key(data: bytes) -> str:
    """What recognises a message when its UID or UIDL has changed: its Message-ID with Date and
    From (the same after a server migration that adds headers), or a digest of the whole message
    when it has no Message-ID."""
    head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    mid = header_values(head, b"message-id")
    if not mid or not mid[0].strip("<> "):
        return "sha256:" + hashlib.sha256(data).hexdigest()
    parts = [mid[0].strip(), *header_values(head, b"date")[:1], *header_values(head, b"from")[:1]]
    return "mid:" + hashlib.sha256("\0".join(parts).encode("utf-8", "replace")).hexdigest()


def _ensure(conn: sqlite3.Connection, channel: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO fetch_state (channel, status_since) VALUES (?, ?)",
        (channel, time.time()),
    )


def get_state(conn: sqlite3.Connection, channel: str) -> FetchState | None:
    row = conn.execute(
        "SELECT uidvalidity, last_uid, started, floor FROM fetch_state"
        " WHERE channel=? AND started>0",
        (channel,),
    ).fetchone()
    return FetchState(row[0], row[1], row[2], row[3]) if row else None


def set_position(
    conn: sqlite3.Connection,
    channel: str,
    uidvalidity: int,
    last_uid: int,
    floor: float | None = None,
    started: float | None = None,
) -> None:
    """The IMAP position; floor None leaves it as it is; started: a new first look."""
    _ensure(conn, channel)
    conn.execute(
        "UPDATE fetch_state SET uidvalidity=?, last_uid=?, floor=coalesce(?, floor),"
        " started=coalesce(?, CASE WHEN started=0 THEN ? ELSE started END) WHERE channel=?",
        (uidvalidity, last_uid, floor, started, time.time(), channel),
    )


def known(conn: sqlite3.Connection, channel: str, keys: Iterable[str]) -> set[str]:
    found = set()
    for key in keys:
        row = conn.execute(
            "SELECT 1 FROM fetch_ledger WHERE channel=? AND message=?", (channel, key)
        ).fetchone()
        if row:
            found.add(key)
    return found


def commit_batch(
    conn: sqlite3.Connection,
    channel: str,
    batch: Sequence[Fetched],
    *,
    uidvalidity: int,
    last_uid: int | None,
    owe: bool,
    skipped: int = 0,
) -> int:
    """Inside the spool's transaction: the new entries, the ledger, the channel's position (IMAP
    last_uid, or POP3 UIDLs when last_uid is None) and the after-actions still owed. Returns how
    many entries were added (a message the ledger knows is not committed again)."""
    now = time.time()
    _ensure(conn, channel)
    added = 0
    for item in batch:
        if item.entry is not None and not known(conn, channel, [item.key]):
            insert_entry(conn, item.entry)
            conn.execute(
                "INSERT INTO fetch_ledger (channel, message, entry, time) VALUES (?,?,?,?)",
                (channel, item.key, item.entry.id, now),
            )
            added += 1
        if last_uid is None:
            conn.execute(
                "INSERT OR IGNORE INTO fetch_uidls (channel, uidl, time) VALUES (?,?,?)",
                (channel, item.uid, now),
            )
        if owe:
            conn.execute(
                "INSERT OR IGNORE INTO fetch_owed (channel, uidvalidity, uid) VALUES (?,?,?)",
                (channel, uidvalidity, item.uid),
            )
    if last_uid is not None:
        set_position(conn, channel, uidvalidity, last_uid)
    conn.execute(
        "UPDATE fetch_state SET fetched=fetched+?, skipped=skipped+?,"
        " last_fetch=CASE WHEN ?>0 THEN ? ELSE last_fetch END WHERE channel=?",
        (added, skipped, added, now, channel),
    )
    return added


def owed(conn: sqlite3.Connection, channel: str, uidvalidity: int) -> list[str]:
    """UIDs (or UIDLs) committed whose after-action (seen, move, delete) is not done yet."""
    rows = conn.execute(
        "SELECT uid FROM fetch_owed WHERE channel=? AND uidvalidity=?", (channel, uidvalidity)
    )
    return [r[0] for r in rows]


def settle(conn: sqlite3.Connection, channel: str, uidvalidity: int, uids: Sequence[str]) -> None:
    conn.executemany(
        "DELETE FROM fetch_owed WHERE channel=? AND uidvalidity=? AND uid=?",
        [(channel, uidvalidity, u) for u in uids],
    )


def drop_owed(conn: sqlite3.Connection, channel: str, keep_uidvalidity: int) -> None:
    """After a UIDVALIDITY change the old UIDs name nothing: forget what they owed."""
    conn.execute(
        "DELETE FROM fetch_owed WHERE channel=? AND uidvalidity!=?", (channel, keep_uidvalidity)
    )


def uidls(conn: sqlite3.Connection, channel: str) -> set[str]:
    rows = conn.execute("SELECT uidl FROM fetch_uidls WHERE channel=?", (channel,))
    return {r[0] for r in rows}


def forget_uidls(conn: sqlite3.Connection, channel: str, present: set[str]) -> None:
    """UIDLs the server no longer lists will not come back: keep the set as small as the
    mailbox."""
    gone = uidls(conn, channel) - present
    conn.executemany(
        "DELETE FROM fetch_uidls WHERE channel=? AND uidl=?", [(channel, u) for u in gone]
    )


def set_status(conn: sqlite3.Connection, channel: str, **fields: object) -> None:
    unknown = set(fields) - set(STATUS_COLUMNS) - {"started"}
    if unknown:
        raise ValueError(f"unknown status fields {sorted(unknown)}")
    _ensure(conn, channel)
    if "status" in fields:
        row = conn.execute("SELECT status FROM fetch_state WHERE channel=?", (channel,)).fetchone()
        if row is not None and row[0] != fields["status"]:
            fields["status_since"] = time.time()
    assignments = ", ".join(f"{name}=?" for name in fields)
    conn.execute(
        f"UPDATE fetch_state SET {assignments} WHERE channel=?", (*fields.values(), channel)
    )


def statuses(conn: sqlite3.Connection) -> dict[str, dict[str, object]]:
    """Each channel's health as the gateway last wrote it."""
    columns = ", ".join(STATUS_COLUMNS)
    rows = conn.execute(f"SELECT channel, {columns} FROM fetch_state")
    return {r[0]: dict(zip(STATUS_COLUMNS, r[1:], strict=True)) for r in rows}


def prune(conn: sqlite3.Connection, channels: set[str]) -> None:
    """Ledger rows past LEDGER_DAYS, and every trace of channels that were removed."""
    conn.execute("DELETE FROM fetch_ledger WHERE time < ?", (time.time() - LEDGER_DAYS * 86400,))
    for table in ("fetch_state", "fetch_uidls", "fetch_ledger", "fetch_owed"):
        for (name,) in conn.execute(f"SELECT DISTINCT channel FROM {table}").fetchall():
            if name not in channels:
                conn.execute(f"DELETE FROM {table} WHERE channel=?", (name,))


def read_statuses(spool_path: Path) -> dict[str, dict[str, object]]:
    """The channels' health for the CLI, read-only; {} when the gateway never ran."""
    if not spool_path.exists():
        return {}
    conn = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True, timeout=10)
    try:
        return statuses(conn)
    except sqlite3.OperationalError:  # a spool from before channels: no table yet
        return {}
    finally:
        conn.close()
