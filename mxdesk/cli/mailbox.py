"""`mxdesk mailbox …`: hosted addresses and their sender names."""

from __future__ import annotations

import click

from mxdesk import operators, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, json_option


@click.group("mailbox")
def mailbox_group() -> None:
    """Hosted addresses (one per support address)."""


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
def list_(ctx: Context, tenant_slug: str | None, as_json: bool) -> None:
    """List mailboxes, default inboxes included."""
    boxes = state.list_mailboxes(need_state(ctx), tenant_slug)
    if as_json:
        emit_json(boxes)
    else:
        emit_table(
            [
                (
                    m.address,
                    m.tenant,
                    m.name,
                    "default inbox" if m.default_inbox else "mailbox",
                    "active" if m.active else "inactive",
                )
                for m in boxes
            ],
            ["address", "tenant", "name", "kind", "status"],
        )


ON_OFF = click.Choice(["on", "off"])


@mailbox_group.command("set")
@click.argument("address")
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
    operator_signatures: str | None,
    generic_signature: str | None,
    as_json: bool,
) -> None:
    """Change a mailbox's signature switches."""
    m = operators.set_mailbox_switches(
        need_state(ctx),
        address,
        None if operator_signatures is None else operator_signatures == "on",
        None if generic_signature is None else generic_signature == "on",
    )
    if as_json:
        emit_json(m)
    else:
        click.echo(
            f"{m.address}: operator signatures {'on' if m.operator_signatures else 'off'},"
            f" generic signature {'on' if m.generic_signature else 'off'}"
        )


def register(group: click.Group) -> None:
    group.add_command(mailbox_group)
