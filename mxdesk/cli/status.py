"""`mxdesk status`: are the daemons up, what the spool holds, how the last hour went."""

from __future__ import annotations

import sys

import click

from mxdesk import health
from mxdesk.cli.context import Context, pass_context
from mxdesk.cli.output import emit_json, emit_table, json_option
from mxdesk.timefmt import timestamp


def age(seconds: int) -> str:
    """A duration as a person reads it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 3600:
        return f"{minutes} min"
    if seconds < 86400:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def _results(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {result}" for result, n in counts.items())


def _print(report: health.Status) -> None:
    emit_table(
        [(d.name, "up" if d.up else "down", d.detail) for d in report.daemons],
        ["daemon", "state", "detail"],
    )
    spool = report.spool
    click.echo()
    if spool.error:
        click.echo(f"spool: {spool.error}")
    else:
        oldest = spool.oldest_age_seconds
        since = f", the oldest {age(oldest)} old" if oldest is not None else ""
        click.echo(f"spool: {spool.entries} {'entry' if spool.entries == 1 else 'entries'}{since}")
        if spool.counts:
            emit_table(
                [(c.kind, c.state, c.entries) for c in spool.counts], ["dir", "state", "entries"]
            )
        click.echo("last hour, per recipient:")
        for kind, counts in spool.last_hour.items():
            click.echo(f"  {kind:<4}{_results(counts)}")
    click.echo()
    if report.domains_error:
        click.echo(f"domains: {report.domains_error}")
    elif report.domains_not_active:
        click.echo("domains not active:")
        emit_table(
            [(d.name, d.tenant, d.status, d.last_error[:80]) for d in report.domains_not_active],
            ["domain", "tenant", "status", "last error"],
        )
    else:
        click.echo("domains: all active")
    if report.channels_failing:
        click.echo("channels failing:")
        emit_table(
            [
                (c.name, c.tenant, timestamp(c.failing_since), c.last_error[:80])
                for c in report.channels_failing
            ],
            ["channel", "tenant", "since", "last error"],
        )


@click.command("status")
@json_option
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show whether the gateway and the store answer on their sockets (1 s each), the spool's
    entries by direction and state with the oldest one's age, the deliveries of the last hour,
    the domains not active and the channels failing. Exit 0 when both daemons are up, 1
    otherwise. Works while the daemons are down: it only reads."""
    report = health.status(ctx.config)
    if as_json:
        emit_json(report)
    else:
        _print(report)
    sys.exit(0 if report.ok else 1)
