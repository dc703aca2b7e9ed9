"""`mxdesk ticket …`: reading the tickets the store has filed."""

from __future__ import annotations

import click
from sqlite_utils import Database

from mxdesk.cli.context import Context, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, fail, json_option
from mxdesk.store import queries
from mxdesk.store.db import TicketsUnavailable, open_readonly
from mxdesk.store.decode import without_controls


@click.group("ticket")
def ticket_group() -> None:
    """Tickets filed by the store (read-only)."""


def _tickets_db(ctx: Context) -> Database | None:
    path = ctx.config.store.database
    return open_readonly(path) if path.exists() else None


@ticket_group.command("list")
@click.option("--tenant", "tenant_slug", metavar="SLUG", help="Only this tenant's tickets.")
@json_option
@pass_context
@errors_to_exit(TicketsUnavailable)
def list_(ctx: Context, tenant_slug: str | None, as_json: bool) -> None:
    """List tickets, most recently updated first."""
    db = _tickets_db(ctx)
    tickets = queries.list_tickets(db, tenant_slug) if db is not None else []
    if as_json:
        emit_json(tickets)
    elif not tickets:
        whose = f" for tenant {tenant_slug}" if tenant_slug else ""
        click.echo(f"no tickets yet{whose}")
    else:
        emit_table(
            [
                (
                    f"#{t.number}",
                    t.tenant,
                    t.mailbox,
                    _line(t.subject, 50),
                    t.status,
                    t.messages,
                    t.updated,
                )
                for t in tickets
            ],
            ["ticket", "tenant", "mailbox", "subject", "status", "messages", "updated"],
        )


@ticket_group.command("show")
@click.argument("number", type=int)
@json_option
@pass_context
@errors_to_exit(TicketsUnavailable, queries.TicketNotFound)
def show(ctx: Context, number: int, as_json: bool) -> None:
    """Show ticket NUMBER with its messages and participants."""
    db = _tickets_db(ctx)
    if db is None:
        fail(f"no tickets yet: {ctx.config.store.database} does not exist")
        return
    ticket = queries.get_ticket(db, number)
    if as_json:
        emit_json(ticket)
    else:
        _print_ticket(ticket)


def _line(text: str, width: int = 200) -> str:
    # Mail text comes from strangers: no terminal control sequences reach the screen.
    text = " ".join(without_controls(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def _fields(pairs: list[tuple[str, str]]) -> None:
    for name, value in pairs:
        if value:
            click.echo(f"{name + ':':<12}{_line(value)}")


def _print_ticket(t: queries.TicketDetail) -> None:
    click.echo(f"ticket #{t.number}  {t.status}  tenant {t.tenant}  mailbox {t.mailbox}")
    people = ", ".join(f"{p.address} ({p.role})" for p in t.participants)
    _fields(
        [
            ("subject", t.subject or "(no subject)"),
            ("requester", t.requester),
            ("created", t.created),
            ("updated", t.updated),
            ("flags", ", ".join(t.flags)),
            ("people", people),
        ]
    )
    for i, m in enumerate(t.messages, start=1):
        click.echo(f"\n--- message {i} of {len(t.messages)} ({m.direction}), received {m.received}")
        sender = f"{m.from_name} <{m.from_addr}>" if m.from_name else m.from_addr
        _fields(
            [
                ("From", sender),
                ("To", ", ".join(m.to)),
                ("Cc", ", ".join(m.cc)),
                ("Date", m.date),
                ("Subject", m.subject),
                ("Message-ID", m.message_id or ""),
                ("Queue-ID", m.queue_id),
                ("Flags", ", ".join(m.flags)),
            ]
        )
        for defect in m.defects:
            click.echo(f"{'Defect:':<12}{_line(defect)}")
        body = without_controls(m.text_body).strip("\n")
        click.echo(f"\n{body}\n" if body else "\n(no text body)\n")
        for a in m.attachments:
            click.echo(f"  attachment  {_line(a.filename)}  {a.content_type}  {_size(a.size)}")


def register(group: click.Group) -> None:
    group.add_command(ticket_group)
