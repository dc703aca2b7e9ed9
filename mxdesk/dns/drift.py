"""Drift: active domains rechecked at their authoritative servers, republished or reported.

Every [dns] recheck_interval each active domain is checked. A record missing or different at
two consecutive checks is drift: in a zone mxdesk publishes to it is republished and checked
again every check_interval (health "healing" until served); where mxdesk cannot publish, the
owner (and [dns] admin_address) gets one mail naming the record, what is expected and what is
served, and one more when it is right again. Drift never changes a domain's status: its mail
keeps flowing both ways. A check that reached no server decides nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from mxdesk import dkimkeys, state
from mxdesk.config import Config
from mxdesk.dkimkeys import PENDING
from mxdesk.dns.check import DIFFERS, MISSING, AuthoritativeChecker, CheckReport
from mxdesk.dns.owner_mail import drift_mail, notice_queue_id, queue_notice
from mxdesk.dns.providers import ProviderError
from mxdesk.dns.publish import publish
from mxdesk.dns.settings import DnsConfig
from mxdesk.dns.task import StateTask
from mxdesk.domains import domain_plan
from mxdesk.gateway.dkimkey import DkimKeyError
from mxdesk.gateway.spool import Spool

log = logging.getLogger("mxdesk.dns.drift")
OK, DRIFT, HEALING = "ok", "drift", "healing"
DRIFT_CHECKS = 2  # consecutive checks that must find a record wrong: one may see a change half-way
CONCURRENCY = 8


@dataclass(frozen=True)
class Health:
    """The drift columns of one domain."""

    health: str = OK
    misses: int = 0
    since: float | None = None
    detail: str = ""
    notified: bool = False  # the drift mail is queued, the recovered mail not yet


def health_of(domain: state.Domain) -> Health:
    return Health(
        domain.health,
        domain.drift_misses,
        domain.drift_since,
        domain.drift_detail,
        domain.drift_notified,
    )


def drifted(report: CheckReport) -> list[tuple[str, str]]:
    """(record name, one line: expected and served value per server) for each record that is
    missing or different at some server; lame or unreachable servers are not drift."""
    found = []
    for c in report.checks:
        wrong = [a for a in c.answers if a.status in (MISSING, DIFFERS)]
        if wrong:
            served = "; ".join(
                f"{a.server} serves " + (" | ".join(repr(v) for v in a.served) or "nothing")
                for a in wrong
            )
            line = f"{c.record.name} {c.record.type}: expected {c.record.value!r}, {served}"
            found.append((c.record.name, line))
    return found


def publishable(names: Sequence[str], dns: DnsConfig) -> bool:
    """Whether a provider publishes the zone of each name (not a manual or unlisted zone)."""
    return bool(names) and all(dns.zone_of(n)[1] is not None for n in names)


def assess(previous: Health, detail: str, can_publish: bool, now: float) -> Health:
    """The health after a conclusive check; detail "" means every record is served."""
    if not detail:
        # Kept until the recovered mail is queued: it names the records again.
        return (
            Health(OK, 0, previous.since, previous.detail, True) if previous.notified else Health()
        )
    misses = previous.misses + 1
    if misses < DRIFT_CHECKS:
        return replace(previous, misses=misses)
    ongoing = previous.health != OK
    return Health(
        HEALING if can_publish else DRIFT,
        misses,
        previous.since if ongoing and previous.since is not None else now,
        detail,
        previous.notified if ongoing else False,
    )


def notice_due(health: Health) -> str:
    """The mail a domain's health calls for: "drift", "recovered" or ""."""
    if health.health == DRIFT and not health.notified:
        return "drift"
    if health.health == OK and health.notified:
        return "recovered"
    return ""


async def bounded_each(
    names: Sequence[str], limit: int, work: Callable[[str], Awaitable[object]]
) -> None:
    """Runs work for each name, at most limit at a time."""
    slots = asyncio.Semaphore(limit)

    async def one(name: str) -> None:
        async with slots:
            await work(name)

    await asyncio.gather(*(one(name) for name in names))


@dataclass
class DriftWatch(StateTask):
    """The gateway's task that rechecks active domains (started by DomainLifecycle)."""

    config: Config
    spool: Spool
    concurrency: int = CONCURRENCY
    name = "drift"

    def __post_init__(self) -> None:
        self._checker = AuthoritativeChecker(self.config.dns)

    async def tick(self, conn: sqlite3.Connection, now: float | None = None) -> None:
        """Rechecks every active domain that is due, then queues the mails that are due."""
        now = time.time() if now is None else now
        dns = self.config.dns
        due = conn.execute(
            # A domain activated with --force has records published by other means: its
            # owner said not to check them.
            "SELECT name FROM domains WHERE status='active' AND forced=0"
            " AND COALESCE(last_recheck, activated, 0)"
            " + CASE health WHEN 'healing' THEN ? ELSE ? END <= ?",
            (dns.check_interval, dns.recheck_interval, now),
        ).fetchall()
        await bounded_each([row["name"] for row in due], self.concurrency, self._recheck(conn))
        await self.notify(conn)

    def _recheck(self, conn: sqlite3.Connection) -> Callable[[str], Awaitable[object]]:
        return lambda name: self.recheck(conn, name)

    async def recheck(self, conn: sqlite3.Connection, name: str) -> Health | None:
        domain = state.get_domain(conn, name)
        if domain is None or domain.status != "active":
            return None
        try:
            plan = domain_plan(conn, self.config, name)
        except (DkimKeyError, OSError, state.StateError) as exc:
            log.warning("domain=%s cannot be rechecked: %s", name, exc)
            state.set_domain(conn, name, last_recheck=time.time())
            return None
        # A rotation's new key is checked by the rotation: not served yet is not drift.
        pending = [f"{k.selector}._domainkey." for k in dkimkeys.keys_of(conn, name, (PENDING,))]
        records = [
            r for r in plan.records if r.purpose != "dkim" or not r.name.startswith(tuple(pending))
        ]
        report = await self._checker.check(name, records)
        now = time.time()
        wrong = drifted(report)
        previous = health_of(domain)
        names = [n for n, _ in wrong]
        if wrong or report.ok:
            detail = "\n".join(line for _, line in wrong)
            health = assess(previous, detail, publishable(names, self.config.dns), now)
        else:
            health = previous  # no server answered: nothing is known
        state.set_domain(
            conn,
            name,
            last_recheck=now,
            checked=now,
            served=report.served,
            expected=report.expected,
            health=health.health,
            drift_misses=health.misses,
            drift_since=health.since,
            drift_detail=health.detail,
        )
        if health.health != previous.health:
            log.warning("domain=%s health %s -> %s %s", name, previous.health, health.health, names)
        if health.health != OK and any(self.config.dns.zone_of(n)[1] for n in names):
            try:
                await publish(plan, self.config.dns, retry_delays=())
                log.info("domain=%s drifted records republished", name)
            except ProviderError as exc:
                log.warning("domain=%s republishing failed, next check retries: %s", name, exc)
        return health

    async def notify(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT name FROM domains WHERE status='active'"
            " AND ((health='drift' AND drift_notified=0) OR (health='ok' AND drift_notified=1))"
        ).fetchall()
        for row in rows:
            domain = state.get_domain(conn, row["name"])
            if domain is None:
                continue
            try:
                await self._mail(conn, domain)
            except Exception as exc:
                log.error("domain=%s the drift mail cannot be queued: %s", domain.name, exc)

    async def _mail(self, conn: sqlite3.Connection, domain: state.Domain) -> None:
        health = health_of(domain)
        kind = notice_due(health)
        if not kind or health.since is None:
            return
        tenant = state.get_tenant(conn, domain.tenant)
        to = [tenant.owner]
        admin = self.config.dns.admin_address
        if admin and admin.lower() != tenant.owner.lower():
            to.append(admin)
        message = drift_mail(self.config, kind, domain.name, tenant.slug, to, health.detail)
        queue_id = notice_queue_id("D" if kind == "drift" else "R", domain.name, health.since)
        await queue_notice(self.spool, self.config, queue_id, tenant.slug, to, message)
        if kind == "drift":
            state.set_domain(conn, domain.name, drift_notified=True)
        else:
            state.set_domain(
                conn, domain.name, drift_notified=False, drift_since=None, drift_detail=""
            )
        log.info("domain=%s queue_id=%s %s mail to %s", domain.name, queue_id, kind, to)
