"""The `mxdesk` command: a click group; each noun lives in its own module, imported only when
one of its commands runs (a command starts without loading the daemons it does not need)."""

from __future__ import annotations

import importlib
import os

import click

from mxdesk.cli.context import Context

# command name -> (module in mxdesk.cli, attribute)
COMMANDS = {
    "init": ("daemons", "init"),
    "check-config": ("daemons", "check_config"),
    "gateway": ("daemons", "gateway"),
    "store": ("daemons", "store"),
    "serve": ("daemons", "serve"),
    "doctor": ("doctor", "doctor"),
    "status": ("status", "status"),
    "systemd-units": ("units", "systemd_units"),
    "tenant": ("tenant", "tenant_group"),
    "domain": ("domain", "domain_group"),
    "mailbox": ("mailbox", "mailbox_group"),
    "operator": ("operator", "operator_group"),
    "signature": ("operator", "signature_group"),
    "outbox": ("outbox", "outbox_group"),
    "channel": ("channel", "channel_group"),
    "dkim": ("dkim", "dkim_group"),
    "queue": ("queue", "queue_group"),
    "ticket": ("ticket", "ticket_group"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        command = getattr(importlib.import_module(f"mxdesk.cli.{where[0]}"), where[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
