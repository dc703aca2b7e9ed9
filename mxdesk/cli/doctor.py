"""`mxdesk doctor`: checks an installation's files and keys and says how to fix each problem."""

from __future__ import annotations

import sys

import click

from mxdesk.cli.context import Context, pass_context
from mxdesk.cli.output import emit_json, emit_table, json_option
from mxdesk.doctor import check
from mxdesk.references import plural


@click.command("doctor")
@click.option("--all", "show_all", is_flag=True, help="List what is fine too.")
@json_option
@pass_context
def doctor(ctx: Context, show_all: bool, as_json: bool) -> None:
    """Find wrong owners and modes, missing keys and an unreadable config; print the command
    that fixes each. Exit 1 when something needs fixing."""
    findings = check(ctx.config, ctx.path)
    problems = [f for f in findings if not f.ok]
    if as_json:
        emit_json({"ok": not problems, "findings": findings})
    else:
        shown = findings if show_all else problems
        if shown:
            emit_table(
                [(f.what, "ok" if f.ok else "PROBLEM", f.detail, f.fix) for f in shown],
                ["what", "status", "detail", "fix"],
            )
        click.echo(
            f"{plural(len(problems), 'problem')} to fix" if problems else "everything is in order"
        )
    if problems:
        sys.exit(1)
