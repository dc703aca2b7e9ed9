"""`mxdesk ticket show` on a terminal: a ticket, its people and its messages as text."""

from __future__ import annotations

import click

from mxdesk.store import queries
from mxdesk.store.decode import without_controls


def one_line(text: str, width: int = 200) -> str:
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
            click.echo(f"{name + ':':<12}{one_line(value)}")


def print_ticket(t: queries.TicketDetail) -> None:
    click.echo(f"ticket #{t.number}  {t.status}  tenant {t.tenant}  mailbox {t.mailbox}")
    people = ", ".join(f"{p.address} ({p.role})" for p in t.participants)
    _fields(
        [
            ("subject", t.subject or "(no subject)"),
            ("requester", t.requester),
            ("created", t.created),
            ("updated", t.updated),
            ("flags", ", ".join(t.flags)),
            ("note", t.note),
            ("people", people),
        ]
    )
    for i, m in enumerate(t.messages, start=1):
        when = "written" if m.direction == "out" else "received"
        click.echo(
            f"\n--- message {m.id} ({m.direction}, {i} of {len(t.messages)}), {when} {m.received}"
        )
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
                ("Note", m.note),
                ("Verdicts", _verdicts(m)),
                ("Operator", m.operator),
                ("Status", f"{m.status}: {m.status_detail}" if m.status_detail else m.status),
            ]
        )
        for d in m.deliveries:
            detail = f"  {one_line(d.detail)}" if d.detail else ""
            click.echo(f"{'Delivery:':<12}{one_line(d.recipient)}  {d.status}{detail}")
        for defect in m.defects:
            click.echo(f"{'Defect:':<12}{one_line(defect)}")
        body = without_controls(m.text_body).strip("\n")
        click.echo(f"\n{body}\n" if body else "\n(no text body)\n")
        for a in m.attachments:
            click.echo(f"  attachment  {one_line(a.filename)}  {a.content_type}  {_size(a.size)}")


def _verdicts(m: queries.MessageView) -> str:
    """The gateway's verdicts in one line, for a message that came in."""
    if m.direction != "in":
        return ""
    return m.verdicts.summary() if m.verdicts else "none recorded (no Authentication-Results)"
