"""The spool's one connection and one thread, shared by group commits and other work.

Operations queued by the event loop share one transaction (one fsync). Where no other process
writes to the spool, the loop runs BEGIN and the operations itself (a few tens of
microseconds) and hands only the COMMIT, the writing and the fsync, to the thread: with every
statement on the thread, each one gave the interpreter lock back and forth with the busy loop,
and the writing took three times as long as on an idle process. Where other processes write
all the time (listener processes), when the write lock is taken as the loop asks for it (the
CLI), or when the history is due to be pruned, the thread runs the whole transaction as
before, waiting for the lock in short steps. Other work on the thread (reads, the outbound
runner's claims) takes turns with the transactions and never runs inside one the loop opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from mxdesk.gateway.spoolfile import BUSY_SECONDS

log = logging.getLogger("mxdesk.gateway.spool")

Op = Callable[[sqlite3.Connection], None]
# An operation, the future its caller waits for, whether it adds entries, and what to call on
# the loop once it is committed (whether or not the caller still waits).
Pending = tuple[Op, "asyncio.Future[None]", bool, Callable[[], None] | None]


class CommitError(Exception):
    """The transaction an operation was in failed; nothing of it was committed."""


class GroupCommit:
    def __init__(
        self,
        executor: Executor,
        connection: Callable[[], sqlite3.Connection],
        write: Callable[[list[Op]], None],
        on_new: Callable[[], None],
        on_loop: Callable[[], bool],
    ) -> None:
        """executor: the spool's one thread; connection: the spool's connection; write: runs
        operations in one transaction of its own on the thread (raises if it failed); on_new:
        called after a transaction that added entries; on_loop: whether the next transaction
        may be opened on the loop (no other process writing all the time, nothing else due)."""
        self._executor, self._connection, self._write = executor, connection, write
        self._on_new, self._on_loop = on_new, on_loop
        self._pending: list[Pending] = []
        self._jobs: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()
        self._busy = False  # a transaction or a job is under way
        self._jobs_turn = False

    @property
    def idle(self) -> bool:
        return not (self._busy or self._pending or self._jobs)

    async def run(self, op: Op, *, new: bool, then: Callable[[], None] | None) -> None:
        """Runs op in the next transaction with every op queued meanwhile. Once queued, op is
        committed (and then called) whether or not the caller still waits. Raises
        CommitError if the transaction failed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future, new, then))
        self._next()
        await future

    async def job(self, fn: Callable[[], Any]) -> Any:
        """fn() on the thread, between transactions; its result, or what it raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.append((fn, future))
        self._next()
        return await future

    def _next(self) -> None:
        if self._busy:
            return
        if self._jobs and (self._jobs_turn or not self._pending):
            self._jobs_turn = False
            fn, future = self._jobs.popleft()
            self._busy = True
            self._on_thread(fn, lambda result, error: self._job_done(future, result, error))
        elif self._pending:
            self._jobs_turn = True
            batch, self._pending = self._pending, []
            self._busy = True
            self._start(batch)

    def _on_thread(self, fn: Callable[[], Any], done: Callable[[Any, Any], None]) -> None:
        """fn() on the thread, then done(result, error) on the loop."""
        loop = asyncio.get_running_loop()

        def work() -> None:
            try:
                result, error = fn(), None
            except BaseException as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(done, result, error)

        self._executor.submit(work)

    def _job_done(self, future: asyncio.Future[Any], result: Any, error: Any) -> None:
        self._busy = False
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        self._next()

    def _start(self, batch: list[Pending]) -> None:
        ops = [op for op, _, _, _ in batch]
        try:
            opened = self._on_loop() and self._begin_here()
            if opened:
                conn = self._connection()
                try:
                    for op in ops:
                        op(conn)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except BaseException as exc:
            self._done(batch, None, exc)
            return
        if opened:
            self._on_thread(self.commit, lambda _, error: self._done(batch, True, error))
        else:
            self._on_thread(
                lambda: self._write(ops), lambda _, error: self._done(batch, None, error)
            )

    def _begin_here(self) -> bool:
        """BEGIN IMMEDIATE on the loop if the write lock is free at once (False: someone else
        holds it, and the thread waits for it instead)."""
        conn = self._connection()
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            return False
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")

    def commit(self) -> None:
        """On the thread: the COMMIT of a transaction the loop opened (the write and fsync)."""
        self._connection().execute("COMMIT")

    def _done(self, batch: list[Pending], opened: bool | None, error: BaseException | None) -> None:
        if opened and error is not None:
            with contextlib.suppress(Exception):  # a failed COMMIT may have ended it already
                conn = self._connection()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        self._busy = False
        self._settle(batch, error)
        self._next()

    def _settle(self, batch: list[Pending], error: BaseException | None) -> None:
        if error is not None:
            log.error("spool transaction of %d operations failed: %s", len(batch), error)
        for _, fut, _, then in batch:
            if error is None and then is not None:
                try:
                    then()
                except Exception:  # the others of the batch are woken all the same
                    log.exception("after a spool transaction")
            if fut.done():  # the caller stopped waiting
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(CommitError(str(error)))
        if error is None and any(new for _, _, new, _ in batch):
            self._on_new()
