"""The outbound deliverer: each entry to its recipients' MX hosts or to the tenant's smarthost."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import aiosmtplib
import dns.asyncresolver

from mxdesk.config import OutboundConfig
from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.mxroute import MxResolver, RouteError, build_resolver
from mxdesk.gateway.pipelining import Stale, can_pipeline
from mxdesk.gateway.smtpclient import (
    BAD_ADDRESS,
    Connector,
    Job,
    RemoteReply,
    Replies,
    Smarthost,
    SmtpSession,
    Unusable,
    quit_quietly,
    reason_of,
    soften,
    transaction,
)
from mxdesk.gateway.spool import SpoolEntry

__all__ = ["RemoteReply", "Smarthost", "SmtpDeliverer"]
log = logging.getLogger("mxdesk.gateway.outbound")
# Postfix keeps an idle connection for 2 s (smtp_connection_cache_time_limit); a little longer
# catches the replies an operator sends in a burst.
IDLE_SECONDS = 5.0
PROBE_SECONDS = 10.0  # the RSET that checks a kept connection is still alive
R451_LOCAL_ERROR = "4.3.0 local error in delivery; details are in the log"


class SmtpDeliverer:
    """Delivers an outbound entry per destination, one SMTP transaction for each."""

    def __init__(
        self,
        config: OutboundConfig,
        helo_name: str,
        smarthost_for: Callable[[str], Smarthost | None],
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self._cfg = config
        self._smarthost_for = smarthost_for
        self._mx = MxResolver(resolver or build_resolver(config.nameservers))
        self._connector = Connector(config, helo_name)
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._idle: dict[str, list[SmtpSession]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        replies: dict[str, Reply] = {}
        try:
            groups = self._groups(entry, replies)
        except Exception as exc:  # smarthost_for failed, e.g. a secret it cannot decrypt
            log.exception("queue_id=%s cannot route the message: %s", entry.id, exc)
            return {r.mailbox: RemoteReply(451, R451_LOCAL_ERROR) for r in entry.pending}
        done = await asyncio.gather(*(self._group(entry, k, rcpts) for k, rcpts in groups.items()))
        for result in done:
            replies.update(result)
        return replies

    async def close(self) -> None:
        """Closes the idle connections (QUIT), waiting for them briefly."""
        for idle in self._idle.values():
            for session in idle:
                self._discard(session)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _groups(self, entry: SpoolEntry, replies: dict[str, Reply]) -> dict[object, list[str]]:
        """The recipients by route: a Smarthost, else the domain; refuses malformed addresses."""
        groups: dict[object, list[str]] = {}
        smarthosts: dict[str, Smarthost | None] = {}
        seen: set[str] = set()
        for r in entry.pending:
            if r.mailbox in seen:
                continue
            seen.add(r.mailbox)
            if BAD_ADDRESS.search(entry.mail_from):
                replies[r.mailbox] = RemoteReply(553, "5.1.7 bad sender address syntax")
            elif BAD_ADDRESS.search(r.mailbox) or "@" not in r.mailbox:
                replies[r.mailbox] = RemoteReply(553, "5.1.3 bad recipient address syntax")
            else:
                if r.tenant not in smarthosts:
                    smarthosts[r.tenant] = self._smarthost_for(r.tenant)
                key = smarthosts[r.tenant] or r.mailbox.rsplit("@", 1)[1].lower()
                groups.setdefault(key, []).append(r.mailbox)
        for mailbox, reply in replies.items():
            self._log(entry, mailbox, reply, None)
        return groups

    async def _group(self, entry: SpoolEntry, key: object, rcpts: list[str]) -> Replies:
        try:
            if isinstance(key, Smarthost):
                return await self._via_smarthost(entry, key, rcpts)
            return await self._via_mx(Job(entry, str(key), entry.mail_from, rcpts))
        except Exception as exc:
            log.exception("queue_id=%s delivery to %s failed: %s", entry.id, key, exc)
            return self._all(entry, rcpts, RemoteReply(451, R451_LOCAL_ERROR))

    # -- the two kinds of route -------------------------------------------------------------

    async def _via_mx(self, job: Job) -> Replies:
        try:
            targets = await self._mx.targets(job.dest)
        except RouteError as exc:
            return self._all(job.entry, job.rcpts, RemoteReply(exc.reply.code, exc.reply.text))
        failures: list[RemoteReply] = []
        async with self._slot(job.dest):
            session = await self._take(job.dest, None)
            if session is not None:
                try:
                    return await self._run(job, session)
                except Unusable as exc:
                    failures.append(exc.reply)
            for target in targets:
                # RFC 5321 §5.1: a host that cannot be reached or will not talk: try the next.
                try:
                    return await self._run(job, await self._connector.open_mx(target))
                except Unusable as exc:
                    failures.append(exc.reply)
        # Only every host refusing us with 5xx is final (Postfix's smtp_skip_5xx_greeting).
        last = failures[-1]
        reply = last if all(not f.temporary for f in failures) else soften(last)
        return self._all(job.entry, job.rcpts, reply)

    async def _via_smarthost(self, entry: SpoolEntry, host: Smarthost, rcpts: list[str]) -> Replies:
        ident = dataclasses.replace(host, address="")
        job = Job(
            entry, host.name, host.address or entry.mail_from, rcpts, f"smarthost {host.name}"
        )
        async with self._slot(host.name):
            try:
                session = await self._take(host.name, ident)
                if session is not None:
                    with contextlib.suppress(Unusable):  # closed while it was kept: a new one
                        return await self._run(job, session)
                return await self._run(job, await self._connector.open_smarthost(host, ident))
            except Unusable as exc:
                # The smarthost's own trouble (down, TLS, password) is the admin's to fix: retry.
                return self._all(entry, rcpts, soften(exc.reply))

    # -- the transaction --------------------------------------------------------------------

    async def _run(self, job: Job, session: SmtpSession) -> Replies:
        """One transaction on session; the session is kept for the next message if it is sane.
        Raises Unusable when a kept session turned out closed before the message began."""
        results: Replies = {}
        sane = False
        try:
            await transaction(job, session, results)
            sane = session.smtp.is_connected
        except Stale as exc:
            text = f"4.4.2 {session.relay}: kept connection no longer usable: {exc}"
            raise Unusable(RemoteReply(451, text, session.remote)) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Disconnected or timed out before the final reply: nobody knows, so try again later.
            text = f"4.4.2 {session.relay}: lost connection: {reason_of(exc)}"
            for rcpt in job.rcpts:
                results.setdefault(rcpt, RemoteReply(451, text, session.remote))
        finally:
            if sane:
                self._park(job.dest, session)
            else:
                self._discard(session)
        for rcpt in job.rcpts:
            self._log(job.entry, rcpt, results[rcpt], session)
        return results

    # -- concurrency and the connection cache -----------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, dest: str) -> AsyncIterator[None]:
        """At most per_destination connections to one destination at a time."""
        if dest not in self._slots:
            self._slots[dest] = (asyncio.Semaphore(max(1, self._cfg.per_destination)), [0])
        semaphore, users = self._slots[dest]
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[dest]

    async def _take(self, dest: str, ident: object) -> SmtpSession | None:
        """A kept connection to dest that still answers, else None (after making room)."""
        while session := next((s for s in self._idle.get(dest, []) if s.ident == ident), None):
            self._idle[dest].remove(session)
            if session.timer is not None:
                session.timer.cancel()
            probe = min(PROBE_SECONDS, self._cfg.command_timeout)
            if session.smtp.is_connected and can_pipeline(session.smtp):
                session.probe = probe  # the RSET goes with the next transaction's commands
                return session
            try:
                await session.smtp.rset(timeout=probe)
                return session
            except (aiosmtplib.SMTPException, OSError):
                session.smtp.close()  # the server closed it meanwhile
        idle = self._idle.pop(dest, [])
        if idle:  # kept for another login: one fewer, so a new one stays within per_destination
            self._discard(idle.pop(0))
        if idle:
            self._idle[dest] = idle
        return None

    def _park(self, dest: str, session: SmtpSession) -> None:
        idle = self._idle.setdefault(dest, [])
        if len(idle) >= self._cfg.per_destination:
            self._discard(session)
            return
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(IDLE_SECONDS, self._expire, dest, session)
        idle.append(session)

    def _expire(self, dest: str, session: SmtpSession) -> None:
        idle = self._idle.get(dest, [])
        if session in idle:
            idle.remove(session)
            if not idle:
                del self._idle[dest]
        self._discard(session)

    def _discard(self, session: SmtpSession) -> None:
        if session.timer is not None:
            session.timer.cancel()
        if session.smtp.is_connected:
            task = asyncio.create_task(quit_quietly(session.smtp))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- results ----------------------------------------------------------------------------

    def _all(self, entry: SpoolEntry, rcpts: list[str], reply: RemoteReply) -> Replies:
        for rcpt in rcpts:
            self._log(entry, rcpt, reply, None)
        return dict.fromkeys(rcpts, reply)

    @staticmethod
    def _log(entry: SpoolEntry, rcpt: str, reply: Reply, session: SmtpSession | None) -> None:
        relay = session.relay if session else (getattr(reply, "remote", "") or "none")
        tls = "yes" if session and session.tls else "no"
        status = "sent" if reply.ok else "deferred" if reply.temporary else "bounced"
        level = logging.INFO if reply.ok else logging.WARNING
        line = "queue_id=%s to=<%s> relay=%s tls=%s status=%s reply=%s"
        log.log(level, line, entry.id, rcpt, relay, tls, status, reply)
