"""The `mxdesk` command: a click group; each noun lives in its own module."""

from __future__ import annotations

import os

import click

from mxdesk.cli import (
    daemons,
    doctor,
    domain,
    mailbox,
    operator,
    outbox,
    queue,
    status,
    tenant,
    ticket,
    units,
)
from mxdesk.cli.context import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mxdesk", prog_name="mxdesk", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Configuration file (default: $MXDESK_CONFIG, else /etc/mxdesk/mxdesk.toml).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """mxdesk: the mail gateway of a helpdesk."""
    # Databases, keys and sockets are for the daemons' user and group only (0640 / 0750), as
    # under systemd (UMask=0027), whoever runs the command.
    os.umask(0o027)
    ctx.obj = Context(config_path)
    ctx.call_on_close(ctx.obj.hand_over)


for module in (daemons, doctor, tenant, domain, mailbox, operator, outbox, queue, ticket, units):
    module.register(main)
status.register(main)
