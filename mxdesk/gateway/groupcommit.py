"""Group commit for the spool: operations queued by the event loop share one transaction (one
fsync), committed by the spool's thread back to back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger("mxdesk.gateway.spool")

Op = Callable[[sqlite3.Connection], None]
# An operation, the future its caller waits for, whether it adds entries, and what to call on
# the loop once its transaction ended, with whether it committed (whether or not the caller
# still waits).
Pending = tuple[Op, "asyncio.Future[None]", bool, Callable[[bool], None] | None]
# Transactions committed one after the other before the thread lets a read that waits for it
# have its turn.
DRAIN_BATCHES = 8
# How long an operation nobody outside waits for (a delivery's result) waits for company before
# it starts a transaction of its own.
GATHER_SECONDS = 0.001


class CommitError(Exception):
    """The transaction an operation was in failed; nothing of it was committed."""


class GroupCommit:
    def __init__(
        self,
        executor: Executor,
        write: Callable[[list[Op]], None],
        on_new: Callable[[], None],
    ) -> None:
        """executor: the spool's one thread; write: runs the operations in one transaction
        there (raises if it failed); on_new: called on the loop after a transaction that
        added entries."""
        self._executor, self._write, self._on_new = executor, write, on_new
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self.draining = False  # a drain is queued on the thread or running there
        # While patient operations wait for company: the timer that starts their drain.
        self._gathering: asyncio.TimerHandle | None = None

    async def run(
        self, op: Op, *, new: bool, then: Callable[[bool], None] | None, patient: bool = False
    ) -> None:
        """Runs op in the next transaction with every op queued meanwhile. Once queued, op is
        committed (and then(True) called) whether or not the caller still waits; then(False)
        if the transaction failed, which also raises CommitError. A patient op (one no client
        waits for: a delivery's result) that would start a transaction waits GATHER_SECONDS
        for others to share it, unless one that is not patient comes first: under load most
        results then ride in the transactions of new messages instead of one of their own."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._pending.append((op, future, new, then))
            start, self.draining = not self.draining, True
        if start and patient:
            self._gathering = loop.call_later(GATHER_SECONDS, self._start, loop)
        elif start:
            self._executor.submit(self._drain, loop)
        elif not patient and self._gathering is not None:
            self._gathering.cancel()  # no drain runs while the patient ones gather
            self._start(loop)
        await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._gathering = None
        self._executor.submit(self._drain, loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the spool's thread: commits what is pending, and what arrived meanwhile in the
        next transaction, without going back to the event loop in between (a turn of a busy
        loop took longer than the commit); each transaction's callers are woken at once."""
        for _ in range(DRAIN_BATCHES):
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self.draining = False
                    return
            error: BaseException | None = None
            try:
                self._write([op for op, _, _, _ in batch])
            except BaseException as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(self._settle, batch, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return
        self._executor.submit(self._drain, loop)  # reads queued meanwhile go first

    def _settle(self, batch: list[Pending], error: BaseException | None) -> None:
        if error is not None:
            log.error("spool transaction of %d operations failed: %s", len(batch), error)
        for _, fut, _, then in batch:
            if then is not None:
                try:
                    then(error is None)
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
