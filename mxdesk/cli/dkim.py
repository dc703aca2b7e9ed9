"""`mxdesk dkim …`: each domain's DKIM keys, their rotation and revocation."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import click

from mxdesk import dkimkeys, domains, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, errors_to_exit, json_option
from mxdesk.config import Config
from mxdesk.dns.providers import ProviderError
from mxdesk.gateway.dkimkey import DkimKeyError
from mxdesk.timefmt import duration, timestamp

ERRORS = (state.StateError, DkimKeyError, OSError, ProviderError)
WHAT = {
    dkimkeys.PENDING: "new, signs once served for publish_lag",
    dkimkeys.ACTIVE: "signs",
    dkimkeys.RETIRING: "old, published until removal",
    dkimkeys.REVOKED: "revoked, published as an empty p=",
    dkimkeys.REMOVING: "old, its record being removed",
}
# In a zone mxdesk does not publish (no provider for it), the zone's keeper does these steps.
BY_HAND = {
    dkimkeys.PENDING: "new, signs once served for publish_lag: publish its record",
    dkimkeys.REVOKED: "revoked: replace its record with an empty p= in the zone",
    dkimkeys.REMOVING: "old: delete its record from the zone",
}


@click.group("dkim")
def dkim_group() -> None:
    """DKIM keys: rotation (new key published, served, then signing) and revocation."""


def _when(seconds: float | None) -> str:
    return timestamp(seconds) if seconds else "-"


def status_of(conn: sqlite3.Connection, config: Config, name: str) -> dict[str, Any]:
    """A domain's rotation phase, when its next step is due and each key with its dates."""
    from mxdesk.dns.rotation import phase_of, publishable

    keys = dkimkeys.keys_of(conn, name)
    phase = phase_of(keys, config)
    try:
        published = publishable(conn, config, name)
    except state.StateError:  # no plan of its records (the base domain without mx_addresses)
        published = False
    next_step, detail = phase.due, phase.detail
    if phase.name == "steady" and not published:
        # rotate_every starts rotations only where mxdesk publishes the records.
        next_step, detail = None, "rotated by hand: mxdesk does not publish this zone"
    return {
        "domain": name,
        "phase": phase.name,
        "next": next_step,
        "detail": detail,
        "published_by_mxdesk": published,
        "keys": [
            {
                "selector": k.selector,
                "algorithm": k.algorithm,
                "state": k.state,
                "created": k.created,
                "served_since": k.served_since,
                "activated": k.activated,
                "retired": k.retired,
                "note": k.note,
            }
            for k in keys
        ],
    }


def status_lines(status: dict[str, Any]) -> list[str]:
    nexts = {
        "steady": "next rotation",
        "waiting": "signs with the new key from",
        "retiring": "old record removed after",
    }
    phase = status["phase"]
    line = f"DKIM {phase}"
    if status["next"] is not None and phase in nexts:
        line += f", {nexts[phase]} {_when(status['next'])}"
    if status["detail"]:
        line += f" ({status['detail']})"
    lines = [line]
    what = WHAT if status["published_by_mxdesk"] else WHAT | BY_HAND
    for k in status["keys"]:
        dates = [f"created {_when(k['created'])}"]
        if k["served_since"] and k["state"] == dkimkeys.PENDING:
            dates.append(f"served since {_when(k['served_since'])}")
        if k["activated"]:
            dates.append(f"signing since {_when(k['activated'])}")
        if k["retired"]:
            dates.append(f"stopped {_when(k['retired'])}")
        note = f" — {k['note']}" if k["note"] else ""
        lines.append(
            f"  {k['selector']:<14} {k['algorithm']:<14} {k['state']:<8}"
            f" {what[k['state']]}; {', '.join(dates)}{note}"
        )
    return lines


def _names(conn: sqlite3.Connection, name: str | None) -> list[str]:
    if name:
        name = name.lower().rstrip(".")
        if not dkimkeys.keys_of(conn, name):
            raise state.StateError(f"{name} has no DKIM keys: see 'mxdesk domain list'")
        return [name]
    rows = conn.execute("SELECT DISTINCT domain FROM dkim_keys ORDER BY domain")
    return [r["domain"] for r in rows]


@dkim_group.command("status")
@click.argument("name", required=False)
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def status(ctx: Context, name: str | None, as_json: bool) -> None:
    """Each domain's keys (or NAME's): phase, dates and what happens next."""
    conn = need_state(ctx)
    shown = [status_of(conn, ctx.config, n) for n in _names(conn, name)]
    if as_json:
        emit_json(shown)
        return
    for s in shown:
        click.echo(s["domain"])
        for line in status_lines(s):
            click.echo(f"  {line}")


def _records(conn: sqlite3.Connection, config: Config, name: str, selectors: set[str]) -> None:
    plan = domains.domain_plan(conn, config, name)
    for r in plan.records:
        if r.purpose == "dkim" and r.name.split(".", 1)[0] in selectors:
            where = "published by mxdesk" if config.dns.zone_of(r.name)[1] else "publish it"
            click.echo(f'  {r.name}. IN TXT "{r.value}"  ({where})')


@dkim_group.command("rotate")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Carry the rotation on until the new key signs.")
@click.option("--timeout", default=0.0, help="Seconds --wait waits (default: publish_lag + 1 h).")
@pass_context
@errors_to_exit(*ERRORS)
def rotate(ctx: Context, name: str, wait: bool, timeout: float) -> None:
    """Give domain NAME new DKIM keys.

    The new keys are published now; they sign once every authoritative server has served
    them for [dkim] publish_lag. The old keys then stay published for [dkim] retire_after
    (mail in transit still verifies) and their records are removed. The gateway carries the
    rotation forward; --wait carries it here until the new key signs.
    """
    from mxdesk.dns import rotation

    conn = need_state(ctx)
    config = ctx.config
    name = name.lower().rstrip(".")
    keys = rotation.start(conn, config, name)
    click.echo(f"{name}: new DKIM key {', '.join(k.selector for k in keys)}")
    _publish_now(conn, config, name)
    _records(conn, config, name, {k.selector for k in keys})
    lag = config.dkim.publish_lag
    click.echo(
        f"it signs once every authoritative server has served it for {duration(lag)};"
        f" the old key stays published {duration(config.dkim.retire_after)} more"
    )
    if wait:
        raise SystemExit(_carry(conn, config, name, timeout or lag + 3600.0))


def _publish_now(conn: sqlite3.Connection, config: Config, name: str) -> None:
    """One step at once: the new record is published (a refused update is said here)."""
    import asyncio

    from mxdesk.dns.check import AuthoritativeChecker
    from mxdesk.dns.rotation import step

    asyncio.run(step(conn, config, AuthoritativeChecker(config.dns), name))
    noted = [k.note for k in dkimkeys.keys_of(conn, name, (dkimkeys.PENDING,)) if k.note]
    if noted:
        click.echo(f"not served yet: {noted[0]}")


def _carry(conn: sqlite3.Connection, config: Config, name: str, timeout: float) -> int:
    import asyncio

    from mxdesk.dns.check import AuthoritativeChecker
    from mxdesk.dns.rotation import step

    checker = AuthoritativeChecker(config.dns)
    deadline = time.monotonic() + timeout
    last = ""

    async def run() -> int:
        nonlocal last
        while True:
            phase = await step(conn, config, checker, name)
            shown = f"{phase.name} {_when(phase.due)} {phase.detail}"
            if shown != last:
                click.echo(f"{name}: " + status_lines(status_of(conn, config, name))[0])
                last = shown
            if phase.name in ("retiring", "steady", "removing"):
                return 0
            if time.monotonic() > deadline:
                click.echo(f"mxdesk: {name} does not sign with its new key yet", err=True)
                return 1
            await asyncio.sleep(min(config.dns.check_interval, 2.0))

    return asyncio.run(run())


@dkim_group.command("revoke")
@click.argument("name")
@click.argument("selector")
@pass_context
@errors_to_exit(*ERRORS)
def revoke(ctx: Context, name: str, selector: str) -> None:
    """Revoke key SELECTOR of domain NAME (a leaked key): it stops signing at once and its
    record is replaced by an empty p=, so that nothing signed with it verifies any more."""
    from mxdesk.dns import rotation

    conn = need_state(ctx)
    config = ctx.config
    name = name.lower().rstrip(".")
    import asyncio

    key = rotation.revoke(conn, config, name, selector)
    signing = dkimkeys.keys_of(conn, name, (dkimkeys.ACTIVE,))
    click.echo(f"{name}: {selector} revoked; it signs nothing from now on")
    revoked = dkimkeys.keys_of(conn, name, (dkimkeys.REVOKED,))
    if not asyncio.run(rotation.publish_revocation(conn, config, name, revoked)):
        click.echo("publishing its empty p= failed: the gateway retries (see 'dkim status')")
    if signing:
        click.echo(f"signing with {', '.join(k.selector for k in signing)}")
    if not any(k.algorithm == dkimkeys.RSA for k in signing):
        base = config.general.base_domain
        click.echo(
            f"no other served RSA key: replies are signed with {base}'s key until a new one is"
            " served (DMARC passes only where it aligns with the sender's domain)"
            if name != base
            else "no other served RSA key: replies leave without an RSA signature until a new"
            " one is served"
        )
    if not dkimkeys.keys_of(conn, name, (dkimkeys.PENDING,)):
        try:
            new = rotation.start(conn, config, name)
            _publish_now(conn, config, name)
            click.echo(f"new key {', '.join(k.selector for k in new)} is being published:")
            _records(conn, config, name, {k.selector for k in new})
        except state.StateError as exc:
            click.echo(f"no new key started: {exc}")
    since = _when(key.activated) if key.activated else "its creation"
    click.echo(
        f"may now fail DKIM: mail already delivered with {selector} (signed since {since}) when"
        " a receiver checks it again, e.g. forwarded mail; replies still queued are signed"
        " as they leave, with the key that signs then"
    )
    _records(conn, config, name, {selector})
