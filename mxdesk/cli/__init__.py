"""The `mxdesk` command: a click group; each noun lives in its own module."""

from __future__ import annotations

import click

from mxdesk.cli import daemons, domain, mailbox, operator, outbox, queue, tenant, ticket
from mxdesk.cli.context import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Configuration file (default: $MXDESK_CONFIG, else /etc/mxdesk/mxdesk.toml).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """mxdesk: the mail gateway of a helpdesk."""
    ctx.obj = Context(config_path)


for module in (daemons, tenant, domain, mailbox, operator, outbox, queue, ticket):
    module.register(main)
