"""A tenant as a whole: what it holds, changing its plan or owner, disabling and removing it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from mxdesk import references, state
from mxdesk.config import Config
from mxdesk.names import InvalidName, parse_address
from mxdesk.references import plural
from mxdesk.state import StateError, transaction

# The domain kinds each plan allows (DESIGN: hosted subdomains from plus, own domains premium).
PLAN_KINDS = {"basic": (), "plus": ("hosted",), "premium": ("hosted", "own")}


@dataclass(frozen=True)
class TenantView:
    tenant: state.Tenant
    default_inbox: str
    domains: list[state.Domain]
    mailboxes: list[state.Mailbox]
    operators: list[str]
    outbox: str  # the outbox's address, "" without one
    channels: list[str]  # the company mailboxes read into its tickets
    generic_signature: bool
    open_tickets: int
    tickets: int
    queued: int  # spool entries still on their way for it


@dataclass(frozen=True)
class TenantRemoved:
    slug: str
    domains: list[str]
    mailboxes: list[str]
    operators: list[str]
    outbox: bool
    generic_signature: bool
    tickets: int  # kept in tickets.db as history


def _names(conn: sqlite3.Connection, sql: str, slug: str) -> list[str]:
    return [str(r[0]) for r in conn.execute(sql, (slug,))]


def show_tenant(conn: sqlite3.Connection, config: Config, slug: str) -> TenantView:
    """The tenant with everything it holds in state.db, its tickets and its queued mail."""
    tenant = state.get_tenant(conn, slug)
    open_tickets, all_tickets = references.tickets(config.store.database, tenant=slug)
    outbox = conn.execute("SELECT address FROM outboxes WHERE tenant=?", (slug,)).fetchone()
    return TenantView(
        tenant=tenant,
        default_inbox=f"{slug}@{config.general.base_domain}",
        domains=state.list_domains(conn, slug),
        mailboxes=state.list_mailboxes(conn, slug),
        operators=_names(conn, "SELECT name FROM operators WHERE tenant=? ORDER BY name", slug),
        outbox=str(outbox[0]) if outbox else "",
        channels=_names(conn, "SELECT name FROM channels WHERE tenant=? ORDER BY name", slug),
        generic_signature=bool(
            conn.execute("SELECT 1 FROM generic_signatures WHERE tenant=?", (slug,)).fetchone()
        ),
        open_tickets=open_tickets,
        tickets=all_tickets,
        queued=references.queued(config.gateway.spool_path, tenant=slug),
    )


def set_tenant(
    conn: sqlite3.Connection, slug: str, *, owner: str | None = None, plan: str | None = None
) -> state.Tenant:
    """Changes the owner's address and the plan; a plan that does not allow one of the
    tenant's domains is refused, naming it."""
    if owner is not None:
        try:
            owner = str(parse_address(owner))
        except InvalidName as exc:
            raise StateError(f"owner: {exc}") from None
    if plan is not None and plan not in state.PLANS:
        raise StateError(f"plan {plan!r} is not one of {', '.join(state.PLANS)}")
    with transaction(conn):
        tenant = state.get_tenant(conn, slug)
        if plan is not None:
            for d in state.list_domains(conn, slug):
                if d.kind not in PLAN_KINDS[plan]:
                    kind = "own domain" if d.kind == "own" else "hosted subdomain"
                    raise StateError(
                        f"tenant {slug!r} has the {kind} {d.name}, which the {plan} plan does"
                        f" not allow: remove it first (mxdesk domain remove {d.name})"
                    )
        conn.execute(
            "UPDATE tenants SET owner=?, plan=? WHERE slug=?",
            (owner or tenant.owner, plan or tenant.plan, slug),
        )
    return state.get_tenant(conn, slug)


def add_tenant(
    conn: sqlite3.Connection,
    config: Config,
    slug: str,
    owner: str,
    plan: str,
    reserved: frozenset[str],
) -> state.Tenant:
    """Creates a tenant and its default inbox. Refused for the slug of a removed tenant whose
    tickets tickets.db still keeps: they are filed under the slug, so a new tenant of that name
    would see them, reply on them, and have its customers' mail joined to them."""
    name = slug.strip().lower()
    exists = conn.execute("SELECT 1 FROM tenants WHERE slug=?", (name,)).fetchone()
    _, kept = references.tickets(config.store.database, tenant=name)
    if kept and not exists:
        raise StateError(
            f"tenant slug {name!r} belonged to a removed tenant whose"
            f" {plural(kept, 'ticket')} tickets.db keeps under that name: choose another slug"
        )
    return state.add_tenant(conn, config.general.base_domain, slug, owner, plan, reserved)


def set_tenant_status(
    conn: sqlite3.Connection, slug: str, active: bool
) -> tuple[state.Tenant, bool]:
    """Enables or disables a tenant; (the tenant, whether it changed). A disabled tenant's
    addresses answer 550 5.1.1 and its senders are refused at submission; its domains,
    mailboxes, tickets and queued mail stay."""
    status = "active" if active else "disabled"
    with transaction(conn):
        tenant = state.get_tenant(conn, slug)
        conn.execute("UPDATE tenants SET status=? WHERE slug=?", (status, slug))
    return state.get_tenant(conn, slug), tenant.status != status


def _refuse_orphans(view: TenantView) -> None:
    others = [m for m in view.mailboxes if not m.default_inbox]
    held = []
    if view.domains:
        names = ", ".join(d.name for d in view.domains[:3])
        held.append(f"{plural(len(view.domains), 'domain')} ({names})")
    if others:
        held.append(plural(len(others), "mailbox", "mailboxes"))
    if view.open_tickets:
        held.append(plural(view.open_tickets, "open ticket"))
    if held:
        listed = ", ".join(held[:-1]) + " and " + held[-1] if len(held) > 1 else held[0]
        raise StateError(
            f"tenant {view.tenant.slug!r} still has {listed}: remove or close them"
            " first, or give --force to remove its domains and mailboxes with it"
            " (tickets are kept)"
        )


def remove_tenant(
    conn: sqlite3.Connection, config: Config, slug: str, *, force: bool = False
) -> TenantRemoved:
    """Removes a tenant with its default inbox, operators, outbox and generic signature; with
    force also its domains (and their DKIM keys), mailboxes and channels. Refused while the
    spool holds mail for it. Its tickets stay in tickets.db: they are the helpdesk's history."""
    view = show_tenant(conn, config, slug)
    references.refuse_queued(f"tenant {slug!r}", view.queued)
    if not force:
        _refuse_orphans(view)
    from mxdesk import domains  # here: listing tenants needs no key machinery

    for d in view.domains:
        domains.remove_domain(conn, config, d.name)
    with transaction(conn):
        for table in ("outboxes", "channels", "mailboxes", "operators", "generic_signatures"):
            conn.execute(f"DELETE FROM {table} WHERE tenant=?", (slug,))
        conn.execute("DELETE FROM tenants WHERE slug=?", (slug,))
    return TenantRemoved(
        slug=slug,
        domains=[d.name for d in view.domains],
        mailboxes=[m.address for m in view.mailboxes],
        operators=view.operators,
        outbox=bool(view.outbox),
        generic_signature=view.generic_signature,
        tickets=view.tickets,
    )
