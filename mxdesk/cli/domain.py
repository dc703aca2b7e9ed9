"""`mxdesk domain …`: hosted subdomains and own domains, their records and their way to active."""

from __future__ import annotations

import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from mxdesk import changes, domains, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.dkim import status_lines, status_of
from mxdesk.cli.domainwait import follow
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, fail, json_option
from mxdesk.dns.providers import ProviderError, SecretUnavailable
from mxdesk.dns.records import OWNERSHIP_LABEL, OWNERSHIP_PREFIX, RecordPlan, zone_file
from mxdesk.gateway.dkimkey import DkimKeyError
from mxdesk.references import plural

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    import asyncio  # here: listing and showing domains need no event loop

    return asyncio.run(coroutine)


ERRORS = (state.StateError, DkimKeyError, OSError, ProviderError)


@click.group("domain")
def domain_group() -> None:
    """Hosted subdomains (<label>.<base domain>) and customers' own domains."""


@domain_group.command("add")
@click.argument("name")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@click.option("--own", is_flag=True, help="NAME is the customer's own domain (plan premium).")
@click.option("--wait", is_flag=True, help="Follow the domain until it is active.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def add(
    ctx: Context, name: str, tenant_slug: str, own: bool, wait: bool, timeout: float, as_json: bool
) -> None:
    """Create domain NAME for a tenant, with its DKIM keys, and publish its records.

    NAME is a label (marca: marca.<base domain>, plus or premium) or, with --own, the
    customer's domain (marca.com.br, premium). Where a provider serves the zone the records
    are published now; a refused key or an unreachable provider is said here and nothing is
    kept. The gateway then checks every authoritative server and activates the domain once
    all of them serve every record; replies wait in the queue until then.
    """
    from mxdesk.dns.lifecycle import publish_domain

    conn = need_state(ctx)
    view = domains.add_domain(conn, ctx.config, name, tenant_slug, ctx.reserved(), own=own)
    domain = view.domain.name
    try:
        published = _run(publish_domain(conn, ctx.config, domain))
    except SecretUnavailable as exc:
        # The daemon holds the secret: it publishes the domain, still pending here.
        state.set_domain(conn, domain, status="pending")
        published = []
        if not as_json:
            click.echo(f"{exc}: the gateway publishes {domain}")
    except BaseException as exc:
        domains.remove_domain(conn, ctx.config, domain)
        if isinstance(exc, ProviderError):
            fail(f"{domain}: {exc}; nothing was created")
        raise
    plan = domains.domain_plan(conn, ctx.config, domain)
    if as_json and not wait:
        emit_json({"domain": domains.get(conn, domain), "published": published, "plan": plan})
    elif not as_json:
        click.echo(f"domain {domain} created for tenant {tenant_slug}")
        for p in published:
            if p.provider:
                what = (
                    f"{plural(len(p.changed), 'record set')} changed"
                    if p.changed
                    else "already there"
                )
                click.echo(f"published in zone {p.zone} through {p.provider}: {what}")
        manual = [r for r in plan.records if not ctx.config.dns.zone_of(r.name)[1]]
        if manual:
            click.echo("no provider publishes these records: put them in the zone by hand")
            click.echo(zone_file(RecordPlan(domain, tuple(manual))), nl=False)
        _print_mta_sts(plan)
    if wait:
        sys.exit(follow(ctx, domain, timeout, as_json))
    if not as_json:
        click.echo(f"propagating: follow it with 'mxdesk domain wait {domain}'")


def _print_mta_sts(plan: RecordPlan) -> None:
    if plan.mta_sts_policy:
        click.echo(
            f"MTA-STS: serve this file at https://mta-sts.{plan.domain}/.well-known/mta-sts.txt"
            " from your web server (mxdesk does not serve HTTPS):"
        )
        click.echo(plan.mta_sts_policy.replace("\r\n", "\n"), nl=False)


@domain_group.command("records")
@click.argument("name", required=False)
@click.option("--base", is_flag=True, help="The base domain's records (with MX addresses).")
@click.option(
    "--zone-file", "zone_file_", is_flag=True, help="Zone-file lines for BIND, Knot or NSD."
)
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def records(ctx: Context, name: str | None, base: bool, zone_file_: bool, as_json: bool) -> None:
    """Print the DNS records domain NAME (or --base) needs."""
    if bool(name) == base:
        fail("give a domain NAME or --base")
    conn = need_state(ctx)
    plan = (
        domains.base_plan(conn, ctx.config)
        if base
        else domains.domain_plan(conn, ctx.config, str(name))
    )
    if as_json:
        emit_json(plan)
    elif zone_file_:
        click.echo(zone_file(plan), nl=False)
    else:
        emit_table(
            [(r.name, r.type, r.ttl, r.purpose, r.value) for r in plan.records],
            ["name", "type", "ttl", "purpose", "value"],
        )
        _print_mta_sts(plan)


@domain_group.command("check")
@click.argument("name")
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def check(ctx: Context, name: str, as_json: bool) -> None:
    """Ask every authoritative server of domain NAME for each record; exit 1 unless all serve
    every record (ok, missing, differs, lame or unreachable per record and server)."""
    from mxdesk.dns.check import AuthoritativeChecker, CheckReport

    conn = need_state(ctx)
    plan = domains.domain_plan(conn, ctx.config, name)

    async def run() -> CheckReport:
        return await AuthoritativeChecker(ctx.config.dns).check(plan.domain, plan.records)

    report = _run(run())
    if as_json:
        emit_json({"domain": plan.domain, "ok": report.ok, "checks": report.checks})
    else:
        rows = [
            (
                c.record.name,
                c.record.type,
                a.server,
                a.address,
                a.status,
                " | ".join(a.served) if a.status == "differs" else a.detail,
            )
            for c in report.checks
            for a in c.answers
        ]
        emit_table(rows, ["record", "type", "server", "address", "status", "detail"])
        click.echo(f"{report.served}/{report.expected} served")
    if not report.ok:
        sys.exit(1)


@domain_group.command("publish")
@click.argument("name")
@pass_context
@errors_to_exit(*ERRORS)
def publish_(ctx: Context, name: str) -> None:
    """Publish domain NAME's records again (changes only what differs)."""
    from mxdesk.dns.publish import publish

    conn = need_state(ctx)
    plan = domains.domain_plan(conn, ctx.config, name)
    for p in _run(publish(plan, ctx.config.dns)):
        if not p.provider:
            click.echo(f"zone {p.zone or '(none)'}: no provider; see 'mxdesk domain records'")
        elif p.changed:
            changed = ", ".join(f"{c.name} {c.type}" for c in p.changed)
            click.echo(f"zone {p.zone}: replaced {changed}")
        else:
            click.echo(f"zone {p.zone}: nothing to change")


@domain_group.command("wait")
@click.argument("name")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def wait(ctx: Context, name: str, timeout: float, as_json: bool) -> None:
    """Follow domain NAME until it is active; exit 0 if it became active, 1 if not in time."""
    sys.exit(follow(ctx, domains.get(need_state(ctx), name).name, timeout, as_json))


@domain_group.command("activate")
@click.argument("name")
@click.option("--force", is_flag=True, required=True, help="Skip the check (required).")
@click.option("--no-mail", is_flag=True, help="Do not mail the tenant's owner about it.")
@pass_context
@errors_to_exit(*ERRORS)
def activate(ctx: Context, name: str, force: bool, no_mail: bool) -> None:
    """Make domain NAME active without waiting for its records to be served: for records
    published by other means or a closed lab network. Logged, and shown by 'domain show'."""
    from mxdesk.dns.lifecycle import activate as do_activate

    conn = need_state(ctx)
    d = domains.get(conn, name)
    if d.status == "active":
        fail(f"{d.name} is active already")
    if d.status == "disabled":
        fail(f"{d.name} is disabled: enable it first (mxdesk domain enable {d.name})")
    do_activate(conn, d.name, forced=True)
    if no_mail:
        state.set_domain(conn, d.name, owner_notified=True)
    click.echo(f"{d.name} is active (forced): replies from it may leave now")


@domain_group.command("show")
@click.argument("name")
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def show(ctx: Context, name: str, as_json: bool) -> None:
    """Show domain NAME: its state, progress and the DKIM records it needs in DNS."""
    view = domains.show_domain(need_state(ctx), name, ctx.config)
    if as_json:
        emit_json(view)
        return
    d = view.domain
    click.echo(f"{d.name}  tenant {d.tenant}  {d.kind}  {_shown_status(d)}")
    if d.status == "active" and d.health != "ok":
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.drift_since or 0))
        click.echo(f"{d.health} since {since}:")
        for line in d.drift_detail.splitlines():
            click.echo(f"  {line}")
    if d.status != "active":
        click.echo(f"served: {d.served}/{d.expected} records x servers")
    if d.activated:
        how = " (forced: records not checked)" if d.forced else ""
        click.echo(
            f"active since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d.activated))}{how}"
        )
    if d.last_error:
        click.echo(f"last error: {d.last_error}")
    if d.token:
        proof = f'{OWNERSHIP_LABEL}.{d.name}. IN TXT "{OWNERSHIP_PREFIX}{d.token}"'
        click.echo(f"ownership proof: {proof}")
    for r in view.dkim:
        click.echo(f'DKIM {r.algorithm} ({r.state}): {r.name}. IN TXT "{r.txt}"')
    for line in status_lines(status_of(need_state(ctx), ctx.config, d.name)):
        click.echo(line)


@domain_group.command("list")
@click.option("--tenant", "tenant_slug", metavar="SLUG")
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def list_(ctx: Context, tenant_slug: str | None, as_json: bool) -> None:
    """List domains with their state (pending, publishing, propagating, active, disabled; an
    active domain whose records drifted shows drift, or healing while they are republished)."""
    conn = need_state(ctx)
    if tenant_slug:
        state.get_tenant(conn, tenant_slug)  # an unknown tenant is an error, not an empty list
    found = state.list_domains(conn, tenant_slug)
    if as_json:
        emit_json(found)
    else:
        emit_table(
            [
                (
                    d.name,
                    d.tenant,
                    d.kind,
                    _shown_status(d),
                    f"{d.served}/{d.expected}" if d.expected else "-",
                )
                for d in found
            ],
            ["domain", "tenant", "kind", "status", "served"],
        )


def _shown_status(d: state.Domain) -> str:
    """An active domain's health in place of "active" when its records drifted."""
    return d.health if d.status == "active" and d.health != "ok" else d.status


@domain_group.command("disable")
@click.argument("name")
@pass_context
@errors_to_exit(*ERRORS)
def disable(ctx: Context, name: str) -> None:
    """Stop domain NAME: mail to it is refused (550), the submission refuses its senders and
    nothing is signed for it; replies already queued wait held. Its records and DKIM keys
    stay; 'mxdesk domain enable' undoes it."""
    d, changed = changes.disable_domain(need_state(ctx), name)
    click.echo(f"domain {d.name} {'disabled' if changed else 'was disabled already'}")


@domain_group.command("enable")
@click.argument("name")
@pass_context
@errors_to_exit(*ERRORS)
def enable(ctx: Context, name: str) -> None:
    """Put disabled domain NAME back on its way to active.

    It goes to propagating, not straight to active: the gateway checks its records at every
    authoritative server again (they may have changed while it was off) and makes it active,
    and releases its held replies, once all of them serve every record. A domain whose
    records are published by other means needs 'mxdesk domain activate NAME --force' again."""
    d, changed = changes.enable_domain(need_state(ctx), name)
    if changed:
        click.echo(f"domain {d.name} enabled: {d.status}; follow it with 'mxdesk domain wait'")
    else:
        click.echo(f"domain {d.name} is not disabled ({d.status})")


@domain_group.command("remove")
@click.argument("name")
@json_option
@pass_context
@errors_to_exit(*ERRORS)
def remove(ctx: Context, name: str, as_json: bool) -> None:
    """Remove domain NAME with its DKIM keys (rows and key files).

    Refused while it has mailboxes ('mxdesk mailbox remove' them first) and while the queue
    holds mail to or from it ('mxdesk queue list'). Its DNS records stay: remove them from
    the zone (the command lists them)."""
    gone = changes.remove_domain(need_state(ctx), ctx.config, name)
    if as_json:
        emit_json(gone)
        return
    click.echo(f"domain {gone.name} removed with its DKIM keys")
    if gone.records:
        click.echo("its DNS records stay: remove them from the zone:")
        for record in gone.records:
            click.echo(f"  {record}")
