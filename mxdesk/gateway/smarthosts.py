"""Builds the outbound SMTP deliverer: direct to MX, or a tenant's own outbox (smarthost)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

from mxdesk import outbox
from mxdesk.config import Config
from mxdesk.gateway.fetch.tokens import TokenSource
from mxdesk.gateway.outbound import Smarthost, SmtpDeliverer
from mxdesk.secrets import SecretsError, secrets_key

log = logging.getLogger("mxdesk.gateway.outbound")
CACHE_SECONDS = 10.0


class SmarthostLookup:
    """A tenant's outbox from the state database (changed by the CLI at any time), cached a few
    seconds; the password is decrypted here, in the gateway, and kept only in memory."""

    def __init__(
        self, config: Config, conn: sqlite3.Connection, tokens: TokenSource | None = None
    ) -> None:
        self._config = config
        self._conn = conn
        self._tokens = tokens
        self._cache: dict[str, tuple[float, Smarthost | None]] = {}

    def __call__(self, tenant: str) -> Smarthost | None:
        cached = self._cache.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        found = outbox.load_outbox(self._conn, self._key, tenant) if self._has(tenant) else None
        host = None
        if found is not None:
            host = Smarthost(
                host=found.host,
                port=found.port,
                security=found.security,
                user=found.user,
                password=found.password,
                address=found.address,
                verify=found.verify,
                ca_file=found.ca_file,
                token=self._token_of(found.oauth_channel) if found.oauth_channel else None,
            )
        self._cache[tenant] = (time.monotonic(), host)
        return host

    def _token_of(self, channel: str) -> Callable[[], Awaitable[str]]:
        tokens = self._tokens

        async def token() -> str:
            if tokens is None:
                raise RuntimeError("no OAuth 2.0 tokens in this process")
            return await tokens.access_token(channel)

        return token

    def _has(self, tenant: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM outboxes WHERE tenant=?", (tenant,)).fetchone()
        return row is not None

    @property
    def _key(self) -> bytes:
        try:
            return secrets_key(self._config.general)
        except SecretsError as exc:
            log.error("cannot read the secrets key: %s", exc)
            raise


def smtp_deliverer(
    config: Config, conn: sqlite3.Connection, tokens: TokenSource | None = None
) -> SmtpDeliverer:
    """conn: the gateway's read-only connection to the state database; tokens: OAuth 2.0
    access tokens for outboxes that log in with a channel's grant."""
    lookup = SmarthostLookup(config, conn, tokens)
    return SmtpDeliverer(config.outbound, config.general.host_name, lookup)
