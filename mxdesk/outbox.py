"""A tenant's company outbox (smarthost): its settings, with the password stored encrypted."""

from __future__ import annotations

import ipaddress
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from mxdesk import state
from mxdesk.names import InvalidName, parse_address
from mxdesk.secrets import decrypt, encrypt
from mxdesk.state import StateError, transaction

SECURITY_MODES = ("ssl", "starttls", "none")
# RFC 8314 §3.3: implicit TLS on 465 is preferred for submission, so it is the default mode.
DEFAULT_SECURITY = "ssl"
DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
MAX_SENDER_NAME = 100
_HOST_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class OutboxError(StateError):
    """Outbox settings that cannot be stored or used; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, after the preset and the defaults filled what was not given."""

    host: str
    port: int
    security: str


PRESETS = {
    "gmail": Endpoint("smtp.gmail.com", 465, "ssl"),
    "outlook": Endpoint("smtp.office365.com", 587, "starttls"),
}


@dataclass(frozen=True)
class OutboxView:
    """What may be shown of an outbox: everything but the password."""

    tenant: str
    host: str
    port: int
    security: str
    user: str
    address: str
    sender_name: str
    verify: bool
    ca_file: str
    password_set: bool
    updated: float
    oauth_channel: str = ""  # logs in with this channel's OAuth 2.0 grant (XOAUTH2)


@dataclass(frozen=True)
class OutboxSettings:
    """What the gateway needs to send through the outbox, password decrypted (never printed).
    An empty user means no AUTH."""

    tenant: str
    host: str
    port: int
    security: str
    user: str
    password: str = field(repr=False)
    address: str
    sender_name: str
    verify: bool
    ca_file: str
    oauth_channel: str = ""


def endpoint(
    preset: str | None, host: str | None, port: int | None, security: str | None
) -> Endpoint:
    """The host, port and security mode: what was given, else the preset's, else the default
    port of the security mode."""
    base = None
    if preset is not None:
        base = PRESETS.get(preset)
        if base is None:
            raise OutboxError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    host = host or (base.host if base else None)
    if not host:
        raise OutboxError("no host: give --host, or --preset gmail|outlook")
    security = security or (base.security if base else DEFAULT_SECURITY)
    if security not in SECURITY_MODES:
        raise OutboxError(f"security {security!r} is not one of {', '.join(SECURITY_MODES)}")
    if port is None:
        # The preset's port belongs to the preset's mode; --security ssl with --preset outlook
        # means that mode's usual port.
        preset_port = base is not None and base.security == security
        port = base.port if base is not None and preset_port else DEFAULT_PORTS[security]
    return Endpoint(host, port, security)


def context(tenant: str) -> str:
    """The associated data of a tenant's outbox password: it decrypts only in that row."""
    return f"outbox:{tenant}"


def check_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise OutboxError(f"host {host!r} is not a DNS name or an IP address")
    return host


def _check_sender_name(name: str) -> str:
    name = " ".join(name.split())
    if len(name) > MAX_SENDER_NAME:
        raise OutboxError(f"sender name: at most {MAX_SENDER_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise OutboxError("sender name has control characters: give plain text")
    return name


def check_ca_file(ca_file: str) -> str:
    if not ca_file:
        return ""
    path = Path(ca_file).expanduser()
    if not path.is_file():
        raise OutboxError(f"CA file {ca_file} does not exist: give a PEM file of CA certificates")
    # The gateway runs elsewhere (another directory, a systemd unit): keep an absolute path.
    return str(path.resolve())


def _check_login(security: str, user: str, password: str) -> None:
    if user and not password:
        raise OutboxError(f"user {user!r} without a password: give the password, or no user")
    if password and not user:
        raise OutboxError("a password without a user: give --user")
    if password and security == "none":
        raise OutboxError("security 'none' would send the password in clear: use ssl or starttls")
    if any(ord(c) < 32 for c in user + password):
        raise OutboxError("the user or password has control characters (a stray newline?)")


def set_outbox(
    conn: sqlite3.Connection,
    key: bytes,
    tenant: str,
    host: str | None,
    port: int | None,
    security: str | None,
    user: str | None,
    password: str | None,
    address: str,
    sender_name: str = "",
    verify: bool = True,
    ca_file: str = "",
    preset: str | None = None,
    oauth_channel: str = "",
) -> OutboxView:
    """Stores (or replaces) the tenant's outbox. None for host, port or security takes the
    preset's value or the default; None for user takes the address when there is a password
    or an OAuth 2.0 channel. No password (None or "") and no oauth_channel means the outbox is
    used without AUTH; oauth_channel: the name of the tenant's channel whose grant logs in."""
    where = endpoint(preset, host, port, security)
    if not 1 <= where.port <= 65535:
        raise OutboxError(f"port {where.port} is not between 1 and 65535")
    try:
        sender = str(parse_address(address))
    except InvalidName as exc:
        raise OutboxError(f"address: {exc}") from None
    password = password or ""
    oauth_name = oauth_channel.strip().lower()
    if oauth_channel and password:
        raise OutboxError("a password and an OAuth 2.0 channel: choose one")
    login = (sender if password or oauth_channel else "") if user is None else user.strip()
    if oauth_channel:
        if where.security == "none":
            raise OutboxError("security 'none' would send the token in clear: use ssl or starttls")
        if not login:
            raise OutboxError("OAuth 2.0 needs a login: give --user")
    else:
        _check_login(where.security, login, password)
    row = (
        tenant,
        check_host(where.host),
        where.port,
        where.security,
        login,
        encrypt(key, password, context(tenant)) if password else b"",
        sender,
        _check_sender_name(sender_name),
        int(verify),
        check_ca_file(ca_file),
        time.time(),
        oauth_name,
    )
    with transaction(conn):
        state.get_tenant(conn, tenant)
        if oauth_name:
            _check_oauth_channel(conn, tenant, oauth_name)
        conn.execute(
            "INSERT OR REPLACE INTO outboxes (tenant, host, port, security, user, password,"
            " address, sender_name, verify, ca_file, updated, oauth_channel)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            row,
        )
    return show_outbox(conn, tenant)


def _check_oauth_channel(conn: sqlite3.Connection, tenant: str, name: str) -> None:
    row = conn.execute("SELECT tenant, auth FROM channels WHERE name=?", (name,)).fetchone()
    if row is None or row["tenant"] != tenant:
        raise OutboxError(
            f"no channel {name!r} of tenant {tenant!r}: add it with 'mxdesk channel add"
            " --auth oauth2' first (its grant logs in to the outbox)"
        )
    if row["auth"] != "oauth2":
        raise OutboxError(f"channel {name} logs in with a password, not OAuth 2.0")


def _view(row: sqlite3.Row) -> OutboxView:
    return OutboxView(
        row["tenant"],
        row["host"],
        row["port"],
        row["security"],
        row["user"],
        row["address"],
        row["sender_name"],
        bool(row["verify"]),
        row["ca_file"],
        bool(row["password"]),
        row["updated"],
        row["oauth_channel"],
    )


def _row(conn: sqlite3.Connection, tenant: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM outboxes WHERE tenant=?", (tenant,)
    ).fetchone()
    return row


def show_outbox(conn: sqlite3.Connection, tenant: str) -> OutboxView:
    row = _row(conn, tenant)
    if row is None:
        state.get_tenant(conn, tenant)  # says so when the tenant itself does not exist
        raise OutboxError(f"tenant {tenant!r} has no outbox: see 'mxdesk outbox set'")
    return _view(row)


def list_outboxes(conn: sqlite3.Connection) -> list[OutboxView]:
    return [_view(r) for r in conn.execute("SELECT * FROM outboxes ORDER BY tenant")]


def remove_outbox(conn: sqlite3.Connection, tenant: str) -> None:
    """Forgets the outbox and its password; the tenant's replies go out directly again."""
    with transaction(conn):
        show_outbox(conn, tenant)
        conn.execute("DELETE FROM outboxes WHERE tenant=?", (tenant,))


def load_outbox(conn: sqlite3.Connection, key: bytes, tenant: str) -> OutboxSettings | None:
    """The outbox with its password decrypted, or None when the tenant has none; SecretsError
    when the password cannot be decrypted with this key."""
    row = _row(conn, tenant)
    if row is None:
        return None
    blob = bytes(row["password"])
    return OutboxSettings(
        tenant=tenant,
        host=row["host"],
        port=row["port"],
        security=row["security"],
        user=row["user"],
        password=decrypt(key, blob, context(tenant)) if blob else "",
        address=row["address"],
        sender_name=row["sender_name"],
        verify=bool(row["verify"]),
        ca_file=row["ca_file"],
        oauth_channel=row["oauth_channel"],
    )
