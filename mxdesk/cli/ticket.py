"""`mxdesk ticket …`: reading tickets, replying, opening a ticket, cancelling a reply."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mxdesk import state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, fail, json_option
from mxdesk.cli.ticketview import one_line, print_ticket
from mxdesk.store import queries
from mxdesk.store import status as ticket_status
from mxdesk.store.db import (
    DEFERRED,
    DRAFT,
    FAILED,
    NEW,
    QUEUED,
    SUBMITTING,
    ReadOnly,
    TicketsUnavailable,
    open_readonly,
)
from mxdesk.store.db import open_tickets as open_writable
from mxdesk.store.status import TICKET_STATES

if TYPE_CHECKING:
    from sqlite_utils import Database

    from mxdesk.store import outgoing
    from mxdesk.store.parse import Attachment

# How long `reply` and `new` wait for the store daemon to hand the message to the gateway.
HANDOVER_WAIT = 5.0
WRITE_ERRORS = (
    TicketsUnavailable,
    queries.TicketNotFound,
    queries.NotOutgoing,
    queries.OutgoingError,
)
BODY_FILE = click.Path(dir_okay=False, path_type=Path)
ATTACH = click.option(
    "--attach",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Attach a file (repeatable); its type is guessed from its name.",
)


@click.group("ticket")
def ticket_group() -> None:
    """Tickets filed by the store: read, reply, open, close and reopen them, cancel a reply."""


def _tickets_db(ctx: Context) -> ReadOnly | None:
    path = ctx.config.store.database
    return open_readonly(path) if path.exists() else None


def _known_tenant(ctx: Context, slug: str) -> None:
    """A tenant with tickets (also one removed since: its tickets are kept), or one of
    state.db; else a clear error."""
    from mxdesk import references

    if not references.tickets(ctx.config.store.database, tenant=slug)[1]:
        state.get_tenant(need_state(ctx), slug)


@ticket_group.command("list")
@click.option("--tenant", "tenant_slug", metavar="SLUG", help="Only this tenant's tickets.")
@click.option("--status", type=click.Choice(TICKET_STATES), help="Only open or closed tickets.")
@json_option
@pass_context
@errors_to_exit(TicketsUnavailable, state.StateError)
def list_(ctx: Context, tenant_slug: str | None, status: str | None, as_json: bool) -> None:
    """List tickets, most recently updated first, with their status (open or closed)."""
    if tenant_slug is not None:
        _known_tenant(ctx, tenant_slug)
    db = _tickets_db(ctx)
    tickets = queries.list_tickets(db, tenant_slug, status) if db is not None else []
    if as_json:
        emit_json(tickets)
    elif not tickets:
        whose = f" for tenant {tenant_slug}" if tenant_slug else ""
        click.echo((f"no {status} tickets" if status else "no tickets yet") + whose)
    else:
        emit_table(
            [
                (
                    f"#{t.number}",
                    t.tenant,
                    t.mailbox,
                    one_line(t.subject, 50),
                    t.status,
                    t.messages,
                    t.pending_replies or "",
                    t.updated,
                )
                for t in tickets
            ],
            ["ticket", "tenant", "mailbox", "subject", "status", "messages", "pending", "updated"],
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
    ticket = with_queue_states(queries.get_ticket(db, number), ctx.config.gateway.spool_path)
    if as_json:
        emit_json(ticket)
    else:
        print_ticket(ticket)


def reason_after(status: str, why: str) -> str:
    """The queue's reason after the reply's own status, which may say "deferred" already."""
    return why.removeprefix(f"{status}: ")


def with_queue_states(ticket: queries.TicketDetail, spool: Path) -> queries.TicketDetail:
    """The ticket with, on each reply the gateway holds or has deferred, why (tickets.db says
    only that it is queued: a reply waiting for its domain, or held by an administrator, would
    look on its way)."""
    from dataclasses import replace

    from mxdesk.gateway.queuectl import waiting

    ids = [m.queue_id for m in ticket.messages if m.status in (QUEUED, DEFERRED) and m.queue_id]
    why = waiting(spool, ids)
    if not why:
        return ticket
    messages = [
        replace(
            m,
            status_detail=f"{reason_after(m.status, why[m.queue_id])}"
            f" (mxdesk queue show {m.queue_id})",
        )
        if m.queue_id in why and m.status in (QUEUED, DEFERRED)
        else m
        for m in ticket.messages
    ]
    return replace(ticket, messages=messages)


def _writable(ctx: Context) -> tuple[Database, sqlite3.Connection, bytes]:
    """tickets.db for writing, the state database and the installation's Message-ID key."""
    conn = need_state(ctx)
    try:
        from mxdesk.secrets import installation_key

        key = installation_key(ctx.config.general.state_dir)
        db = open_writable(ctx.config.store.database)
    except PermissionError:
        raise  # the mxdesk group says whom to run as
    except (OSError, ValueError, sqlite3.Error) as exc:
        raise TicketsUnavailable(f"cannot open the tickets database or its key: {exc}") from None
    return db, conn, key


def _limits(ctx: Context) -> outgoing.Limits:
    from mxdesk.store import outgoing

    gateway = ctx.config.gateway
    return outgoing.Limits(gateway.max_message_size, gateway.max_recipients)


def _body(path: Path | None) -> str:
    if path is None and sys.stdin.isatty():
        click.echo("reading the text from standard input; end it with Ctrl-D", err=True)
    try:
        data = path.read_bytes() if path else sys.stdin.buffer.read()
    except OSError as exc:
        raise queries.OutgoingError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise queries.OutgoingError(f"{path or 'standard input'} is not UTF-8 text") from None


def _attachments(paths: tuple[Path, ...]) -> list[Attachment]:
    from mxdesk.store import outgoing

    return [outgoing.attachment_from_path(p) for p in paths]


def _report(ctx: Context, db: Database, out: queries.Outgoing, as_json: bool, opened: str) -> None:
    """Waits briefly for the store daemon to hand the message over, then says where it is."""
    from mxdesk.store.submitter import store_listening, wait_handed_over

    running = store_listening(ctx.config.store.lmtp_socket)
    if out.status == NEW and running is not False:
        out = wait_handed_over(db, out.id, HANDOVER_WAIT)
    if as_json:
        emit_json(out)
    where = f"{opened}message {out.id} on ticket #{out.ticket}"
    if out.status == FAILED:
        queued = f"queued as {out.queue_id}, but " if out.queue_id else ""
        fail(f"{where}: {queued}refused by the gateway: {out.detail}")
    if as_json:
        return
    if out.status == DRAFT:
        click.echo(f"{where}: kept as a draft, not sent")
    elif out.status in (NEW, SUBMITTING):
        if running is False:
            click.echo(
                f"{where}: stored; the store daemon hands it to the gateway once it runs"
                " (it is not running now: systemctl start mxdesk-store)"
            )
        else:
            click.echo(
                f"{where}: stored; the store hands it to the gateway as soon as the gateway"
                " is reachable" + (f" ({out.detail})" if out.detail else "")
            )
    else:
        later = "" if out.status == QUEUED else f" (now {out.status})"  # a fast notice came back
        click.echo(f"{where}: queued as {out.queue_id}{later}")


@ticket_group.command("reply")
@click.argument("number", type=int)
@click.option("--operator", required=True, metavar="NAME", help="Who replies (their signature).")
@click.option("--body-file", type=BODY_FILE, help="The text (UTF-8); default: standard input.")
@click.option("--cc", multiple=True, metavar="ADDR", help="Also send to ADDR (repeatable).")
@ATTACH
@json_option
@pass_context
@errors_to_exit(*WRITE_ERRORS)
def reply(
    ctx: Context,
    number: int,
    operator: str,
    body_file: Path | None,
    cc: tuple[str, ...],
    attach: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Reply to ticket NUMBER's requester from the ticket's mailbox.

    The reply is stored at once; the store daemon hands it to the gateway (this command waits
    a few seconds for that and prints the gateway's queue id)."""
    from mxdesk.store import outgoing

    db, conn, key = _writable(ctx)
    request = outgoing.ReplyRequest(number, operator, _body(body_file), cc, _attachments(attach))
    out = outgoing.create_reply(db, conn, key, request, _limits(ctx))
    _report(ctx, db, out, as_json, "")


@ticket_group.command("new")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@click.option("--from", "mailbox", required=True, metavar="MAILBOX", help="The tenant's mailbox.")
@click.option(
    "--to",
    "to",
    required=True,
    multiple=True,
    metavar="ADDR",
    help="Repeatable; the first one is the ticket's requester.",
)
@click.option("--cc", multiple=True, metavar="ADDR", help="Also send to ADDR (repeatable).")
@click.option("--subject", help="The ticket's subject (required).")
@click.option("--body-file", type=BODY_FILE, help="The text (UTF-8); default: standard input.")
@click.option("--operator", metavar="NAME", help="Who writes (their signature).")
@ATTACH
@click.option("--no-send", is_flag=True, help="Open the ticket and keep the message as a draft.")
@json_option
@pass_context
@errors_to_exit(*WRITE_ERRORS)
def new(
    ctx: Context,
    tenant_slug: str,
    mailbox: str,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    subject: str | None,
    body_file: Path | None,
    operator: str | None,
    attach: tuple[Path, ...],
    no_send: bool,
    as_json: bool,
) -> None:
    """Open a ticket by writing to someone from one of the tenant's mailboxes.

    The message goes out like a reply; with --no-send it stays on the ticket as a draft and
    is never sent."""
    if not (subject or "").strip():
        fail("a new ticket needs a subject: give --subject")
    from mxdesk.store import outgoing

    db, conn, key = _writable(ctx)
    request = outgoing.NewTicketRequest(
        tenant=tenant_slug,
        mailbox=mailbox,
        to=to,
        cc=cc,
        subject=subject or "",
        body=_body(body_file),
        operator=operator,
        attachments=_attachments(attach),
        send=not no_send,
    )
    out = outgoing.create_ticket(db, conn, key, request, _limits(ctx))
    _report(ctx, db, out, as_json, f"ticket #{out.ticket} opened: ")


@ticket_group.command("cancel")
@click.argument("message", type=int)
@json_option
@pass_context
@errors_to_exit(*WRITE_ERRORS)
def cancel(ctx: Context, message: int, as_json: bool) -> None:
    """Cancel reply MESSAGE (its id in 'mxdesk ticket show') before it is delivered."""
    if not ctx.config.store.database.exists():
        fail(f"no tickets yet: {ctx.config.store.database} does not exist")
    from mxdesk.store import outgoing

    db = open_writable(ctx.config.store.database)
    out = outgoing.cancel(db, ctx.config.gateway.spool_path, message)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"message {out.id} on ticket #{out.ticket}: cancelled")


def _set_status(ctx: Context, number: int, status: str) -> bool:
    if not ctx.config.store.database.exists():
        fail(f"no tickets yet: {ctx.config.store.database} does not exist")
    return ticket_status.set_status(
        open_writable(ctx.config.store.database), number, status, time.time()
    )


@ticket_group.command("close")
@click.argument("number", type=int)
@pass_context
@errors_to_exit(*WRITE_ERRORS)
def close(ctx: Context, number: int) -> None:
    """Close ticket NUMBER. Replies already written still go out; a new message from the
    customer (not an automatic one) reopens it."""
    changed = _set_status(ctx, number, ticket_status.CLOSED)
    click.echo(f"ticket #{number} {'closed' if changed else 'was closed already'}")


@ticket_group.command("reopen")
@click.argument("number", type=int)
@pass_context
@errors_to_exit(*WRITE_ERRORS)
def reopen(ctx: Context, number: int) -> None:
    """Open closed ticket NUMBER again."""
    changed = _set_status(ctx, number, ticket_status.OPEN)
    click.echo(f"ticket #{number} {'reopened' if changed else 'was open already'}")
