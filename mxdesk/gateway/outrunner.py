"""The outbound runner: delivers claimed entries and tells their senders what became of them.

An outbound entry leaves the spool only after every recipient has either the remote 250 or a
permanent failure whose DSN is committed in the same transaction (DESIGN invariant 2). Delay
notices go out once per recipient, at its first temporary failure.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from mxdesk.gateway.departure import Departure
from mxdesk.gateway.dsn import (
    DELAYED,
    DELIVERED,
    FAILED,
    RecipientReport,
    build_notice,
    wants,
)
from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.mx import INBOUND
from mxdesk.gateway.policy import Accept, RecipientPolicy
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.runner import (
    Delivered,
    Deliverer,
    FailedPermanently,
    Outcome,
    QueueRunner,
    RetryLater,
)
from mxdesk.gateway.spool import DELIVERED as R_DELIVERED
from mxdesk.gateway.spool import FAILED as R_FAILED
from mxdesk.gateway.spool import NewEntry, Recipient, Spool, SpoolEntry, new_queue_id
from mxdesk.metrics import GatewayMetrics

OUTBOUND = "out"
log = logging.getLogger("mxdesk.gateway.outbound")


class Notices:
    """Makes the DSN entries for a sender; they travel the inbound path to the store."""

    def __init__(self, policy: RecipientPolicy, host_name: str, key: bytes) -> None:
        self._policy = policy
        self._host_name = host_name
        self._key = key

    def make(self, entry: SpoolEntry, reports: list[RecipientReport]) -> list[NewEntry]:
        if not reports or not entry.mail_from:
            return []
        route = self._policy.check(entry.mail_from)
        if not isinstance(route, Accept):
            log.warning(
                "queue_id=%s no DSN: the sender <%s> is not a hosted mailbox",
                entry.id,
                entry.mail_from,
            )
            return []
        notices = []
        now = time.time()
        for action in (FAILED, DELAYED, DELIVERED):
            group = [r for r in reports if r.action == action]
            if not group:
                continue
            notice_id = new_queue_id()
            data = build_notice(
                entry, group, notice_id=notice_id, host_name=self._host_name, key=self._key, now=now
            )
            rcpt = Recipient(route.original, route.mailbox, route.tenant)
            # The null reverse-path: nobody bounces a bounce (RFC 5321 §4.5.5).
            notices.append(NewEntry(notice_id, INBOUND, "local", "", (rcpt,), data))
            log.info(
                "queue_id=%s notice=%s action=%s to=<%s>", entry.id, notice_id, action, rcpt.mailbox
            )
        return notices


class OutboundRunner(QueueRunner):
    def __init__(
        self,
        spool: Spool,
        deliverer: Deliverer,
        retry: RetryPolicy,
        concurrency: int,
        notices: Notices,
        departure: Departure,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """departure: signs each message before every attempt, or says why it may not leave
        yet (its domain is not active, so its key may not be served: held)."""
        super().__init__(spool, OUTBOUND, deliverer, retry, concurrency, log, metrics)
        self._notices = notices
        self._departure = departure

    async def dispose(self, entry: SpoolEntry) -> Outcome:
        signed, reason = await self._departure.signed(entry)
        if reason:
            await self._spool.hold(entry.id, reason)
            self._log.info("queue_id=%s held: %s", entry.id, reason)
            return RetryLater(0.0, reason)
        entry = dataclasses.replace(entry, data=signed)
        pending = entry.pending
        replies = await self.attempt(entry)
        results: dict[str, tuple[str, str]] = {}
        reports: list[RecipientReport] = []
        deferred: list[tuple[Recipient, Reply]] = []
        for r in pending:
            reply = replies[r.mailbox]
            if reply.ok:
                results[r.mailbox] = (R_DELIVERED, str(reply))
                if wants(r, "SUCCESS"):
                    reports.append(RecipientReport(r, DELIVERED, reply))
            elif reply.temporary:
                deferred.append((r, reply))
            else:
                results[r.mailbox] = (R_FAILED, str(reply))
                if wants(r, "FAILURE"):
                    reports.append(RecipientReport(r, FAILED, reply))
        age = time.time() - entry.created
        gave_up = bool(deferred) and self._retry.give_up(age)
        notified = []
        for r, reply in deferred:
            if gave_up:
                final = Reply(reply.code + 100, f"{reply.text} (gave up after {age / 3600:.0f} h)")
                results[r.mailbox] = (R_FAILED, str(final))
                if wants(r, "FAILURE"):
                    reports.append(RecipientReport(r, FAILED, final))
            elif not r.notified and wants(r, "DELAY"):
                reports.append(RecipientReport(r, DELAYED, reply))
                notified.append(r.mailbox)
        error = "; ".join(f"<{r.mailbox}>: {reply}" for r, reply in deferred)
        failures = [f"<{m}>: {text}" for m, (status, text) in results.items() if status == R_FAILED]
        delay = self._retry.delay(entry.attempts + 1)
        later = {} if gave_up else {r.mailbox: str(reply) for r, reply in deferred}
        await self._spool.update(
            entry,
            results,
            retry_at=time.time() + delay if deferred and not gave_up else None,
            hold=False,
            error=error or "; ".join(failures),
            drop_failed=True,
            notices=self._notices.make(entry, reports),
            notified=notified,
            deferred=later,
        )
        self._metrics.attempted(OUTBOUND, entry.created, results, len(later))
        if deferred and not gave_up:
            self._log.warning("queue_id=%s deferred for %.0fs: %s", entry.id, delay, error)
            return RetryLater(delay, error)
        if failures:
            self._log.warning("queue_id=%s bounced: %s", entry.id, "; ".join(failures))
            return FailedPermanently("; ".join(failures))
        self._log.info("queue_id=%s delivered to all recipients", entry.id)
        return Delivered()

    async def crashed(self, entry: SpoolEntry) -> None:
        try:
            await self._spool.unclaim(entry.id)
        except Exception as exc:
            # Still claimed: the next start of the gateway puts it back in the queue.
            self._log.error("queue_id=%s cannot be put back in the queue: %s", entry.id, exc)
