"""A tenant's company mailbox read over IMAP or POP3 (a channel): its settings, secret encrypted."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from mxdesk import state
from mxdesk.names import InvalidName, parse_address
from mxdesk.outbox import OutboxError, check_ca_file, check_host
from mxdesk.secrets import decrypt, encrypt
from mxdesk.state import transaction

PROTOCOLS = ("imap", "pop3")
SECURITY_MODES = ("ssl", "starttls", "none")
AUTH_MODES = ("password", "oauth2")
# IANA / RFC 8314: implicit TLS on 993 and 995. 443 is no IMAP port, whatever a help page says:
# it is accepted when given, never chosen.
DEFAULT_PORTS = {
    ("imap", "ssl"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("pop3", "ssl"): 995,
    ("pop3", "starttls"): 110,
    ("pop3", "none"): 110,
}
PRESETS = {
    "gmail": {"imap": "imap.gmail.com", "pop3": "pop.gmail.com"},
    "outlook": {"imap": "outlook.office365.com", "pop3": "outlook.office365.com"},
}
MAX_FOLDER = 200
MAX_SINCE_DAYS = 3650


class ChannelError(OutboxError):
    """Channel settings that cannot be stored or used; the message says why."""


@dataclass(frozen=True)
class ChannelView:
    """What may be shown of a channel: everything but its secrets."""

    name: str
    tenant: str
    address: str
    protocol: str
    security: str
    host: str
    port: int
    user: str
    auth: str
    oauth_provider: str
    folder: str
    after: str
    since_days: int
    verify: bool
    ca_file: str
    paused: bool
    secret_set: bool
    created: float
    updated: float


@dataclass(frozen=True)
class ChannelSettings:
    """What a fetcher needs, secrets decrypted (never printed)."""

    view: ChannelView
    secret: str = field(repr=False)  # the password, or the OAuth 2.0 refresh token
    access_token: str = field(repr=False, default="")
    access_expires: float = 0.0


def context(name: str, what: str = "secret") -> str:
    """The associated data of a channel's secret: it decrypts only in that row."""
    return f"channel:{name}:{what}"


def parse_after(after: str, protocol: str) -> str:
    """keep | seen | move:FOLDER | delete, checked against what the protocol can do."""
    action, _, folder = after.partition(":")
    if action not in ("keep", "seen", "move", "delete") or (action == "move") != bool(folder):
        raise ChannelError(f"--after {after!r}: give keep, seen, move:FOLDER or delete")
    if protocol == "pop3" and action in ("seen", "move"):
        raise ChannelError("POP3 has no flags and no folders: give --after keep or delete")
    if folder:
        _check_folder(folder)
    return after


def _check_folder(folder: str) -> str:
    if not folder or len(folder) > MAX_FOLDER or any(ord(c) < 32 or ord(c) == 127 for c in folder):
        raise ChannelError(f"folder {folder!r}: give 1 to {MAX_FOLDER} printable characters")
    return folder


def _check_secret(auth: str, preset: str | None, secret: str) -> str:
    if any(ord(c) < 32 for c in secret):
        raise ChannelError("the password has control characters (a stray newline?)")
    if auth == "oauth2":
        return secret  # the refresh token comes from `mxdesk channel authorize`
    if not secret:
        raise ChannelError("no password: give it at the prompt or with --password-stdin")
    if preset == "gmail":
        # Google shows app passwords in four groups of four letters.
        compact = secret.replace(" ", "")
        if len(compact) != 16 or not compact.isalpha():
            raise ChannelError(
                "Gmail takes a 16-character app password (Google account → Security → App"
                " passwords), not the account's password"
            )
        return compact
    return secret


def add_channel(
    conn: sqlite3.Connection,
    key: bytes,
    *,
    tenant: str,
    address: str,
    protocol: str,
    host: str | None,
    user: str | None,
    secret: str,
    security: str | None = None,
    port: int | None = None,
    folder: str = "INBOX",
    after: str = "keep",
    since_days: int = 0,
    auth: str | None = None,
    oauth_provider: str = "",
    verify: bool = True,
    ca_file: str = "",
    preset: str | None = None,
    sender_name: str = "",
) -> ChannelView:
    """Stores a new channel and gives its address a mailbox of the tenant (the tickets' mailbox,
    the From: of the replies) when it has none yet."""
    if protocol not in PROTOCOLS:
        raise ChannelError(f"protocol {protocol!r} is not imap or pop3")
    if preset is not None and preset not in PRESETS:
        raise ChannelError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    host = host or (PRESETS[preset][protocol] if preset else None)
    if not host:
        raise ChannelError("no host: give --host, or --preset gmail|outlook")
    security = security or "ssl"
    if security not in SECURITY_MODES:
        raise ChannelError(f"security {security!r} is not one of {', '.join(SECURITY_MODES)}")
    port = port or DEFAULT_PORTS[(protocol, security)]
    if not 1 <= port <= 65535:
        raise ChannelError(f"port {port} is not between 1 and 65535")
    auth = auth or ("oauth2" if preset == "outlook" else "password")
    if auth not in AUTH_MODES:
        raise ChannelError(f"auth {auth!r} is not password or oauth2")
    if auth == "oauth2":
        oauth_provider = oauth_provider or ("google" if preset == "gmail" else "microsoft")
    if security == "none" and auth == "password" and secret:
        raise ChannelError("security 'none' would send the password in clear: use ssl or starttls")
    if not 0 <= since_days <= MAX_SINCE_DAYS:
        raise ChannelError(f"--since: 0 to {MAX_SINCE_DAYS} days")
    try:
        mailbox = str(parse_address(address))
    except InvalidName as exc:
        raise ChannelError(f"address: {exc}") from None
    login = (user or mailbox).strip()
    if not login or any(ord(c) < 32 for c in login):
        raise ChannelError("--user: give the login name, without control characters")
    secret = _check_secret(auth, preset, secret)
    name = mailbox
    now = time.time()
    with transaction(conn):
        state.get_tenant(conn, tenant)
        if conn.execute("SELECT 1 FROM channels WHERE name=?", (name,)).fetchone():
            raise ChannelError(f"channel {name} already exists: see 'mxdesk channel show {name}'")
        _ensure_mailbox(conn, tenant, mailbox, sender_name)
        conn.execute(
            "INSERT INTO channels (name, tenant, address, protocol, security, host, port, user,"
            " auth, oauth_provider, secret, folder, after, since_days, verify, ca_file, paused,"
            " created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?)",
            (
                name,
                tenant,
                mailbox,
                protocol,
                security,
                check_host(host),
                port,
                login,
                auth,
                oauth_provider if auth == "oauth2" else "",
                encrypt(key, secret, context(name)) if secret else b"",
                _check_folder(folder),
                parse_after(after, protocol),
                since_days,
                int(verify),
                check_ca_file(ca_file),
                now,
                now,
            ),
        )
    return show_channel(conn, name)


def _ensure_mailbox(conn: sqlite3.Connection, tenant: str, address: str, name: str) -> None:
    box = state.get_mailbox(conn, address)
    if box is not None:
        if box.tenant != tenant:
            raise ChannelError(f"{address} is a mailbox of tenant {box.tenant!r}")
        return
    conn.execute(
        "INSERT INTO mailboxes (address, tenant, name, default_inbox, active, created)"
        " VALUES (?,?,?,0,1,?)",
        (address, tenant, state.sender_name(name or address.partition("@")[0]), time.time()),
    )


def _view(row: sqlite3.Row) -> ChannelView:
    return ChannelView(
        name=row["name"],
        tenant=row["tenant"],
        address=row["address"],
        protocol=row["protocol"],
        security=row["security"],
        host=row["host"],
        port=row["port"],
        user=row["user"],
        auth=row["auth"],
        oauth_provider=row["oauth_provider"],
        folder=row["folder"],
        after=row["after"],
        since_days=row["since_days"],
        verify=bool(row["verify"]),
        ca_file=row["ca_file"],
        paused=bool(row["paused"]),
        secret_set=bool(row["secret"]),
        created=row["created"],
        updated=row["updated"],
    )


def _row(conn: sqlite3.Connection, name: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM channels WHERE name=?", (name.strip().lower(),)
    ).fetchone()
    if row is None:
        raise ChannelError(f"no channel {name!r}: see 'mxdesk channel list'")
    return row


def show_channel(conn: sqlite3.Connection, name: str) -> ChannelView:
    return _view(_row(conn, name))


def list_channels(conn: sqlite3.Connection, tenant: str | None = None) -> list[ChannelView]:
    sql = "SELECT * FROM channels" + (" WHERE tenant=?" if tenant else "") + " ORDER BY name"
    return [_view(r) for r in conn.execute(sql, (tenant,) if tenant else ())]


def channel_of_address(conn: sqlite3.Connection, address: str) -> str | None:
    """The tenant whose channel reads this address, or None."""
    row = conn.execute("SELECT tenant FROM channels WHERE address=?", (address.lower(),)).fetchone()
    return str(row[0]) if row else None


def set_paused(conn: sqlite3.Connection, name: str, paused: bool) -> ChannelView:
    with transaction(conn):
        row = _row(conn, name)
        conn.execute(
            "UPDATE channels SET paused=?, updated=? WHERE name=?",
            (int(paused), time.time(), row["name"]),
        )
    return show_channel(conn, name)


def set_secret(conn: sqlite3.Connection, key: bytes, name: str, secret: str) -> ChannelView:
    """A new password (or, for OAuth 2.0, a new refresh token from `channel authorize`): the
    old access token goes with it, and the gateway logs in again at once."""
    with transaction(conn):
        row = _row(conn, name)
        secret = _check_secret(row["auth"], None, secret)
        if not secret:
            raise ChannelError("an empty secret: nothing changed")
        conn.execute(
            "UPDATE channels SET secret=?, access_token=x'', access_expires=0, updated=?"
            " WHERE name=?",
            (encrypt(key, secret, context(row["name"])), time.time(), row["name"]),
        )
    return show_channel(conn, name)


def store_tokens(
    conn: sqlite3.Connection,
    key: bytes,
    name: str,
    refresh_token: str,
    access_token: str,
    expires: float,
) -> None:
    """Keeps what a refresh returned; a provider that rotates refresh tokens (Microsoft) makes
    the old one invalid, so the new one must be on disk before it is needed. `updated` is left
    alone: a token is not a change of the channel's settings."""
    with transaction(conn):
        row = _row(conn, name)
        conn.execute(
            "UPDATE channels SET secret=?, access_token=?, access_expires=? WHERE name=?",
            (
                encrypt(key, refresh_token, context(row["name"])),
                encrypt(key, access_token, context(row["name"], "access")),
                expires,
                row["name"],
            ),
        )


def remove_channel(conn: sqlite3.Connection, name: str) -> ChannelView:
    """Forgets the channel and its secrets. Its mailbox stays, with its tickets: replies from it
    still go out; `mxdesk mailbox remove` removes it."""
    with transaction(conn):
        view = _view(_row(conn, name))
        used = conn.execute(
            "SELECT tenant FROM outboxes WHERE oauth_channel=?", (view.name,)
        ).fetchone()
        if used is not None:
            raise ChannelError(
                f"the outbox of tenant {used[0]!r} logs in with this channel's grant: change it"
                " first ('mxdesk outbox set' or 'mxdesk outbox remove')"
            )
        conn.execute("DELETE FROM channels WHERE name=?", (view.name,))
    return view


def load_channel(conn: sqlite3.Connection, key: bytes, name: str) -> ChannelSettings:
    """SecretsError when the secret cannot be decrypted with this key."""
    row = _row(conn, name)
    secret, access = bytes(row["secret"]), bytes(row["access_token"])
    return ChannelSettings(
        view=_view(row),
        secret=decrypt(key, secret, context(row["name"])) if secret else "",
        access_token=decrypt(key, access, context(row["name"], "access")) if access else "",
        access_expires=row["access_expires"],
    )
