"""`mxdesk outbox …`: a tenant's company outbox (smarthost) that its replies go out through."""

from __future__ import annotations

import asyncio

import click

from mxdesk import outbox, state
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

SET_HELP = f"""Send tenant SLUG's replies through its company outbox (an SMTP server with AUTH).

The password is asked for twice without echo, or read from the first line of stdin with
--password-stdin; it is stored encrypted and never shown. There is no --password option:
arguments are visible to every user of the machine.

--preset fills what is not given: gmail is smtp.gmail.com, port 465, ssl (Gmail accepts only
an app password, made under the Google account's security settings with 2-step verification
on); outlook is smtp.office365.com, port 587, starttls. Without --port the port is
{", ".join(f"{p} for {m}" for m, p in outbox.DEFAULT_PORTS.items())}; without --security it is
{outbox.DEFAULT_SECURITY}. The login user is the --address unless --user is given.
"""


def _password(from_stdin: bool, no_password: bool) -> str:
    if no_password:
        if from_stdin:
            raise outbox.OutboxError("--no-password and --password-stdin: choose one")
        return ""
    return read_password(from_stdin, outbox.OutboxError)


def _set(password_set: bool) -> str:
    return "set" if password_set else "not set"


def _print(view: outbox.OutboxView) -> None:
    for label, value in (
        ("tenant", view.tenant),
        ("host", view.host),
        ("port", view.port),
        ("security", view.security),
        ("user", view.user or "(none: no AUTH)"),
        ("address", view.address),
        ("sender name", view.sender_name or "(the mailbox's name)"),
        ("verify", "yes" if view.verify else "no (the certificate is not checked)"),
        ("ca file", view.ca_file or "(the system's CAs)"),
        ("password", _set(view.password_set)),
        ("oauth 2.0", f"the grant of channel {view.oauth_channel}" if view.oauth_channel else "-"),
    ):
        click.echo(f"{label}: {value}")


def _emit(view: outbox.OutboxView, as_json: bool) -> None:
    if as_json:
        emit_json(view)
    else:
        _print(view)


@click.group("outbox")
def outbox_group() -> None:
    """Company outboxes (smarthosts) that tenants' replies go out through."""


@outbox_group.command("set", help=SET_HELP)
@click.argument("slug")
@click.option("--preset", type=click.Choice(sorted(outbox.PRESETS)), help="A known provider.")
@click.option("--host", help="The SMTP server's DNS name or IP address.")
@click.option("--port", type=int, help="Default: by --security.")
@click.option("--security", type=click.Choice(outbox.SECURITY_MODES), help="TLS mode.")
@click.option("--user", help="The login (default: --address).")
@click.option("--address", required=True, metavar="EMAIL", help="The outbox's own address.")
@click.option("--sender-name", default="", help='Shown in From:, e.g. "Suporte Marca".')
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--no-password", is_flag=True, help="Send without AUTH (no user, no password).")
@click.option("--ca-file", default="", metavar="FILE", help="PEM CAs to check the server with.")
@click.option("--no-verify", is_flag=True, help="Do not check the server's certificate.")
@click.option(
    "--oauth-channel",
    default="",
    metavar="NAME",
    help="Log in with this OAuth 2.0 channel's grant (XOAUTH2) instead of a password.",
)
@json_option
@pass_context
@errors_to_exit(state.StateError, SecretsError)
def set_(
    ctx: Context,
    slug: str,
    preset: str | None,
    host: str | None,
    port: int | None,
    security: str | None,
    user: str | None,
    address: str,
    sender_name: str,
    password_stdin: bool,
    no_password: bool,
    ca_file: str,
    no_verify: bool,
    oauth_channel: str,
    as_json: bool,
) -> None:
    conn = need_state(ctx)
    state.get_tenant(conn, slug)  # before asking for a password that would be thrown away
    no_password = no_password or bool(oauth_channel)
    key = b"" if no_password else secrets_key(ctx.config.general)
    password = "" if oauth_channel else _password(password_stdin, no_password)
    view = outbox.set_outbox(
        conn,
        key,
        slug,
        host,
        port,
        security,
        user,
        password,
        address,
        sender_name,
        verify=not no_verify,
        ca_file=ca_file,
        preset=preset,
        oauth_channel=oauth_channel,
    )
    _emit(view, as_json)


@outbox_group.command("show")
@click.argument("slug")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def show(ctx: Context, slug: str, as_json: bool) -> None:
    """Show tenant SLUG's outbox (whether a password is set, never the password)."""
    view = outbox.show_outbox(need_state(ctx), slug)
    _emit(view, as_json)


@outbox_group.command("list")
@json_option
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List the tenants' outboxes."""
    views = outbox.list_outboxes(need_state(ctx))
    if as_json:
        emit_json(views)
    else:
        rows = [
            (v.tenant, v.host, v.port, v.security, v.user, v.address, _set(v.password_set))
            for v in views
        ]
        emit_table(rows, ["tenant", "host", "port", "security", "user", "address", "password"])


@outbox_group.command("test")
@click.argument("slug")
@json_option
@pass_context
@errors_to_exit(state.StateError, SecretsError)
def test(ctx: Context, slug: str, as_json: bool) -> None:
    """Log in to tenant SLUG's outbox, say MAIL FROM its address, then RSET: nothing is sent.
    Prints each step with the server's reply; exit 1 at the first step that fails."""
    from mxdesk.gateway.outboxprobe import probe

    conn = need_state(ctx)
    state.get_tenant(conn, slug)
    view = outbox.show_outbox(conn, slug)
    key = secrets_key(ctx.config.general) if view.password_set or view.oauth_channel else b""
    settings = outbox.load_outbox(conn, key, slug)
    assert settings is not None
    token = ""
    if settings.oauth_channel:
        from mxdesk.gateway.fetch.tokens import access_token

        try:
            token = asyncio.run(
                access_token(conn, key, ctx.config.channels, settings.oauth_channel)
            )
        except Exception as exc:
            fail(f"outbox of {slug}: no OAuth 2.0 token from {settings.oauth_channel}: {exc}")
    helo = ctx.config.general.host_name
    steps = asyncio.run(probe(settings, ctx.config.outbound, helo, token))
    emit_steps(steps, as_json)


@outbox_group.command("remove")
@click.argument("slug")
@pass_context
@errors_to_exit(state.StateError)
def remove(ctx: Context, slug: str) -> None:
    """Forget tenant SLUG's outbox and its password; replies then go out directly."""
    outbox.remove_outbox(need_state(ctx), slug)
    click.echo(f"outbox of {slug} removed")
