"""DKIM key rotation: a state machine over the phases of each key, kept in state.db.

    rotate: new keys (pending) -> published -> served by every authoritative server for
    [dkim] publish_lag -> they sign, the old ones retire -> the old records stay published
    [dkim] retire_after -> removed -> once no server serves them, the keys are forgotten.

Every step reads its state from state.db and is safe to repeat, so the gateway's task (and
`mxdesk dkim rotate --wait`) resumes a rotation wherever a restart or kill -9 left it. The
switch is one transaction: there is always exactly one signing key per algorithm, and it is
never one whose record is not served. `[dkim] rotate_every` starts rotations by itself where
mxdesk publishes the records; a revoked key (`mxdesk dkim revoke`) starts one at once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from mxdesk import dkimkeys, domains, state
from mxdesk.config import Config
from mxdesk.dkimkeys import ACTIVE, PENDING, REMOVING, RETIRING, REVOKED, KeyRecord
from mxdesk.dns.check import MISSING, AuthoritativeChecker
from mxdesk.dns.drift import bounded_each
from mxdesk.dns.drift import publishable as drift_publishable
from mxdesk.dns.providers import ProviderError
from mxdesk.dns.publish import publish, withdraw
from mxdesk.dns.records import Record
from mxdesk.dns.task import StateTask
from mxdesk.domains import domain_plan
from mxdesk.gateway.dkimkey import DkimKeyError

log = logging.getLogger("mxdesk.dns.rotation")
UNPUBLISHED = "the empty p= is not published yet"
CONCURRENCY = 8


@dataclass(frozen=True)
class Phase:
    """Where a domain's keys are: steady (signing), publishing, waiting (served, lag running),
    retiring (old keys published until removal), removing; with when the next step is due."""

    name: str
    due: float | None = None  # when the next step happens by itself (None: unknown)
    detail: str = ""


def phase_of(keys: list[KeyRecord], config: Config, now: float | None = None) -> Phase:
    now = time.time() if now is None else now
    dkim = config.dkim
    pending = [k for k in keys if k.state == PENDING]
    if pending:
        unserved = [k for k in pending if k.served_since is None]
        if unserved:
            return Phase("publishing", None, unserved[0].note)
        since = max(k.served_since or now for k in pending)
        return Phase("waiting", since + dkim.publish_lag)
    old = [k for k in keys if k.state in (RETIRING, REVOKED)]
    if old:
        return Phase("retiring", min((k.retired or now) for k in old) + dkim.retire_after)
    removing = [k for k in keys if k.state == REMOVING]
    if removing:
        return Phase("removing", None, removing[0].note)
    active = [k.activated or k.created for k in keys if k.state == ACTIVE]
    if active and dkim.rotate_every > 0:
        return Phase("steady", max(active) + dkim.rotate_every)
    return Phase("steady")


def domains_with_keys(conn: sqlite3.Connection, config: Config) -> list[str]:
    """Domains whose keys rotate: the active tenants' domains and the base domain."""
    rows = conn.execute(
        "SELECT DISTINCT k.domain FROM dkim_keys k LEFT JOIN domains d ON d.name = k.domain"
        " WHERE d.status = 'active' OR k.domain = ?",
        (config.general.base_domain,),
    )
    return [r["domain"] for r in rows]


def keys_under(conn: sqlite3.Connection, config: Config, name: str) -> str:
    """The name under which the domain's key records live: its label in [dns] dkim_zone when
    it is delegated, else the domain itself (the base domain included)."""
    domain = state.get_domain(conn, name)
    return (domain and domains.delegation_zone(config, domain)) or name


def key_record_name(under: str, selector: str) -> str:
    return f"{selector}._domainkey.{under}"


def publishable(conn: sqlite3.Connection, config: Config, name: str) -> bool:
    """Whether mxdesk publishes every DKIM record of the domain itself."""
    plan = domain_plan(conn, config, name)
    return drift_publishable([r.name for r in plan.records if r.purpose == "dkim"], config.dns)


def start(conn: sqlite3.Connection, config: Config, name: str) -> list[KeyRecord]:
    """Begins a rotation: new pending keys, one per algorithm the domain signs with."""
    if name != config.general.base_domain:
        domain = state.get_domain(conn, name)
        if domain is None:
            raise state.StateError(f"no domain {name!r}: see 'mxdesk domain list'")
        if domain.status != "active":
            raise state.StateError(f"{name} is {domain.status}: its keys rotate once it is active")
    delegated = keys_under(conn, config, name) != name
    keys = dkimkeys.add_pending(conn, config.dkim, name, delegated=delegated)
    log.info("domain=%s rotation started: %s", name, ", ".join(k.selector for k in keys))
    return keys


def switch(conn: sqlite3.Connection, name: str, now: float) -> list[str]:
    """The new keys sign and the old ones retire, in one transaction; the new selectors."""
    with state.transaction(conn):
        pending = conn.execute(
            "SELECT selector, algorithm FROM dkim_keys WHERE domain=? AND state='pending'",
            (name,),
        ).fetchall()
        for row in pending:
            conn.execute(
                "UPDATE dkim_keys SET state='retiring', retired=?"
                " WHERE domain=? AND algorithm=? AND state='active'",
                (now, name, row["algorithm"]),
            )
        conn.execute(
            "UPDATE dkim_keys SET state='active', activated=?, note=''"
            " WHERE domain=? AND state='pending'",
            (now, name),
        )
    return [r["selector"] for r in pending]


async def step(
    conn: sqlite3.Connection,
    config: Config,
    checker: AuthoritativeChecker,
    name: str,
    now: float | None = None,
) -> Phase:
    """Takes the domain's keys one step forward where one is due; returns the phase after."""
    now = time.time() if now is None else now
    keys = dkimkeys.keys_of(conn, name)
    revoked = [k for k in keys if k.state == REVOKED and k.note == UNPUBLISHED]
    if revoked:
        await publish_revocation(conn, config, name, revoked)
    pending = [k for k in keys if k.state == PENDING]
    if pending:
        await _publish_pending(conn, config, checker, name, pending, now)
    elif config.dkim.rotate_every > 0 and _rotation_due(conn, config, name, keys, now):
        start(conn, config, name)
        return await step(conn, config, checker, name, now)
    for key in keys:
        over = (key.retired or now) + config.dkim.retire_after <= now
        if key.state in (RETIRING, REVOKED) and over:
            dkimkeys.set_key(conn, name, key.selector, state=REMOVING, note="")
            log.info("domain=%s key %s retired: its record is being removed", name, key.selector)
    removing = dkimkeys.keys_of(conn, name, (REMOVING,))
    if removing:
        await _remove(conn, config, checker, name, removing)
    return phase_of(dkimkeys.keys_of(conn, name), config, now)


async def publish_revocation(
    conn: sqlite3.Connection, config: Config, name: str, revoked: list[KeyRecord]
) -> bool:
    """Publishes the empty p= of revoked keys; False (and retried next step) on failure."""
    try:
        await publish(domain_plan(conn, config, name), config.dns, retry_delays=())
    except ProviderError as exc:
        log.warning("domain=%s publishing the revocation failed, retrying: %s", name, exc)
        return False
    for key in revoked:
        dkimkeys.set_key(conn, name, key.selector, note="")
    return True


def _rotation_due(
    conn: sqlite3.Connection, config: Config, name: str, keys: list[KeyRecord], now: float
) -> bool:
    active = [k.activated or k.created for k in keys if k.state == ACTIVE]
    if not active or max(active) + config.dkim.rotate_every > now:
        return False
    if any(k.state in (RETIRING, REVOKED, REMOVING) for k in keys):
        return False  # one rotation at a time: the last one's old key is still out there
    return publishable(conn, config, name)


async def _publish_pending(
    conn: sqlite3.Connection,
    config: Config,
    checker: AuthoritativeChecker,
    name: str,
    pending: list[KeyRecord],
    now: float,
) -> None:
    try:
        plan = domain_plan(conn, config, name)
    except (DkimKeyError, OSError, state.StateError) as exc:
        log.error("domain=%s rotation cannot go on: %s", name, exc)
        for key in pending:
            dkimkeys.set_key(conn, name, key.selector, note=str(exc))
        return
    under = keys_under(conn, config, name)
    by_name = {r.name: r for r in plan.records if r.purpose == "dkim"}
    wanted = [by_name[n] for k in pending if (n := key_record_name(under, k.selector)) in by_name]
    if any(config.dns.zone_of(r.name)[1] is not None for r in wanted):
        try:
            await publish(plan, config.dns, retry_delays=())
        except ProviderError as exc:
            log.warning("domain=%s publishing the new DKIM key failed, retrying: %s", name, exc)
            for key in pending:
                dkimkeys.set_key(conn, name, key.selector, served_since=None, note=str(exc))
            return
    report = await checker.check(name, wanted)
    if not report.ok:
        # Served for publish_lag means served at every check: a server that lost it restarts
        # the wait.
        note = "; ".join(report.problems()[:2])
        for key in pending:
            dkimkeys.set_key(conn, name, key.selector, served_since=None, note=note)
        return
    for key in pending:
        if key.served_since is None:
            dkimkeys.set_key(conn, name, key.selector, served_since=now, note="")
            log.info("domain=%s new DKIM key %s served by every server", name, key.selector)
    since = max(k.served_since or now for k in pending)
    if since + config.dkim.publish_lag <= now:
        selectors = switch(conn, name, now)
        log.info("domain=%s signs with %s now", name, ", ".join(selectors))


async def _remove(
    conn: sqlite3.Connection,
    config: Config,
    checker: AuthoritativeChecker,
    name: str,
    removing: list[KeyRecord],
) -> None:
    under = keys_under(conn, config, name)
    records = [
        Record(key_record_name(under, k.selector), "TXT", "", "dkim", config.dns.ttl)
        for k in removing
    ]
    try:
        await withdraw(records, config.dns)
    except ProviderError as exc:
        log.warning("domain=%s removing old DKIM records failed, retrying: %s", name, exc)
        return
    report = await checker.check(name, records)
    for key, check in zip(removing, report.checks, strict=True):
        if check.answers and all(a.status == MISSING for a in check.answers):
            dkimkeys.forget_key(conn, key)
            log.info("domain=%s old DKIM key %s removed: no server serves it", name, key.selector)
        else:
            where = config.dns.zone_of(check.record.name)[1]
            note = "; ".join(
                f"{a.server} still serves it" if a.status != MISSING else "" for a in check.answers
            ).strip("; ")
            if where is None:
                note = f"remove {check.record.name} TXT from the zone ({note})"
            dkimkeys.set_key(conn, name, key.selector, note=note)


def revoke(conn: sqlite3.Connection, config: Config, name: str, selector: str) -> KeyRecord:
    """Stops a key from signing at once and publishes an empty p= for it: another served key
    of its algorithm signs instead (or, for RSA, the base domain's until a new one is served),
    and a rotation starts when none is under way. Returns the key as it was."""
    key = dkimkeys.get_key(conn, name, selector)
    if key is None:
        raise state.StateError(f"{name} has no DKIM key {selector!r}: see 'mxdesk dkim status'")
    if key.state in (REVOKED, REMOVING):
        raise state.StateError(f"{selector} of {name} is {key.state} already")
    now = time.time()
    with state.transaction(conn):
        conn.execute(
            "UPDATE dkim_keys SET state='revoked', retired=?, served_since=NULL, note=?"
            " WHERE domain=? AND selector=?",
            (now, UNPUBLISHED, name, selector),
        )
        if key.state == ACTIVE:
            # A served pending key of the same algorithm takes over, else a retiring one.
            row = conn.execute(
                "SELECT selector FROM dkim_keys WHERE domain=? AND algorithm=?"
                " AND (state='retiring' OR (state='pending' AND served_since IS NOT NULL))"
                " ORDER BY state='pending' DESC, created DESC",
                (name, key.algorithm),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE dkim_keys SET state='active', activated=?, retired=NULL, note=''"
                    " WHERE domain=? AND selector=?",
                    (now, name, row["selector"]),
                )
    Path(key.path).unlink(missing_ok=True)  # a leaked key: nothing will sign with it again
    log.warning("domain=%s DKIM key %s revoked", name, selector)
    return key


@dataclass
class KeyRotation(StateTask):
    """The gateway's task that carries rotations forward (started by DomainLifecycle)."""

    config: Config
    concurrency: int = CONCURRENCY
    name = "rotation"

    def __post_init__(self) -> None:
        self._checker = AuthoritativeChecker(self.config.dns)

    async def tick(self, conn: sqlite3.Connection) -> None:
        names = domains_with_keys(conn, self.config)

        async def one(name: str) -> None:
            try:
                await step(conn, self.config, self._checker, name)
            except (DkimKeyError, OSError, state.StateError) as exc:
                log.warning("domain=%s rotation step failed: %s", name, exc)

        await bounded_each(names, self.concurrency, one)
