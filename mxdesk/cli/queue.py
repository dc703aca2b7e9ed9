"""`mxdesk queue …`: what the gateway's spool holds."""

from __future__ import annotations

import time

import click

from mxdesk.cli.context import Context, pass_context
from mxdesk.cli.output import emit_json, emit_table, json_option
from mxdesk.gateway.queuectl import list_entries


@click.group("queue")
def queue_group() -> None:
    """The gateway's spool: messages not yet handed to their next hop."""


@queue_group.command("list")
@json_option
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List spool entries: queued (waiting or retrying) and held (refused, needs a person)."""
    entries = list_entries(ctx.config.gateway.spool_path)
    if as_json:
        emit_json(entries)
        return
    rows = []
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created))
        rcpts = ",".join(f"{r.mailbox}({r.status})" for r in e.recipients)
        rows.append(
            (
                e.id,
                e.kind,
                e.state,
                when,
                e.size,
                e.attempts,
                e.mail_from or "<>",
                rcpts,
                e.last_error[:80],
            )
        )
    emit_table(rows, ["id", "dir", "state", "created", "size", "tries", "from", "to", "error"])
    click.echo(f"{len(entries)} entries", err=True)


def register(group: click.Group) -> None:
    group.add_command(queue_group)
