"""`mxdesk --help` lists the commands from mxdesk.cli.COMMANDS without importing them: each
help line there must be what the command itself says, and --help must stay light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from mxdesk.cli import COMMANDS, main


def test_each_listed_help_line_is_the_commands_own() -> None:
    for name, (module, attribute, help_line) in COMMANDS.items():
        command = getattr(importlib.import_module(f"mxdesk.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        assert command.get_short_help_str(limit=1000) == help_line, name


def test_help_lists_every_command() -> None:
    shown = CliRunner().invoke(main, ["--help"]).output
    for name in COMMANDS:
        assert f"  {name} " in shown, name


PROBE = """
import sys
from mxdesk.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)))
"""


def test_help_imports_no_command_nor_daemon() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split()[-1000:])
    for heavy in ("mxdesk.cli.ticket", "mxdesk.gateway", "mxdesk.store", "dns.resolver", "asyncio"):
        assert heavy not in loaded, heavy
