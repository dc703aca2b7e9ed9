"""`mxdesk systemd-units`: the units and snippets for the directory mxdesk is installed in."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mxdesk import units
from mxdesk.cli.output import errors_to_exit


@click.command("systemd-units")
@click.option(
    "--prefix",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory mxdesk is installed in, whose bin/mxdesk the units run "
    "(default: the one this mxdesk runs from, e.g. /opt/mxdesk).",
)
@click.option(
    "--output",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the files into DIR (made if missing) instead of printing them.",
)
@errors_to_exit(units.UnitsError, OSError)
def systemd_units(prefix: Path | None, output: Path | None) -> None:
    """Print mxdesk-gateway.service and mxdesk-store.service, which run PREFIX/bin/mxdesk,
    and the sysusers and tmpfiles snippets for the mxdesk user and directories."""
    where = units.check_prefix(prefix or Path(sys.prefix))
    setting = units.hidden_by(where)
    if setting:
        click.echo(
            f"mxdesk: warning: the units' {setting} hides {where} from the daemons: "
            f"install mxdesk elsewhere, such as {units.DEFAULT_PREFIX}",
            err=True,
        )
    files = units.render(where)
    if output is None:
        for name, text in files.items():
            click.echo(f"# ==> {name} <==\n{text}")
        return
    for path in units.write(files, output):
        click.echo(f"wrote {path}")
