"""The durable spool: every message the gateway said 250 for, in SQLite, with group commit."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mxdesk.gateway import history
from mxdesk.gateway.entries import (
    CLAIMED_KINDS,
    DELIVERED,
    DELIVERING,
    FAILED,
    HELD,
    PENDING,
    QUEUED,
    RECIPIENT_COLUMNS,
    SCHEMA,
    NewEntry,
    Recipient,
    SpoolEntry,
    apply_results,
    damage,
    delivered_whole,
    insert_entry,
    new_queue_id,
    read_due,
    spool_counts,
    spooled,
)
from mxdesk.gateway.groupcommit import CommitError, GroupCommit, Op
from mxdesk.gateway.spoolfile import fsync_dir, hold_damaged, lock_spool, recover
from mxdesk.state import migrate

log = logging.getLogger("mxdesk.gateway.spool")
T = TypeVar("T")
PRUNE_EVERY = 3600.0  # seconds between two prunings of the history

__all__ = [
    "CLAIMED_KINDS",
    "DELIVERED",
    "DELIVERING",
    "FAILED",
    "HELD",
    "PENDING",
    "QUEUED",
    "RECIPIENT_COLUMNS",
    "NewEntry",
    "Recipient",
    "Spool",
    "SpoolEntry",
    "SpoolError",
    "new_queue_id",
]


class SpoolError(Exception):
    """The spool could not make a message durable; the client must be told 451."""


class Spool:
    """All database work runs on one thread; concurrent commits share one transaction."""

    def __init__(self, path: Path, history_days: float = 30, *, shared: bool = False) -> None:
        """history_days: how long the history of an entry is kept after it left the spool;
        shared: a listener process's spool, which only commits new entries (the gateway holds
        the lock and recovers the spool)."""
        self.path = path
        self._shared = shared
        self._history_seconds = history_days * 86400
        self._next_prune = 0.0  # time.monotonic() of the next pruning
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None  # the descriptor of lock_spool()
        self._group = GroupCommit(
            self._executor, lambda ops: self._write_batch(ops), self.committed_elsewhere
        )
        self._listeners: list[Callable[[], None]] = []
        self._takers: list[Callable[[SpoolEntry], None]] = []
        # The outbound runner's (reserve, release), see on_claim.
        self._claimer: tuple[Callable[[str], bool], Callable[[str], None]] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._shared:
            self._lock = lock_spool(self.path)
        try:
            conn = self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so a committed entry survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn, SCHEMA)
            conn.row_factory = sqlite3.Row
            # The WAL and journal files may just have been created: make their names durable.
            fsync_dir(self.path.parent)
            if not self._shared:
                recover(conn)
        except BaseException:
            self._close()
            raise

    async def close(self) -> None:
        while self._group.draining:  # the commits under way and queued end first
            await self._run(lambda: None)
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError("spool is not open")
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Calls listener after every commit of new entries (runners wake up on it)."""
        self._listeners.append(listener)

    def on_new_entry(self, taker: Callable[[SpoolEntry], None]) -> None:
        """Hands taker every entry commit() made durable whose delivery may start now and needs
        no claim, or was claimed at its commit (on_claim), instead of calling the commit
        listeners for it: a runner delivers it from memory rather than reading it back (and
        wakes itself when it has no room for an unclaimed one)."""
        self._takers.append(taker)

    def on_claim(self, reserve: Callable[[str], bool], release: Callable[[str], None]) -> None:
        """For an entry of a claimed kind (a reply) that may leave at once: reserve(kind) is
        asked before its commit whether a runner has room for it now. If it has, the entry is
        inserted claimed, as due() would claim it a moment later (from then on `mxdesk queue
        cancel` refuses it), and handed to the takers once durable: no read and no claim of
        its own. release(kind) gives the room back if the transaction failed."""
        self._claimer = (reserve, release)

    def committed_elsewhere(self) -> None:
        """New entries were committed (here, or by a listener process): the listeners are
        called."""
        for listener in self._listeners:
            listener()

    # -- group commit ----------------------------------------------------------------------

    async def _transact(
        self,
        op: Op,
        *,
        new: bool,
        then: Callable[[bool], None] | None = None,
        patient: bool = False,
    ) -> None:
        """Runs op in the next group commit (patient: see GroupCommit.run); raises SpoolError
        if its transaction failed."""
        try:
            await self._group.run(op, new=new, then=then, patient=patient)
        except CommitError as exc:
            raise SpoolError(str(exc)) from None

    def _write_batch(self, ops: list[Op]) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                op(conn)
            if not self._shared and time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_EVERY
                history.prune(conn, time.time() - self._history_seconds)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def commit(self, entry: NewEntry) -> None:
        """Makes entry durable; raises SpoolError on failure.

        A caller that stops waiting (a client hanging up after the final dot) does not
        interrupt the commit: the transaction happens whole or not at all, and a committed
        entry is delivered either way.
        """
        created = time.time()
        due_now = not entry.held and entry.not_before <= created
        release = self._reserve(entry.kind) if due_now else None
        claimed = release is not None
        taken = claimed or (due_now and bool(self._takers) and entry.kind not in CLAIMED_KINDS)

        def settled(committed: bool) -> None:
            if committed:
                for taker in self._takers:
                    taker(spooled(entry, created, claimed=claimed))
            elif release is not None:
                release(entry.kind)

        await self._transact(
            lambda conn: insert_entry(conn, entry, created, claimed=claimed),
            new=not taken,
            then=settled if taken else None,
        )

    def _reserve(self, kind: str) -> Callable[[str], None] | None:
        """Room in the runner for an entry of kind claimed at its commit: how to give it back."""
        if kind in CLAIMED_KINDS and self._claimer is not None and self._claimer[0](kind):
            return self._claimer[1]
        return None

    async def transact(self, op: Op, *, new: bool) -> None:
        """Runs op in the next group commit (a fetcher's entries with its own state: both or
        neither); new: op adds entries, so the runners are woken. Raises SpoolError."""
        await self._transact(op, new=new)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn(conn) on the spool's thread, outside any transaction of others."""
        return await self._run(lambda: fn(self._db()))

    # -- delivering ------------------------------------------------------------------------

    async def due(self, kind: str, limit: int, exclude: set[str]) -> list[SpoolEntry]:
        """Queued entries of a kind whose next attempt has come, oldest first, with data."""
        return await self._run(self._due, kind, limit, frozenset(exclude))

    def _due(self, kind: str, limit: int, exclude: frozenset[str]) -> list[SpoolEntry]:
        conn = self._db()
        claim = kind in CLAIMED_KINDS
        if claim:
            conn.execute("BEGIN IMMEDIATE")
        try:
            entries = read_due(conn, kind, limit, exclude)
            # Held at start-up already; checked again in case a person released one.
            damaged = {
                e.id: why
                for e in entries
                if (why := damage(e.size, len(e.data), len(e.recipients)))
            }
            hold_damaged(conn, damaged)
            entries = [e for e in entries if e.id not in damaged]
            if claim:
                # Claimed durably before anything is sent: from now on `mxdesk queue cancel`
                # refuses, so a cancelled reply can never reach a remote server.
                conn.executemany(
                    "UPDATE entries SET state=? WHERE id=?", [(DELIVERING, e.id) for e in entries]
                )
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return entries

    async def unclaim(self, entry_id: str) -> None:
        """Puts a claimed entry back in the queue unchanged (its attempt crashed)."""

        def op(conn: sqlite3.Connection) -> None:
            claimed, why = (entry_id, DELIVERING), "the attempt crashed"
            history.record_where(conn, "id=? AND state=?", claimed, history.REQUEUED, why)
            conn.execute(
                "UPDATE entries SET state=? WHERE id=? AND state=?", (QUEUED, entry_id, DELIVERING)
            )

        await self._transact(op, new=False)

    async def next_due_time(self, kind: str) -> float | None:
        return await self._run(self._next_due_time, kind)

    def _next_due_time(self, kind: str) -> float | None:
        row = (
            self._db()
            .execute(
                "SELECT min(next_attempt) FROM entries WHERE state=? AND kind=?", (QUEUED, kind)
            )
            .fetchone()
        )
        return float(row[0]) if row[0] is not None else None

    async def update(
        self,
        entry: SpoolEntry,
        results: dict[str, tuple[str, str]],
        *,
        retry_at: float | None,
        hold: bool,
        error: str,
        drop_failed: bool = False,
        notices: Sequence[NewEntry] = (),
        notified: Sequence[str] = (),
        deferred: Mapping[str, str] | None = None,
    ) -> None:
        """Records per-recipient results; removes the entry once no recipient is pending.

        results maps a recipient's mailbox to (status, reply); deferred, the replies of the
        recipients that stay pending (for the history). An entry whose recipients are all
        delivered is deleted; one with failed recipients and none pending is held, or deleted
        with drop_failed (outbound: the sender was told by a DSN). notices (DSNs) are inserted
        in the same transaction, and the mailboxes in notified are marked as told of a delay,
        so a crash can neither lose a notice nor send one twice.
        """

        def op(conn: sqlite3.Connection) -> None:
            attempts = [(m, status, reply) for m, (status, reply) in results.items()]
            attempts += [(m, history.DEFERRED, reply) for m, reply in (deferred or {}).items()]
            history.record_attempts(conn, entry.id, entry.kind, attempts)
            if not notices and not notified and delivered_whole(conn, entry, results):
                return
            for notice in notices:
                insert_entry(conn, notice)
                to = ", ".join(f"<{r.mailbox}>" for r in notice.recipients)
                history.record(conn, entry.id, history.NOTICE, f"{notice.id} to {to}")
            conn.executemany(
                "UPDATE recipients SET notified='delayed' WHERE entry=? AND mailbox=?",
                [(entry.id, m) for m in notified],
            )
            apply_results(conn, entry.id, results, retry_at, hold, error, drop_failed)

        # No client waits for a result: it may wait a moment to share a transaction.
        await self._transact(op, new=bool(notices), patient=True)

    async def hold(self, entry_id: str, reason: str) -> None:
        """Holds a claimed entry unchanged (not an attempt): it waits for release_waiting."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE entries SET state=?, last_error=? WHERE id=?", (HELD, reason, entry_id)
            )
            history.record(conn, entry_id, history.HELD, reason)

        await self._transact(op, new=False)

    async def exists(self, entry_id: str) -> bool:
        def read() -> bool:
            row = self._db().execute("SELECT 1 FROM entries WHERE id=?", (entry_id,))
            return row.fetchone() is not None

        return await self._run(read)

    async def holds(self, prefix: str) -> list[str]:
        """The distinct reasons of held entries that start with prefix."""

        def read() -> list[str]:
            rows = self._db().execute(
                "SELECT DISTINCT last_error FROM entries WHERE state=? AND last_error LIKE ?",
                (HELD, prefix.replace("%", "") + "%"),
            )
            return [r[0] for r in rows]

        return await self._run(read)

    async def counts(self) -> tuple[list[tuple[str, str, int]], float | None]:
        """Entries by kind and shown state, and the oldest entry's creation time."""
        return await self._run(lambda: spool_counts(self._db()))

    async def release_waiting(self, reason: str) -> None:
        """Puts the entries held for reason back in the queue, due now; wakes the runners."""

        def op(conn: sqlite3.Connection) -> None:
            history.record_where(
                conn,
                "state=? AND last_error=?",
                (HELD, reason),
                history.RELEASED,
                "its domain is active",
            )
            conn.execute(
                "UPDATE entries SET state=?, next_attempt=?, last_error='' WHERE state=?"
                " AND last_error=?",
                (QUEUED, time.time(), HELD, reason),
            )

        await self._transact(op, new=True)
