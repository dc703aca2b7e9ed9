"""`mxdesk tenant …`: helpdesk customer accounts."""

from __future__ import annotations

import click

from mxdesk import state, tenants
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, fail, json_option
from mxdesk.references import plural


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
    """Create tenant SLUG and its default inbox SLUG@<base domain>.

    The slug of a removed tenant whose tickets are kept is not given out again."""
    t = tenants.add_tenant(need_state(ctx), ctx.config, slug, owner, plan, ctx.reserved())
    inbox = f"{t.slug}@{ctx.config.general.base_domain}"
    if as_json:
        emit_json({"tenant": t, "default_inbox": inbox})
    else:
        click.echo(f"tenant {t.slug} created (plan {t.plan}); default inbox {inbox}")


@tenant_group.command("list")
@json_option
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List tenants with their plan and status (active or disabled)."""
    found = state.list_tenants(need_state(ctx))
    if as_json:
        emit_json(found)
    else:
        emit_table(
            [(t.slug, t.plan, t.status, t.owner) for t in found],
            ["slug", "plan", "status", "owner"],
        )


@tenant_group.command("show")
@click.argument("slug")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def show(ctx: Context, slug: str, as_json: bool) -> None:
    """Show tenant SLUG with its domains, mailboxes, operators, outbox and tickets."""
    view = tenants.show_tenant(need_state(ctx), ctx.config, slug)
    if as_json:
        emit_json(view)
        return
    t = view.tenant
    click.echo(f"tenant {t.slug}  plan {t.plan}  {t.status}  owner {t.owner}")
    click.echo(f"default inbox: {view.default_inbox}")
    for d in view.domains:
        click.echo(f"domain: {d.name} ({d.kind}, {d.status})")
    for m in view.mailboxes:
        if not m.default_inbox:
            status = "active" if m.active else "disabled"
            click.echo(f"mailbox: {m.address} ({m.name}, {status})")
    if view.operators:
        click.echo(f"operators: {', '.join(view.operators)}")
    click.echo(f"outbox: {view.outbox or 'none (replies go out directly)'}")
    click.echo(f"channels: {', '.join(view.channels) or 'none'}")
    click.echo(f"generic signature: {'set' if view.generic_signature else 'not set'}")
    click.echo(f"tickets: {view.open_tickets} open of {view.tickets}")
    if view.queued:
        click.echo(f"queued: {plural(view.queued, 'message')} (see 'mxdesk queue list')")


@tenant_group.command("set")
@click.argument("slug")
@click.option("--owner", metavar="EMAIL", help="The account owner's new address.")
@click.option("--plan", type=click.Choice(state.PLANS), help="The new plan.")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def set_(ctx: Context, slug: str, owner: str | None, plan: str | None, as_json: bool) -> None:
    """Change tenant SLUG's owner or plan.

    A smaller plan is refused while the tenant has a domain it does not allow (hosted
    subdomains need plus, own domains premium)."""
    if owner is None and plan is None:
        fail("nothing to change: give --owner or --plan")
    t = tenants.set_tenant(need_state(ctx), slug, owner=owner, plan=plan)
    if as_json:
        emit_json(t)
    else:
        click.echo(f"tenant {t.slug}: plan {t.plan}, owner {t.owner}")


@tenant_group.command("disable")
@click.argument("slug")
@pass_context
@errors_to_exit(state.StateError)
def disable(ctx: Context, slug: str) -> None:
    """Stop tenant SLUG: mail to any of its addresses is refused (550 5.1.1) and it may not
    send (the submission refuses its senders). Its domains, mailboxes and tickets stay, and
    mail already queued is still delivered; 'mxdesk tenant enable' undoes it."""
    t, changed = tenants.set_tenant_status(need_state(ctx), slug, active=False)
    click.echo(f"tenant {t.slug} {'disabled' if changed else 'was disabled already'}")


@tenant_group.command("enable")
@click.argument("slug")
@pass_context
@errors_to_exit(state.StateError)
def enable(ctx: Context, slug: str) -> None:
    """Let disabled tenant SLUG receive and send again."""
    t, changed = tenants.set_tenant_status(need_state(ctx), slug, active=True)
    click.echo(f"tenant {t.slug} {'enabled' if changed else 'was active already'}")


@tenant_group.command("remove")
@click.argument("slug")
@click.option(
    "--force", is_flag=True, help="Also remove its domains and mailboxes, open tickets or not."
)
@json_option
@pass_context
@errors_to_exit(state.StateError)
def remove(ctx: Context, slug: str, force: bool, as_json: bool) -> None:
    """Remove tenant SLUG with its default inbox, operators, outbox and generic signature.

    Refused while it has domains, mailboxes or open tickets (unless --force: then its domains,
    with their DKIM keys, and its mailboxes go too), and always while the queue holds mail for
    it ('mxdesk queue list'). Its tickets are never deleted: tickets.db keeps them as history.
    The DNS records of its domains stay: remove them from the zone."""
    gone = tenants.remove_tenant(need_state(ctx), ctx.config, slug, force=force)
    if as_json:
        emit_json(gone)
        return
    what = [plural(len(gone.mailboxes), "mailbox", "mailboxes")]
    if gone.domains:
        what.insert(0, f"{plural(len(gone.domains), 'domain')} ({', '.join(gone.domains)})")
    if gone.operators:
        what.append(plural(len(gone.operators), "operator"))
    if gone.outbox:
        what.append("its outbox")
    click.echo(f"tenant {gone.slug} removed with {', '.join(what)}")
    if gone.tickets:
        click.echo(f"kept in the tickets database: {plural(gone.tickets, 'ticket')}")
    if gone.domains:
        click.echo("the DNS records of its domains stay: remove them from the zone")
