"""Runners: take due spool entries, hand each to a deliverer, record what happened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from mxdesk.gateway.lmtp import LmtpError, Reply
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.spool import (
    CLAIMED_KINDS,
    DELIVERED,
    DELIVERING,
    FAILED,
    Spool,
    SpoolEntry,
    SpoolError,
)
from mxdesk.metrics import GatewayMetrics

POLL_SECONDS = 5.0
# How long a stop waits for the deliveries in flight before it interrupts them: a store or a
# remote server that stopped answering must not hold the gateway past systemd's stop timeout.
STOP_GRACE = 10.0


class DeliveryError(Exception):
    """The whole attempt failed before any recipient had an answer (temporary)."""


class Deliverer(Protocol):
    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        """Delivers entry to its pending recipients; returns a Reply per mailbox."""
        ...


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class RetryLater:
    seconds: float
    reason: str


@dataclass(frozen=True)
class FailedPermanently:
    reason: str


Outcome = Delivered | RetryLater | FailedPermanently


class QueueRunner:
    """Disposes of the entries of one kind, several at a time."""

    def __init__(
        self,
        spool: Spool,
        kind: str,
        deliverer: Deliverer,
        retry: RetryPolicy,
        concurrency: int,
        logger: logging.Logger,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._spool = spool
        self._metrics = metrics or GatewayMetrics()
        self._kind = kind
        self._deliverer = deliverer
        self._retry = retry
        self._concurrency = concurrency
        self._log = logger
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self._wake = asyncio.Event()
        # The spool may hold due entries that are not in flight: read it when there is room.
        self._backlog = True
        self._next_read = 0.0  # time.time() at which to read it anyway (retries, the CLI)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        spool.on_commit(self._more)
        self._reserved = 0  # entries claimed for this runner at their commit, not yet taken
        spool.on_new_entry(self._take)
        if kind in CLAIMED_KINDS:
            spool.on_claim(self._reserve, self._release)

    def _reserve(self, kind: str) -> bool:
        """Room for an entry about to be committed claimed for this runner (Spool.on_claim)."""
        if kind != self._kind or self._task is None or self._stopping:
            return False
        if len(self._inflight) + self._reserved >= self._concurrency:
            return False
        self._reserved += 1
        return True

    def _release(self, kind: str) -> None:
        if kind == self._kind:
            self._reserved -= 1

    def _more(self) -> None:
        self._backlog = True
        self._wake.set()

    def _take(self, entry: SpoolEntry) -> None:
        """A new entry this process committed: delivered at once when there is room (no need
        to read it back), else left for the next read of the spool. One claimed for this
        runner at its commit has its room; if the runner stopped meanwhile it stays claimed,
        and the next start puts it back in the queue."""
        if entry.kind != self._kind:
            return
        if entry.state == DELIVERING:
            self._reserved -= 1
            if not self._stopping and entry.id not in self._inflight:
                self._inflight[entry.id] = asyncio.create_task(self._dispose_logged(entry))
            return
        if entry.id in self._inflight:
            return
        if self._task is None or self._stopping or len(self._inflight) >= self._concurrency:
            self._more()
            return
        self._inflight[entry.id] = asyncio.create_task(self._dispose_logged(entry))

    async def attempt(self, entry: SpoolEntry) -> dict[str, Reply]:
        """One delivery attempt: a reply for every pending recipient, whatever happens."""
        pending = entry.pending
        try:
            replies = await self._deliverer.deliver(entry)
        except (DeliveryError, LmtpError, OSError) as exc:
            replies = {r.mailbox: Reply(451, f"4.4.0 {exc}") for r in pending}
        missing = Reply(451, "4.3.0 no reply for this recipient")
        return {r.mailbox: replies.get(r.mailbox, missing) for r in pending}

    async def dispose(self, entry: SpoolEntry) -> Outcome:
        pending = entry.pending
        replies = await self.attempt(entry)
        results: dict[str, tuple[str, str]] = {}
        temporary: list[str] = []
        failed: list[str] = []
        deferred: dict[str, str] = {}
        for r in pending:
            reply = replies[r.mailbox]
            if reply.ok:
                results[r.mailbox] = (DELIVERED, str(reply))
                self._log.info("queue_id=%s to=<%s> delivered: %s", entry.id, r.mailbox, reply)
            elif reply.temporary:
                temporary.append(f"<{r.mailbox}>: {reply}")
                deferred[r.mailbox] = str(reply)
            else:
                results[r.mailbox] = (FAILED, str(reply))
                failed.append(f"<{r.mailbox}>: {reply}")
                self._log.warning("queue_id=%s to=<%s> refused: %s", entry.id, r.mailbox, reply)
        error = "; ".join(temporary + failed)
        if temporary:
            if self._retry.give_up(time.time() - entry.created):
                reason = f"gave up after {entry.attempts + 1} attempts: {error}"
                await self._spool.update(
                    entry, results, retry_at=None, hold=True, error=reason, deferred=deferred
                )
                self._metrics.attempted(self._kind, entry.created, results, len(deferred))
                self._log.error("queue_id=%s held: %s", entry.id, reason)
                return FailedPermanently(reason)
            delay = self._retry.delay(entry.attempts + 1)
            await self._spool.update(
                entry,
                results,
                retry_at=time.time() + delay,
                hold=False,
                error=error,
                deferred=deferred,
            )
            self._metrics.attempted(self._kind, entry.created, results, len(deferred))
            self._log.warning("queue_id=%s deferred for %.0fs: %s", entry.id, delay, error)
            return RetryLater(delay, error)
        await self._spool.update(entry, results, retry_at=None, hold=bool(failed), error=error)
        self._metrics.attempted(self._kind, entry.created, results, 0)
        if failed:
            self._log.error("queue_id=%s held: %s", entry.id, error)
            return FailedPermanently(error)
        return Delivered()

    async def _dispose_logged(self, entry: SpoolEntry) -> Outcome:
        outcome: Outcome = RetryLater(POLL_SECONDS, "the attempt did not end")
        try:
            outcome = await self.dispose(entry)
        except Exception as exc:
            # The entry stays queued as it was; it is tried again at the next poll. A storage
            # error is the disk's (one line, not a traceback per attempt); anything else a bug.
            if isinstance(exc, SpoolError):
                self._log.error("queue_id=%s result not recorded: %s", entry.id, exc)
            else:
                self._log.exception("queue_id=%s delivery attempt crashed: %s", entry.id, exc)
            await self.crashed(entry)
            outcome = RetryLater(POLL_SECONDS, str(exc))
        finally:
            self._inflight.pop(entry.id, None)
            if not isinstance(outcome, Delivered):
                self._backlog = True  # it is queued again: when, the spool says
            self._wake.set()
        return outcome

    async def crashed(self, entry: SpoolEntry) -> None:
        """Called after an attempt raised; the entry must become due again."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self._concurrency - len(self._inflight) - self._reserved
            if time.time() >= self._next_read:
                self._backlog = True
            if free > 0 and self._backlog:
                self._backlog = False  # until a commit, an attempt that did not deliver …
                entries: list[SpoolEntry] = []
                try:
                    entries = await self._spool.due(self._kind, free, set(self._inflight))
                except Exception as exc:
                    self._backlog = True
                    self._log.error("cannot read the spool: %s", exc)
                if self._stopping:
                    break
                for entry in entries:
                    # One taken from a commit while the spool was read is in flight already.
                    if entry.id not in self._inflight:
                        self._inflight[entry.id] = asyncio.create_task(self._dispose_logged(entry))
                if entries and len(entries) == free:
                    self._backlog = True  # there may be more
                    continue
                timeout = POLL_SECONDS
                if not entries:
                    try:
                        nxt = await self._spool.next_due_time(self._kind)
                    except Exception:
                        nxt = None
                    if nxt is not None and nxt > time.time():
                        timeout = min(timeout, nxt - time.time())
                self._next_read = time.time() + timeout
            # No room: the end of an attempt wakes the loop.
            wait = POLL_SECONDS if free <= 0 else max(0.0, self._next_read - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stops taking entries and waits for the deliveries in flight, for grace seconds;
        then interrupts those still waiting for their peer. An interrupted entry keeps its
        place in the spool and is delivered after the next start: the store files a
        re-delivered message once (its queue id); a remote server may get a reply twice if
        it had accepted it just before."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if not self._inflight:
            return
        _, late = await asyncio.wait(list(self._inflight.values()), timeout=grace)
        if late:
            self._log.warning(
                "stopping: %d %s still waiting for its peer after %.0fs interrupted; left in"
                " the queue for the next start",
                len(late),
                "delivery" if len(late) == 1 else "deliveries",
                grace,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
