"""A domain's way to active: pending -> publishing -> propagating -> active, kept in state.db.

The CLI publishes a new domain itself (so that a refused key is said at once); the gateway's
DomainLifecycle task carries every domain the rest of the way, across restarts: it publishes
what a killed CLI left half-way, checks propagating domains at their authoritative servers,
activates them, mails the owner and releases the replies that waited for the domain; its
DriftWatch (mxdesk.dns.drift) then rechecks the active ones and its KeyRotation
(mxdesk.dns.rotation) changes their DKIM keys.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from mxdesk import dkimkeys, state
from mxdesk.config import Config
from mxdesk.dns.check import AuthoritativeChecker, CheckReport
from mxdesk.dns.drift import DriftWatch, bounded_each
from mxdesk.dns.owner_mail import activation_mail, activation_queue_id, queue_notice
from mxdesk.dns.providers import ProviderError
from mxdesk.dns.publish import RETRY_DELAYS, Published, publish
from mxdesk.dns.rotation import KeyRotation
from mxdesk.dns.task import StateTask
from mxdesk.domains import domain_plan
from mxdesk.gateway.dkimkey import DkimKeyError
from mxdesk.gateway.senders import WAITING_PREFIX, WAITING_SUFFIX
from mxdesk.gateway.spool import Spool

log = logging.getLogger("mxdesk.dns.lifecycle")
IN_PROGRESS = ("pending", "publishing", "propagating")
MAX_BACKOFF = 3600.0


async def publish_domain(
    conn: sqlite3.Connection,
    config: Config,
    name: str,
    retry_delays: tuple[float, ...] = RETRY_DELAYS,
) -> list[Published]:
    """Publishes the domain's records; on success it is propagating. Raises ProviderError."""
    state.set_domain(conn, name, status="publishing")
    results = await publish(domain_plan(conn, config, name), config.dns, retry_delays)
    state.set_domain(conn, name, status="propagating", last_error="", attempts=0, next_action=0.0)
    log.info("domain=%s published; propagating", name)
    return results


def activate(conn: sqlite3.Connection, name: str, *, forced: bool = False) -> None:
    state.set_domain(
        conn,
        name,
        status="active",
        activated=time.time(),
        forced=forced,
        owner_notified=False,
        last_error="",
    )
    if forced:
        log.warning("domain=%s activated by hand (--force), its records unchecked", name)
    else:
        log.info("domain=%s active: every authoritative server serves its records", name)


async def check_domain(
    conn: sqlite3.Connection, config: Config, checker: AuthoritativeChecker, name: str
) -> CheckReport:
    """Checks a domain at its authoritative servers, records the progress, and activates a
    propagating domain once every server serves every record."""
    report = await checker.check(name, domain_plan(conn, config, name).records)
    domain = state.get_domain(conn, name)
    if report.ok and domain is not None and domain.status == "propagating":
        activate(conn, name)
    state.set_domain(
        conn,
        name,
        served=report.served,
        expected=report.expected,
        checked=time.time(),
        next_action=time.time() + config.dns.check_interval,
        last_error="" if report.ok else "; ".join(report.problems()[:3]),
    )
    return report


@dataclass
class DomainLifecycle(StateTask):
    """The gateway's task that carries domains forward (one pass every TICK_SECONDS)."""

    config: Config
    spool: Spool
    concurrency: int = 16
    name = "lifecycle"

    def __post_init__(self) -> None:
        self._checker = AuthoritativeChecker(self.config.dns)
        # Its own task and connection: rechecking thousands of active domains must not hold
        # up a new domain's way to active.
        self._drift = DriftWatch(self.config, self.spool)
        self._rotation = KeyRotation(self.config)

    def start(self) -> None:
        super().start()
        self._drift.start()
        self._rotation.start()

    async def stop(self) -> None:
        await self._drift.stop()
        await self._rotation.stop()
        await super().stop()

    async def tick(self, conn: sqlite3.Connection) -> None:
        due = conn.execute(
            "SELECT name FROM domains WHERE status IN (?,?,?) AND next_action<=?",
            (*IN_PROGRESS, time.time()),
        ).fetchall()
        await bounded_each(
            [row["name"] for row in due], self.concurrency, lambda n: self._advance(conn, n)
        )
        await self._notify_owners(conn)
        await self._release_replies(conn)

    async def _advance(self, conn: sqlite3.Connection, name: str) -> None:
        assert self._checker is not None
        domain = state.get_domain(conn, name)
        if domain is None or not dkimkeys.keys_of(conn, name):
            # `domain add` writes the row, then makes the keys: a plan without them would be
            # published and checked incomplete.
            return
        try:
            if domain.status in ("pending", "publishing"):
                await publish_domain(conn, self.config, name, retry_delays=())
            await check_domain(conn, self.config, self._checker, name)
        except (ProviderError, DkimKeyError, OSError) as exc:
            delay = min(self.config.dns.check_interval * 2**domain.attempts, MAX_BACKOFF)
            log.warning("domain=%s %s: trying again in %.0fs", name, exc, delay)
            state.set_domain(
                conn,
                name,
                last_error=str(exc)[:500],
                attempts=domain.attempts + 1,
                next_action=time.time() + delay,
            )

    async def _notify_owners(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT name FROM domains WHERE status='active' AND owner_notified=0"
        ).fetchall()
        for row in rows:
            domain = state.get_domain(conn, row["name"])
            if domain is None or domain.activated is None:
                continue
            try:
                await self._mail_owner(conn, domain)
            except Exception as exc:
                log.error("domain=%s the owner's mail cannot be queued: %s", domain.name, exc)
                continue
            state.set_domain(conn, domain.name, owner_notified=True)

    async def _mail_owner(self, conn: sqlite3.Connection, domain: state.Domain) -> None:
        assert domain.activated is not None
        cfg = self.config
        tenant = state.get_tenant(conn, domain.tenant)
        addresses = [
            m.address
            for m in state.list_mailboxes(conn, tenant.slug)
            if m.active and m.address.endswith("@" + domain.name)
        ]
        message = activation_mail(cfg, domain.name, tenant.slug, tenant.owner, addresses)
        queue_id = activation_queue_id(domain.name, domain.activated)
        await queue_notice(self.spool, cfg, queue_id, tenant.slug, [tenant.owner], message)
        log.info("domain=%s queue_id=%s owner <%s> told", domain.name, queue_id, tenant.owner)

    async def _release_replies(self, conn: sqlite3.Connection) -> None:
        for reason in await self.spool.holds(WAITING_PREFIX):
            name = reason.removeprefix(WAITING_PREFIX).removesuffix(WAITING_SUFFIX)
            domain = state.get_domain(conn, name)
            if domain is not None and domain.status == "active":
                await self.spool.release_waiting(reason)
                log.info("domain=%s active: its waiting replies are released", name)
