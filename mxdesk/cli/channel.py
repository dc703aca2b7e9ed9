"""`mxdesk channel …`: a company mailbox read over IMAP or POP3 into tickets."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from mxdesk import channels, outbox, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import (
    emit_json,
    emit_steps,
    emit_table,
    errors_to_exit,
    fail,
    json_option,
    read_password,
)
from mxdesk.secrets import SecretsError, secrets_key
from mxdesk.timefmt import timestamp

ADD_HELP = """Read a company mailbox (IMAP or POP3) into tenant SLUG's tickets.

The mailbox's --address becomes a mailbox of the tenant: its mail becomes tickets there, and
replies go out From: it, through the tenant's outbox (see 'mxdesk outbox set') when it has one.

Without --port the port follows --protocol and --security: IMAP 993 (ssl) or 143, POP3 995
(ssl) or 110. --preset gmail is imap.gmail.com / pop.gmail.com on ssl with a 16-character app
password; --preset outlook is outlook.office365.com with OAuth 2.0 (run 'mxdesk channel
authorize' next). The password is asked for twice without echo, or read from the first line of
stdin with --password-stdin; it is stored encrypted and never shown.

--after says what happens to a message once it is safely in the gateway's queue: keep (the
default; nothing changes in the mailbox), seen, move:FOLDER or delete. The first look imports
only mail that arrives from then on, or the last DAYS days with --since DAYS.
"""


def _secret(from_stdin: bool) -> str:
    return read_password(from_stdin, channels.ChannelError)


def _statuses(ctx: Context) -> dict[str, dict[str, Any]]:
    from mxdesk.gateway.fetch.ledger import read_statuses

    return read_statuses(ctx.config.gateway.spool_path)


def _state_of(view: channels.ChannelView, status: dict[str, Any]) -> str:
    if view.paused:
        return "paused"
    if not status:
        return "not started"
    return str(status["status"])


def _when(value: object) -> str:
    return timestamp(float(value)) if isinstance(value, (int, float)) and value else "never"


def _record(view: channels.ChannelView, status: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {k: v for k, v in vars(view).items()}
    record["state"] = _state_of(view, status)
    for key in ("last_success", "last_fetch", "failing_since", "status_since"):
        value = status.get(key)
        record[key] = timestamp(float(value)) if value else None
    record["fetched"] = status.get("fetched", 0)
    record["skipped"] = status.get("skipped", 0)
    record["last_error"] = status.get("last_error", "")
    record["note"] = status.get("note", "")
    return record


@click.group("channel")
def channel_group() -> None:
    """Company mailboxes read over IMAP or POP3 (channels); NAME is the mailbox's address."""


@channel_group.command("add", help=ADD_HELP)
@click.option("--tenant", "slug", required=True, help="The tenant whose tickets it feeds.")
@click.option("--address", required=True, metavar="EMAIL", help="The mailbox's address.")
@click.option("--protocol", type=click.Choice(channels.PROTOCOLS), default="imap")
@click.option("--security", type=click.Choice(channels.SECURITY_MODES), help="Default: ssl.")
@click.option("--host", help="The IMAP or POP3 server (or give --preset).")
@click.option("--port", type=int, help="Default: by --protocol and --security.")
@click.option("--user", help="The login (default: --address).")
@click.option("--folder", default="INBOX", show_default=True, help="IMAP folder to read.")
@click.option("--after", default="keep", show_default=True, help="keep|seen|move:FOLDER|delete")
@click.option("--since", "since_days", type=int, default=0, help="Also import the last DAYS days.")
@click.option("--preset", type=click.Choice(sorted(channels.PRESETS)), help="A known provider.")
@click.option("--auth", type=click.Choice(channels.AUTH_MODES), help="Default: password.")
@click.option("--oauth-provider", default="", help="An [oauth2.NAME] of the config.")
@click.option("--sender-name", default="", help='Shown in From: of replies, e.g. "Suporte".')
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--ca-file", default="", metavar="FILE", help="PEM CAs to check the server with.")
@click.option(
    "--tls-verify", type=click.Choice(["on", "off"]), default="on", help="Check the certificate."
)
@json_option
@pass_context
@errors_to_exit(state.StateError, SecretsError)
def add(
    ctx: Context, /, slug: str, password_stdin: bool, tls_verify: str, as_json: bool, **opts: Any
) -> None:
    conn = need_state(ctx)
    state.get_tenant(conn, slug)  # before asking for a password that would be thrown away
    oauth = opts["auth"] == "oauth2" or (opts["auth"] is None and opts["preset"] == "outlook")
    secret = "" if oauth else _secret(password_stdin)
    view = channels.add_channel(
        conn,
        secrets_key(ctx.config.general, create=False),
        tenant=slug,
        secret=secret,
        verify=tls_verify == "on",
        **opts,
    )
    if as_json:
        emit_json(view)
        return
    _print(view, {})
    try:
        outbox.show_outbox(conn, slug)
    except outbox.OutboxError:
        click.echo(
            f"note: tenant {slug} has no outbox: replies from {view.address} would leave"
            " directly, where the company's SPF and DMARC may refuse them; see 'mxdesk outbox set'"
        )
    if view.auth == "oauth2":
        click.echo(f"next: mxdesk channel authorize {view.name}")


def _print(view: channels.ChannelView, status: dict[str, Any]) -> None:
    r = _record(view, status)
    verify = "on" if view.verify else "off (the certificate is not checked)"
    auth = view.auth + (f" ({view.oauth_provider})" if view.oauth_provider else "")
    for label, value in (
        ("channel", view.name),
        ("tenant", view.tenant),
        ("server", f"{view.protocol} {view.host}:{view.port} ({view.security})"),
        ("user", view.user),
        ("auth", auth),
        ("secret", "set" if view.secret_set else "not set"),
        ("folder", view.folder if view.protocol == "imap" else "(POP3: the inbox)"),
        ("after", view.after),
        ("since", f"{view.since_days} days" if view.since_days else "from the first look on"),
        ("tls-verify", verify),
        ("ca file", view.ca_file or "(the system's CAs)"),
        ("state", r["state"]),
        ("last success", r["last_success"] or "never"),
        ("last message", r["last_fetch"] or "never"),
        ("fetched", r["fetched"]),
        ("skipped", r["skipped"]),
        ("failing since", r["failing_since"] or "-"),
        ("last error", r["last_error"] or "-"),
        ("note", r["note"] or "-"),
    ):
        click.echo(f"{label}: {value}")


@channel_group.command("show")
@click.argument("name")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def show(ctx: Context, name: str, as_json: bool) -> None:
    """Show channel NAME: its settings (never its secret) and its health."""
    view = channels.show_channel(need_state(ctx), name)
    status = _statuses(ctx).get(view.name, {})
    if as_json:
        emit_json(_record(view, status))
    else:
        _print(view, status)


@channel_group.command("list")
@click.option("--tenant", "slug", help="Only this tenant's channels.")
@json_option
@pass_context
def list_(ctx: Context, slug: str | None, as_json: bool) -> None:
    """List the channels with their health: connected, idle, polling, failing or paused."""
    views = channels.list_channels(need_state(ctx), slug)
    statuses = _statuses(ctx)
    records = [_record(v, statuses.get(v.name, {})) for v in views]
    if as_json:
        emit_json(records)
        return
    rows = [
        (
            r["name"],
            r["tenant"],
            f"{r['protocol']} {r['host']}",
            r["state"],
            r["last_success"] or "never",
            r["fetched"],
            (r["last_error"] or r["note"] or "")[:60],
        )
        for r in records
    ]
    emit_table(rows, ["channel", "tenant", "server", "state", "last success", "fetched", "error"])


@channel_group.command("test")
@click.argument("name")
@json_option
@pass_context
@errors_to_exit(state.StateError, SecretsError)
def test(ctx: Context, name: str, as_json: bool) -> None:
    """Log in to channel NAME's server, open its folder and say what is there; nothing in the
    mailbox changes. Exit 1 at the first step that fails."""
    from mxdesk.gateway.fetch.probe import probe
    from mxdesk.gateway.fetch.tokens import TokenSource

    conn = need_state(ctx)
    key = secrets_key(ctx.config.general)
    settings = channels.load_channel(conn, key, name)
    secret = settings.secret

    async def token() -> str:
        source = TokenSource(ctx.config.channels, lambda: conn, lambda: key)
        try:
            return await source.access_token(settings.view.name)
        finally:
            # Ctrl-C while the request is out: the provider has rotated the refresh token,
            # so its answer is stored before the command ends (a second Ctrl-C does not wait).
            await source.settle()

    if settings.view.auth == "oauth2":
        try:
            secret = asyncio.run(token())
        except Exception as exc:
            fail(f"channel {settings.view.name}: no access token: {exc}")
    steps = asyncio.run(probe(settings.view, secret, ctx.config.channels.timeout))
    emit_steps(steps, as_json)


@channel_group.command("authorize")
@click.argument("name")
@pass_context
@errors_to_exit(state.StateError, SecretsError)
def authorize(ctx: Context, name: str) -> None:
    """Connect OAuth 2.0 channel NAME to its account: prints a code and a web address; sign in
    there (on any device) with the mailbox's account and enter the code. The refresh token is
    stored encrypted; the gateway logs in with it at once."""
    from mxdesk.oauth2 import OAuth2Error, poll_device_flow, start_device_flow

    conn = need_state(ctx)
    view = channels.show_channel(conn, name)
    if view.auth != "oauth2":
        raise channels.ChannelError(
            f"channel {view.name} logs in with a password: see 'channel password'"
        )
    provider = ctx.config.channels.provider(view.oauth_provider)
    if provider is None:
        raise channels.ChannelError(
            f"no [oauth2.{view.oauth_provider}] in the configuration: add its client_id"
        )
    key = secrets_key(ctx.config.general)

    async def flow() -> None:
        code = await start_device_flow(provider)
        click.echo(f"Open {code.verification_uri} and enter the code {code.user_code}")
        if code.verification_uri_complete:
            click.echo(f"(or open {code.verification_uri_complete})")
        click.echo(f"Waiting up to {int(code.expires_in // 60)} minutes …")
        tokens = await poll_device_flow(provider, code)
        channels.set_secret(conn, key, view.name, tokens.refresh_token)
        channels.store_tokens(
            conn, key, view.name, tokens.refresh_token, tokens.access_token, tokens.expires_at
        )

    try:
        asyncio.run(flow())
    except OAuth2Error as exc:
        fail(f"channel {view.name} not authorized: {exc}")
    click.echo(f"channel {view.name} authorized")


@channel_group.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_context
@errors_to_exit(state.StateError, SecretsError)
def password(ctx: Context, name: str, password_stdin: bool) -> None:
    """Give channel NAME a new password (after it was changed, or an app password revoked); the
    gateway logs in with it at once."""
    conn = need_state(ctx)
    view = channels.show_channel(conn, name)
    if view.auth == "oauth2":
        raise channels.ChannelError(f"channel {view.name} uses OAuth 2.0: see 'channel authorize'")
    channels.set_secret(conn, secrets_key(ctx.config.general), view.name, _secret(password_stdin))
    click.echo(f"channel {view.name}: password changed")


@channel_group.command("pause")
@click.argument("name")
@pass_context
@errors_to_exit(state.StateError)
def pause(ctx: Context, name: str) -> None:
    """Stop reading channel NAME (its mail stays on the server until 'resume')."""
    view = channels.set_paused(need_state(ctx), name, True)
    click.echo(f"channel {view.name} paused")


@channel_group.command("resume")
@click.argument("name")
@pass_context
@errors_to_exit(state.StateError)
def resume(ctx: Context, name: str) -> None:
    """Read channel NAME again, at once (also after an authentication failure)."""
    view = channels.set_paused(need_state(ctx), name, False)
    click.echo(f"channel {view.name} resumed")


@channel_group.command("remove")
@click.argument("name")
@pass_context
@errors_to_exit(state.StateError)
def remove(ctx: Context, name: str) -> None:
    """Stop reading channel NAME and forget its settings and secrets. Its mailbox and tickets
    stay ('mxdesk mailbox remove' removes the mailbox)."""
    view = channels.remove_channel(need_state(ctx), name)
    click.echo(f"channel {view.name} removed; mailbox {view.address} and its tickets stay")
