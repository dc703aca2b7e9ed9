"""The gateway's OAuth 2.0 access tokens (fetch/tokens.TokenSource) against the loopback
authorization server: one refresh per channel at a time, and a rotated refresh token kept even
when whoever asked for it is cancelled while the request is out."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator

import pytest
from conftest import wait_for
from oauth_server import OAuthServer

from mxdesk import channels, state
from mxdesk import config as cfg
from mxdesk.channelconfig import ChannelsConfig
from mxdesk.gateway.fetch.tokens import TokenSource

KEY = bytes(range(32))
USER = "suporte@empresa.example"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(client_id="mxdesk-test") as srv:
        yield srv


@pytest.fixture
def conn(config: cfg.Config, oauth: OAuthServer) -> Iterator[sqlite3.Connection]:
    """A channel whose grant is a refresh token the server issued (as `channel authorize`
    leaves it)."""
    c = state.connect(config.general.state_db)
    channels.add_channel(
        c,
        KEY,
        tenant="marca",
        address=USER,
        protocol="imap",
        host="127.0.0.1",
        user=None,
        secret="",
        auth="oauth2",
        oauth_provider="empresa",
    )
    channels.set_secret(c, KEY, USER, oauth.refresh_token(USER))
    yield c
    c.close()


def _source(oauth: OAuthServer, conn: sqlite3.Connection) -> TokenSource:
    config = ChannelsConfig(oauth2=(oauth.provider("empresa"),))
    return TokenSource(config, lambda: conn, lambda: KEY)


async def test_a_caller_cancelled_during_the_refresh_loses_no_rotated_token(
    oauth: OAuthServer, conn: sqlite3.Connection
) -> None:
    tokens = _source(oauth, conn)
    oauth.answer_delay = 0.5
    asking = asyncio.create_task(tokens.access_token(USER))
    # The server has rotated the refresh token; its answer is on the way.
    await wait_for(lambda: oauth.requests["refresh_token"] > 0, what="the refresh request")
    asking.cancel()  # a channel restarted, a gateway stopping
    with pytest.raises(asyncio.CancelledError):
        await asking
    await tokens.settle()
    oauth.answer_delay = 0.0

    # The rotated refresh token was stored: the next refresh (the access token dropped)
    # works with it.
    channels.store_tokens(conn, KEY, USER, channels.load_channel(conn, KEY, USER).secret, "", 0)
    assert await tokens.access_token(USER)
    assert oauth.requests["refresh_token"] == 2


async def test_callers_at_once_share_one_refresh(
    oauth: OAuthServer, conn: sqlite3.Connection
) -> None:
    tokens = _source(oauth, conn)
    oauth.answer_delay = 0.2
    got = await asyncio.gather(*(tokens.access_token(USER) for _ in range(3)))
    assert len(set(got)) == 1
    assert oauth.requests["refresh_token"] == 1
    # Then it is good for a while: no request at all.
    assert await tokens.access_token(USER) == got[0]
    assert oauth.requests["refresh_token"] == 1


async def test_another_process_refreshing_at_once_does_not_spend_the_grant_twice(
    oauth: OAuthServer, conn: sqlite3.Connection, config: cfg.Config
) -> None:
    """The gateway and `mxdesk channel test` each have their own connection and TokenSource
    (here, in one process, their own descriptors of the lock file: flock tells them apart)."""
    other_conn = state.connect(config.general.state_db)
    try:
        gateway, cli = _source(oauth, conn), _source(oauth, other_conn)
        oauth.answer_delay = 0.3
        got = await asyncio.gather(gateway.access_token(USER), cli.access_token(USER))
    finally:
        other_conn.close()
    # One refresh: the second waited for the first's answer and found it stored.
    assert oauth.requests["refresh_token"] == 1
    assert got[0] == got[1]
