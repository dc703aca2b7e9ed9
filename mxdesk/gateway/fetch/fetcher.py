"""One channel's task: log in, fetch, wait for more; on any failure reconnect with capped
back-off, keep its health in spool.db and tell the owner when it has failed for too long."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from mxdesk.channelconfig import ChannelsConfig
from mxdesk.channels import ChannelSettings
from mxdesk.gateway.fetch import ledger
from mxdesk.gateway.fetch.alerts import Alerts
from mxdesk.gateway.fetch.errors import AuthFailed, FetchError, FolderFailed, TlsFailed
from mxdesk.gateway.fetch.imap import ImapClient
from mxdesk.gateway.fetch.imapfetch import ImapFetch
from mxdesk.gateway.fetch.pop3 import Pop3Client
from mxdesk.gateway.fetch.pop3fetch import Pop3Fetch
from mxdesk.gateway.fetch.session import SessionContext, log
from mxdesk.gateway.fetch.tokens import NotAuthorized, TokenSource
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.smtpclient import client_context
from mxdesk.gateway.spool import Spool, SpoolError
from mxdesk.oauth2 import OAuth2Error

# Errors that waiting does not cure: the owner is told at once, not after alert_after.
HARD_ERRORS = (AuthFailed, TlsFailed, FolderFailed)


@dataclass
class FetcherDeps:
    """What every fetcher of the gateway shares."""

    config: ChannelsConfig
    spool: Spool
    host_name: str
    max_message_size: int
    alerts: Alerts
    tokens: TokenSource
    slot: Callable[[str], AbstractAsyncContextManager[None]]
    committed: Callable[[int], None]
    verifier: InboundVerifier | None = None


class Fetcher:
    def __init__(self, settings: ChannelSettings, deps: FetcherDeps) -> None:
        self.settings = settings
        self.view = settings.view
        self.deps = deps
        self._failures = 0

    async def run(self) -> None:
        """Until cancelled; never raises."""
        while True:
            delay = await self._attempt()
            await asyncio.sleep(delay)

    async def _status(self, **fields: object) -> None:
        name = self.view.name
        try:
            await self.deps.spool.transact(
                lambda c: ledger.set_status(c, name, **fields), new=False
            )
        except SpoolError as exc:
            log.error("channel=%s status not recorded: %s", name, exc)

    async def _attempt(self) -> float:
        """One connection, used until it fails; returns how long to wait before the next."""
        cfg, view = self.deps.config, self.view
        row = await self.deps.spool.read(lambda c: ledger.statuses(c).get(view.name, {}))
        if row.get("status") != ledger.FAILING:  # failing stays failing until a look works
            await self._status(status=ledger.CONNECTING)
        try:
            await self._session()
        except asyncio.CancelledError:
            raise
        except (FetchError, OAuth2Error, SpoolError, OSError) as exc:
            return await self._failed(exc)
        except Exception as exc:  # a bug must not end the channel: it is logged and retried
            log.exception("channel=%s internal error", view.name)
            return await self._failed(exc)
        # A POP3 look ended normally (QUIT): the next one after the poll interval.
        await self._succeeded(ledger.POLLING)
        return cfg.poll_interval

    async def _failed(self, exc: BaseException) -> float:
        cfg, view = self.deps.config, self.view
        text = _one_line(exc)
        self._failures += 1
        if isinstance(exc, AuthFailed):
            delay = cfg.auth_retry
        elif isinstance(exc, HARD_ERRORS):
            delay = cfg.retry_max
        else:
            delay = min(cfg.retry_initial * 2 ** (self._failures - 1), cfg.retry_max)
        log.warning("channel=%s failed (retry in %.0f s): %s", view.name, delay, text)
        now = time.time()
        row = await self.deps.spool.read(lambda c: ledger.statuses(c).get(view.name, {}))
        since = float(row.get("failing_since") or 0) or now  # type: ignore[arg-type]
        await self._status(status=ledger.FAILING, last_error=text, failing_since=since)
        hard = isinstance(exc, HARD_ERRORS) and not isinstance(exc, NotAuthorized)
        due = hard or now - since >= cfg.alert_after
        if (
            due
            and not row.get("alerted")
            and await self.deps.alerts.failing(view, text, since, hard_kind(exc))
        ):
            await self._status(alerted="failing")
        return delay

    async def _succeeded(self, status: str) -> None:
        view = self.view
        row = await self.deps.spool.read(lambda c: ledger.statuses(c).get(view.name, {}))
        fields: dict[str, object] = {"status": status, "last_success": time.time()}
        if row.get("failing_since"):
            fields.update(failing_since=0.0, last_error="")
            log.info("channel=%s works again", view.name)
        if row.get("alerted") and await self.deps.alerts.recovered(view):
            fields["alerted"] = ""
        self._failures = 0
        await self._status(**fields)

    async def _waiting(self, status: str) -> None:
        await self._succeeded(status)

    async def _skipped(self, uid: str, size: int) -> None:
        view = self.view
        note = f"message {uid} ({size} bytes) is larger than the limit and was left there"
        log.warning("channel=%s %s", view.name, note)
        await self._status(note=note)
        await self.deps.alerts.skipped(view, uid, size, self.deps.max_message_size)

    def _context(self, tls: bool) -> SessionContext:
        deps = self.deps
        return SessionContext(
            view=self.view,
            spool=deps.spool,
            host_name=deps.host_name,
            max_message_size=deps.max_message_size,
            batch=deps.config.batch,
            skipped=self._skipped,
            committed=deps.committed,
            tls=tls,
            verifier=deps.verifier,
        )

    async def _session(self) -> None:
        view, cfg = self.view, self.deps.config
        context = client_context(view.verify, view.ca_file) if view.security != "none" else None
        ctx = self._context(view.security != "none")
        async with self.deps.slot(view.host):
            secret = await self._credential()
            if view.protocol == "imap":
                imap = await ImapClient.connect(
                    view.host, view.port, view.security, context, cfg.timeout
                )
                try:
                    await self._login(imap.login, imap.authenticate_xoauth2, secret)
                except BaseException:
                    imap.close()
                    raise
            else:
                pop = await Pop3Client.connect(
                    view.host, view.port, view.security, context, cfg.timeout
                )
                try:
                    await self._login(pop.login, pop.authenticate_xoauth2, secret)
                    await Pop3Fetch(ctx, pop).run()
                finally:
                    pop.close()
                return
        try:
            session = ImapFetch(
                ctx,
                imap,
                lambda: self.deps.slot(view.host),
                self._waiting,
                cfg.idle_heartbeat,
                cfg.poll_interval,
            )
            await session.run()
        finally:
            await _quietly(imap.logout())
            imap.close()

    async def _login(
        self,
        password_login: Callable[[str, str], Awaitable[None]],
        xoauth2: Callable[[str, str], Awaitable[None]],
        secret: str,
    ) -> None:
        view = self.view
        if view.auth == "oauth2":
            await xoauth2(view.user, secret)
        else:
            await password_login(view.user, secret)

    async def _credential(self) -> str:
        """The password, or an access token that is good for a while yet."""
        if self.view.auth != "oauth2":
            return self.settings.secret
        return await self.deps.tokens.access_token(self.view.name)


def hard_kind(exc: BaseException) -> str:
    if isinstance(exc, AuthFailed):
        return "auth"
    if isinstance(exc, TlsFailed):
        return "tls"
    if isinstance(exc, FolderFailed):
        return "folder"
    return "other"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


async def _quietly(aw: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(aw, 5)
