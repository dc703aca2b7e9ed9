"""`mxdesk domain add --wait` and `domain wait`: a domain followed until it is active."""

from __future__ import annotations

import json
import sys
import time

import click

from mxdesk import domains
from mxdesk.cli.context import Context, need_state


def follow(ctx: Context, name: str, timeout: float, as_json: bool) -> int:
    conn = need_state(ctx)
    start = time.monotonic()
    live = sys.stdout.isatty() and not as_json
    last: tuple[object, ...] = ()
    warned = False
    stale_after = 3 * ctx.config.dns.check_interval + 10
    while True:
        d = domains.get(conn, name)
        elapsed = time.monotonic() - start
        now = (d.status, d.served, d.expected, d.last_error)
        if as_json and now != last:
            click.echo(
                json.dumps(
                    {
                        "domain": name,
                        "status": d.status,
                        "served": d.served,
                        "expected": d.expected,
                        "elapsed": round(elapsed, 1),
                        "last_error": d.last_error,
                    }
                )
            )
        elif live:
            click.echo(
                f"\r{name}: {d.status}, {d.served}/{d.expected} served, {elapsed:.0f}s\033[K",
                nl=False,
            )
        elif now != last:
            click.echo(
                f"{name}: {d.status}, {d.served}/{d.expected} served, {elapsed:.0f}s"
                + (f" ({d.last_error})" if d.last_error else "")
            )
        last = now
        if d.status == "active":
            if live:
                click.echo()
            return 0
        if elapsed > timeout:
            if live:
                click.echo()
            click.echo(
                f"mxdesk: {name} is not active after {timeout:.0f}s"
                + (f": {d.last_error}" if d.last_error else ""),
                err=True,
            )
            return 1
        if not warned and elapsed > stale_after and (d.checked or 0) < time.time() - stale_after:
            click.echo(
                f"\nmxdesk: nothing has checked {name} for {elapsed:.0f}s:"
                " is the gateway (mxdesk-gateway) running?",
                err=True,
            )
            warned = True
        time.sleep(0.2)
