"""`mxdesk mailbox …`: hosted addresses and their sender names."""

from __future__ import annotations

import click

from mxdesk import changes, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, json_option
from mxdesk.references import plural


@click.group("mailbox")
def mailbox_group() -> None:
    """Hosted addresses (one per support address)."""


def _status(m: state.Mailbox) -> str:
    return "active" if m.active else "disabled"


def _kind(m: state.Mailbox) -> str:
    return "default inbox" if m.default_inbox else "mailbox"


@mailbox_group.command("add")
@click.argument("address")
@click.option("--name", required=True, help='Sender name shown in From:, e.g. "Suporte Marca".')
@json_option
@pass_context
@errors_to_exit(state.StateError)
def add(ctx: Context, address: str, name: str, as_json: bool) -> None:
    """Create mailbox ADDRESS on one of a tenant's domains."""
    m = state.add_mailbox(need_state(ctx), ctx.config.general.base_domain, address, name)
    if as_json:
        emit_json(m)
    else:
        click.echo(f"mailbox {m.address} created for tenant {m.tenant}")


@mailbox_group.command("list")
@click.option("--tenant", "tenant_slug", metavar="SLUG")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def list_(ctx: Context, tenant_slug: str | None, as_json: bool) -> None:
    """List mailboxes, default inboxes included."""
    conn = need_state(ctx)
    if tenant_slug is not None:
        state.get_tenant(conn, tenant_slug)
    boxes = state.list_mailboxes(conn, tenant_slug)
    if as_json:
        emit_json(boxes)
    else:
        emit_table(
            [(m.address, m.tenant, m.name, _kind(m), _status(m)) for m in boxes],
            ["address", "tenant", "name", "kind", "status"],
        )


@mailbox_group.command("show")
@click.argument("address")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def show(ctx: Context, address: str, as_json: bool) -> None:
    """Show mailbox ADDRESS: sender name, status, signature switches, tickets, queued mail."""
    view = changes.show_mailbox(need_state(ctx), ctx.config, address)
    if as_json:
        emit_json(view)
        return
    m = view.mailbox
    click.echo(f"{m.address}  tenant {m.tenant}  {_kind(m)}  {_status(m)}")
    click.echo(f"sender name: {m.name}")
    click.echo(
        f"operator signatures {'on' if m.operator_signatures else 'off'},"
        f" generic signature {'on' if m.generic_signature else 'off'}"
    )
    click.echo(f"tickets: {view.open_tickets} open of {view.tickets}")
    if view.queued:
        click.echo(f"queued: {plural(view.queued, 'message')} (see 'mxdesk queue list')")


ON_OFF = click.Choice(["on", "off"])


def _switch(value: str | None) -> bool | None:
    return None if value is None else value == "on"


@mailbox_group.command("set")
@click.argument("address")
@click.option("--name", help='The sender name shown in From:, e.g. "Suporte Marca".')
@click.option(
    "--operator-signatures",
    type=ON_OFF,
    help="Replies carry the operator's own signature when they have one.",
)
@click.option(
    "--generic-signature", type=ON_OFF, help="Replies fall back to the tenant's generic signature."
)
@json_option
@pass_context
@errors_to_exit(state.StateError)
def set_(
    ctx: Context,
    address: str,
    name: str | None,
    operator_signatures: str | None,
    generic_signature: str | None,
    as_json: bool,
) -> None:
    """Change a mailbox's sender name and signature switches (replies written from now on)."""
    m = changes.set_mailbox(
        need_state(ctx),
        address,
        name=name,
        operator_signatures=_switch(operator_signatures),
        generic_signature=_switch(generic_signature),
    )
    if as_json:
        emit_json(m)
    else:
        click.echo(
            f"{m.address}: sender name {m.name!r},"
            f" operator signatures {'on' if m.operator_signatures else 'off'},"
            f" generic signature {'on' if m.generic_signature else 'off'}"
        )


@mailbox_group.command("disable")
@click.argument("address")
@pass_context
@errors_to_exit(state.StateError)
def disable(ctx: Context, address: str) -> None:
    """Stop mailbox ADDRESS: mail to it is refused (550 5.1.1) and no reply is sent from it.
    Its tickets stay; 'mxdesk mailbox enable' undoes it."""
    m, changed = changes.set_mailbox_status(need_state(ctx), address, active=False)
    click.echo(f"mailbox {m.address} {'disabled' if changed else 'was disabled already'}")


@mailbox_group.command("enable")
@click.argument("address")
@pass_context
@errors_to_exit(state.StateError)
def enable(ctx: Context, address: str) -> None:
    """Let disabled mailbox ADDRESS receive and send again."""
    m, changed = changes.set_mailbox_status(need_state(ctx), address, active=True)
    click.echo(f"mailbox {m.address} {'enabled' if changed else 'was active already'}")


@mailbox_group.command("remove")
@click.argument("address")
@click.option("--force", is_flag=True, help="Remove it even with open tickets.")
@pass_context
@errors_to_exit(state.StateError)
def remove(ctx: Context, address: str, force: bool) -> None:
    """Remove mailbox ADDRESS.

    Refused for a tenant's default inbox (it goes with the tenant), while the queue holds
    mail to or from it ('mxdesk queue list') and, unless --force, while it has open tickets.
    Its tickets are never deleted: tickets.db keeps them as history."""
    view = changes.remove_mailbox(need_state(ctx), ctx.config, address, force=force)
    kept = f"; its {plural(view.tickets, 'ticket')} kept" if view.tickets else ""
    click.echo(f"mailbox {view.mailbox.address} removed{kept}")
