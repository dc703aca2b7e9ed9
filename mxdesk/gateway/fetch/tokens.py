"""OAuth 2.0 access tokens of channels (and of outboxes that log in with a channel's grant):
refreshed before they expire, the rotated refresh token kept in state.db before it is used."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

from mxdesk import channels
from mxdesk.channelconfig import ChannelsConfig
from mxdesk.gateway.fetch.errors import AuthFailed
from mxdesk.gateway.fetch.session import log
from mxdesk.oauth2 import GrantRevoked, refresh

TOKEN_MARGIN = 300.0  # an access token is refreshed this long before it expires


class NotAuthorized(AuthFailed):
    """An OAuth 2.0 channel without a usable grant: `mxdesk channel authorize` is needed."""


async def access_token(
    conn: sqlite3.Connection, key: bytes, config: ChannelsConfig, name: str
) -> str:
    """An access token of channel `name` good for TOKEN_MARGIN yet, refreshed (and stored) when
    needed. AuthFailed when a person must act; OAuth2Error when it may work later."""
    settings = channels.load_channel(conn, key, name)
    view = settings.view
    if settings.access_token and settings.access_expires > time.time() + TOKEN_MARGIN:
        return settings.access_token
    provider = config.provider(view.oauth_provider)
    if provider is None:
        raise NotAuthorized(
            f"no [oauth2.{view.oauth_provider}] in the configuration: add its client_id"
        )
    if not settings.secret:
        raise NotAuthorized(f"not authorized yet: run 'mxdesk channel authorize {view.name}'")
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


class TokenSource:
    """One refresh at a time per channel: two users of one rotating refresh token (a fetcher
    and the outbox) would otherwise spend it twice and lose the grant."""

    def __init__(
        self,
        config: ChannelsConfig,
        state: Callable[[], sqlite3.Connection],
        key: Callable[[], bytes],
    ) -> None:
        self._config = config
        self._state = state
        self._key = key
        self._locks: dict[str, asyncio.Lock] = {}

    async def access_token(self, name: str) -> str:
        async with self._locks.setdefault(name, asyncio.Lock()):
            return await access_token(self._state(), self._key(), self._config, name)
