"""`mxdesk tenant …`: helpdesk customer accounts."""

from __future__ import annotations

import click

from mxdesk import state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, json_option


@click.group("tenant")
def tenant_group() -> None:
    """Helpdesk customer accounts."""


@tenant_group.command("add")
@click.argument("slug")
@click.option("--owner", required=True, metavar="EMAIL", help="The account owner's address.")
@click.option("--plan", type=click.Choice(state.PLANS), default="basic", show_default=True)
@json_option
@pass_context
@errors_to_exit(state.StateError)
def add(ctx: Context, slug: str, owner: str, plan: str, as_json: bool) -> None:
    """Create tenant SLUG and its default inbox SLUG@<base domain>."""
    t = state.add_tenant(
        need_state(ctx), ctx.config.general.base_domain, slug, owner, plan, ctx.reserved()
    )
    inbox = f"{t.slug}@{ctx.config.general.base_domain}"
    if as_json:
        emit_json({"tenant": t, "default_inbox": inbox})
    else:
        click.echo(f"tenant {t.slug} created (plan {t.plan}); default inbox {inbox}")


@tenant_group.command("list")
@json_option
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List tenants."""
    tenants = state.list_tenants(need_state(ctx))
    if as_json:
        emit_json(tenants)
    else:
        emit_table([(t.slug, t.plan, t.owner) for t in tenants], ["slug", "plan", "owner"])


def register(group: click.Group) -> None:
    group.add_command(tenant_group)
