"""The [channels] and [oauth2.NAME] sections: how fetchers poll, retry and alert, and whom they ask
for OAuth 2.0 tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mxdesk.configread import Reader
from mxdesk.names import InvalidName, parse_address
from mxdesk.oauth2config import PROVIDER_DEFAULTS, OAuth2Provider


@dataclass(frozen=True)
class ChannelsConfig:
    poll_interval: float = 60.0  # seconds between two looks at a mailbox without IMAP IDLE
    # IMAP IDLE is ended, a NOOP sent and IDLE begun again this often: real servers drop an idle
    # connection silently after 8-10 minutes, and RFC 2177 asks for a new IDLE every 29.
    idle_heartbeat: float = 240.0
    timeout: float = 60.0  # a server that sends nothing for this long in a command is dead
    retry_initial: float = 5.0  # the first reconnect after an error; doubles each time
    retry_max: float = 300.0
    auth_retry: float = 1800.0  # after a refused login: a new password is needed, not haste
    alert_after: float = 900.0  # a channel failing (or stuck) this long: one mail to the owner
    admin_address: str = ""  # also told, when set
    connections_per_server: int = 4  # fetchers logged in at one host at a time
    batch: int = 50  # messages fetched and committed in one spool transaction
    oauth2: tuple[OAuth2Provider, ...] = ()

    def provider(self, name: str) -> OAuth2Provider | None:
        return next((p for p in self.oauth2 if p.name == name), None)


def _endpoint(value: str, key: str, errors: list[str]) -> str:
    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        errors.append(f"{key}: {value!r} is not an https:// URL")
    return value


def _providers(raw: Any, errors: list[str]) -> tuple[OAuth2Provider, ...]:
    if not isinstance(raw, dict):
        errors.append("oauth2: expected tables [oauth2.NAME]")
        return ()
    found = []
    for name, table in sorted(raw.items()):
        prefix = f"oauth2.{name}"
        if not isinstance(table, dict):
            errors.append(f"{prefix}: expected a table")
            continue
        defaults = PROVIDER_DEFAULTS.get(name, {})
        r = Reader(table, prefix, errors)
        client_id = r.get("client_id", str, "")
        if not client_id:
            errors.append(f"{prefix}.client_id: give the application (client) id you registered")
        values = {}
        for key in ("device_endpoint", "token_endpoint", "scope"):
            values[key] = r.get(key, str, defaults.get(key, ""))
            if not values[key]:
                errors.append(
                    f"{prefix}.{key}: required (no default for a provider named {name!r})"
                )
        for key in ("device_endpoint", "token_endpoint"):
            if values[key]:
                _endpoint(values[key], f"{prefix}.{key}", errors)
        found.append(
            OAuth2Provider(
                name=name,
                client_id=client_id,
                client_secret=r.get("client_secret", str, ""),
                device_endpoint=values["device_endpoint"],
                token_endpoint=values["token_endpoint"],
                scope=values["scope"],
            )
        )
        r.finish()
    return tuple(found)


def parse_channels(table: dict[str, Any], oauth2: Any, errors: list[str]) -> ChannelsConfig:
    d = ChannelsConfig()
    r = Reader(table, "channels", errors)
    admin = r.get("admin_address", str, "")
    if admin:
        try:
            admin = str(parse_address(admin))
        except InvalidName as exc:
            errors.append(f"channels.admin_address: {exc}")
    config = ChannelsConfig(
        poll_interval=r.positive("poll_interval", float, d.poll_interval),
        idle_heartbeat=r.positive("idle_heartbeat", float, d.idle_heartbeat),
        timeout=r.positive("timeout", float, d.timeout),
        retry_initial=r.positive("retry_initial", float, d.retry_initial),
        retry_max=r.positive("retry_max", float, d.retry_max),
        auth_retry=r.positive("auth_retry", float, d.auth_retry),
        alert_after=r.positive("alert_after", float, d.alert_after),
        admin_address=admin,
        connections_per_server=r.positive("connections_per_server", int, d.connections_per_server),
        batch=r.positive("batch", int, d.batch),
        oauth2=_providers(oauth2, errors),
    )
    if config.idle_heartbeat > 28 * 60:
        errors.append("channels.idle_heartbeat: at most 1680 seconds (RFC 2177: IDLE < 29 min)")
    r.finish()
    return config
