"""`mxdesk domain …`: hosted subdomains of the base domain."""

from __future__ import annotations

import click

from mxdesk import domains, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, json_option
from mxdesk.gateway.dkim import DkimKeyError


@click.group("domain")
def domain_group() -> None:
    """Hosted subdomains (<label>.<base domain>)."""


@domain_group.command("add")
@click.argument("label")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def add(ctx: Context, label: str, tenant_slug: str, as_json: bool) -> None:
    """Create LABEL.<base domain> for a plus or premium tenant, with its DKIM keys."""
    view = domains.add_hosted_domain(
        need_state(ctx), ctx.config, label, tenant_slug, ctx.reserved()
    )
    if as_json:
        emit_json(view)
    else:
        d = view.domain
        click.echo(f"domain {d.name} created for tenant {d.tenant} ({d.status})")
        _print_dkim(view)


def _print_dkim(view: domains.DomainView) -> None:
    for r in view.dkim:
        click.echo(f'DKIM {r.algorithm}: {r.name}. IN TXT "{r.txt}"')


@domain_group.command("show")
@click.argument("name")
@json_option
@pass_context
@errors_to_exit(state.StateError, DkimKeyError, OSError)
def show(ctx: Context, name: str, as_json: bool) -> None:
    """Show domain NAME and the DKIM records it needs in DNS."""
    view = domains.show_domain(need_state(ctx), name)
    if as_json:
        emit_json(view)
    else:
        d = view.domain
        click.echo(f"{d.name}  tenant {d.tenant}  {d.kind}  {d.status}")
        _print_dkim(view)


@domain_group.command("list")
@click.option("--tenant", "tenant_slug", metavar="SLUG")
@json_option
@pass_context
def list_(ctx: Context, tenant_slug: str | None, as_json: bool) -> None:
    """List hosted domains."""
    domains = state.list_domains(need_state(ctx), tenant_slug)
    if as_json:
        emit_json(domains)
    else:
        emit_table(
            [(d.name, d.tenant, d.kind, d.status) for d in domains],
            ["domain", "tenant", "kind", "status"],
        )


def register(group: click.Group) -> None:
    group.add_command(domain_group)
