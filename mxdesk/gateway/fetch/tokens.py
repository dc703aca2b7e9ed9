"""OAuth 2.0 access tokens of channels (and of outboxes that log in with a channel's grant):
refreshed before they expire, by one process at a time, the rotated refresh token kept in
state.db before it is used."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable

from mxdesk import channels
from mxdesk.channelconfig import ChannelsConfig
from mxdesk.gateway.fetch.errors import AuthFailed
from mxdesk.gateway.fetch.session import log
from mxdesk.oauth2 import GrantRevoked, OAuth2Error, refresh

TOKEN_MARGIN = 300.0  # an access token is refreshed this long before it expires
LOCK_WAIT = 60.0  # longer than a refresh request may take (its timeout: 30 s)


class NotAuthorized(AuthFailed):
    """An OAuth 2.0 channel without a usable grant: `mxdesk channel authorize` is needed."""


async def access_token(
    conn: sqlite3.Connection, key: bytes, config: ChannelsConfig, name: str
) -> str:
    """An access token of channel `name` good for TOKEN_MARGIN yet, refreshed (and stored) when
    needed. AuthFailed when a person must act; OAuth2Error when it may work later."""
    settings = channels.load_channel(conn, key, name)
    if _good(settings):
        return settings.access_token
    view = settings.view
    provider = config.provider(view.oauth_provider)
    if provider is None:
        raise NotAuthorized(
            f"no [oauth2.{view.oauth_provider}] in the configuration: add its client_id"
        )
    if not settings.secret:
        raise NotAuthorized(f"not authorized yet: run 'mxdesk channel authorize {view.name}'")
    async with refresh_lock(conn, view.name):
        # Another process (the gateway, `mxdesk channel test`) may have refreshed meanwhile.
        settings = channels.load_channel(conn, key, name)
        if _good(settings):
            return settings.access_token
        try:
            tokens = await refresh(provider, settings.secret)
        except GrantRevoked as exc:
            said = ": ".join(filter(None, [exc.error, exc.description])) or str(exc)
            raise AuthFailed(
                f"the OAuth 2.0 grant was revoked or has expired ({said}): run"
                f" 'mxdesk channel authorize {view.name}'"
            ) from exc
        # On disk before it is relied on: a rotating provider has just made the old one invalid.
        channels.store_tokens(
            conn, key, view.name, tokens.refresh_token, tokens.access_token, tokens.expires_at
        )
    log.info("channel=%s access token refreshed", view.name)
    return tokens.access_token


def _good(settings: channels.ChannelSettings) -> bool:
    return bool(settings.access_token) and settings.access_expires > time.time() + TOKEN_MARGIN


@contextlib.asynccontextmanager
async def refresh_lock(
    conn: sqlite3.Connection, name: str, wait: float = LOCK_WAIT
) -> AsyncIterator[None]:
    """Held while channel `name`'s refresh token is spent: the gateway and `mxdesk channel
    test` are separate processes with one grant in state.db, and two refreshes with one
    rotating token lose it. An flock on a file of its own beside state.db (closing a descriptor
    of state.db itself would drop SQLite's own locks in this process); OAuth2Error (try again
    later) after `wait` seconds."""
    database = conn.execute("PRAGMA database_list").fetchone()[2]
    if not database:  # an in-memory database: no other process
        yield
        return
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    path = os.path.join(os.path.dirname(database), f"oauth-{digest}.lock")
    # Readable by all: the CLI (root) may create it, the gateway's user then opens it.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OAuth2Error(
                        f"channel {name}: another process has been refreshing its token for"
                        f" {wait:g}s"
                    ) from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # and the lock with it


class TokenSource:
    """One refresh at a time per channel: two users of one rotating refresh token (a fetcher
    and the outbox) would otherwise spend it twice and lose the grant (other processes wait at
    refresh_lock). A refresh runs in a task
    of its own that a cancelled caller does not cancel (a channel restarted or a delivery
    ended while the request is out): once the provider has the request it has rotated the
    refresh token, and only its answer, stored, keeps the grant."""

    def __init__(
        self,
        config: ChannelsConfig,
        state: Callable[[], sqlite3.Connection],
        key: Callable[[], bytes],
    ) -> None:
        self._config = config
        self._state = state
        self._key = key
        self._running: dict[str, asyncio.Task[str]] = {}

    async def access_token(self, name: str) -> str:
        task = self._running.get(name)
        if task is None:
            task = asyncio.create_task(
                access_token(self._state(), self._key(), self._config, name),
                name=f"token {name}",
            )
            self._running[name] = task
            task.add_done_callback(lambda done: self._forget(name, done))
        return await asyncio.shield(task)

    def _forget(self, name: str, done: asyncio.Task[str]) -> None:
        if self._running.get(name) is done:
            del self._running[name]
        if not done.cancelled():
            done.exception()  # retrieved: a caller cancelled meanwhile does not read it

    async def settle(self) -> None:
        """Waits for the refreshes under way (each bounded by its request's timeout), so
        that a gateway stopping while one is out stores what the provider answered."""
        if self._running:
            await asyncio.wait(list(self._running.values()))
