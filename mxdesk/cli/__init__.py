"""The `mxdesk` command: a click group; each noun lives in its own module, imported only when
one of its commands runs (a command starts without loading the daemons it does not need)."""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from mxdesk.cli.context import Context
from mxdesk.cli.output import fail

# command name -> (module in mxdesk.cli, attribute, the help line `mxdesk --help` lists: the
# first sentence of the command's own help, kept here so that --help imports no command;
# tests/unit/test_cli_help.py checks that they agree)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": (
        "daemons",
        "init",
        "Create the state directory, databases, the base domain's DKIM keys and the key that "
        "encrypts stored passwords (idempotent).",
    ),
    "check-config": ("daemons", "check_config", "Validate the configuration file."),
    "gateway": (
        "daemons",
        "gateway",
        "Run the gateway daemon (MX and submission listeners, spool, delivery to the store "
        "and to recipients' MX hosts or company outboxes).",
    ),
    "store": (
        "daemons",
        "store",
        "Run the ticket store daemon (LMTP server on a Unix socket; hands replies to the gateway).",
    ),
    "serve": (
        "daemons",
        "serve",
        "Run the gateway and the store in one process (a laptop, a demo).",
    ),
    "doctor": (
        "doctor",
        "doctor",
        "Find wrong owners and modes, missing keys and an unreadable config; print the "
        "command that fixes each.",
    ),
    "status": (
        "status",
        "status",
        "Show whether the gateway and the store answer on their sockets (1 s each), the "
        "spool's entries by direction and state with the oldest one's age, the deliveries of "
        "the last hour, the domains not active and the channels failing.",
    ),
    "systemd-units": (
        "units",
        "systemd_units",
        "Print mxdesk-gateway.service and mxdesk-store.service, which run PREFIX/bin/mxdesk, "
        "and the sysusers and tmpfiles snippets for the mxdesk user and directories.",
    ),
    "tenant": ("tenant", "tenant_group", "Helpdesk customer accounts."),
    "domain": (
        "domain",
        "domain_group",
        "Hosted subdomains (<label>.<base domain>) and customers' own domains.",
    ),
    "mailbox": ("mailbox", "mailbox_group", "Hosted addresses (one per support address)."),
    "operator": ("operator", "operator_group", "Helpdesk agents who reply, and their signatures."),
    "signature": (
        "operator",
        "signature_group",
        "The tenant's generic signature, used when an operator has none.",
    ),
    "outbox": (
        "outbox",
        "outbox_group",
        "Company outboxes (smarthosts) that tenants' replies go out through.",
    ),
    "channel": (
        "channel",
        "channel_group",
        "Company mailboxes read over IMAP or POP3 (channels); NAME is the mailbox's address.",
    ),
    "dkim": (
        "dkim",
        "dkim_group",
        "DKIM keys: rotation (new key published, served, then signing) and revocation.",
    ),
    "queue": (
        "queue",
        "queue_group",
        "The gateway's spool: messages not yet handed to their next hop, and the history of "
        "those that were.",
    ),
    "ticket": (
        "ticket",
        "ticket_group",
        "Tickets filed by the store: read, reply, open, close and reopen them, cancel a reply.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands from COMMANDS, as click would print it from the commands."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.Command(name, help=help_line).get_short_help_str(limit))
            for name, (_, _, help_line) in sorted(COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        command = getattr(importlib.import_module(f"mxdesk.cli.{where[0]}"), where[1])
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Every command: a file its user may not open is one line saying whom to run as.
        (A closed stdout, `mxdesk … | head`, is click's: it ends the command silently.)"""
        try:
            return super().invoke(ctx)
        except PermissionError as exc:
            context = ctx.find_object(Context) or Context(None)
            fail(context.permission_denied(exc))


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
