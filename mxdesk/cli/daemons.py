"""`mxdesk init|check-config|gateway|store|serve`: setting up and running the daemons."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path

import click

from mxdesk import config as cfg
from mxdesk import daemon, domains, state
from mxdesk.cli.context import Context, pass_context
from mxdesk.cli.output import emit_json, errors_to_exit, json_option
from mxdesk.gateway.service import GatewayService
from mxdesk.names import reserved_labels
from mxdesk.secrets import SecretsError, installation_key, secrets_key, secrets_key_path
from mxdesk.store.service import start_store


def init_state(config: cfg.Config) -> None:
    """Creates the state directory, the databases, the base domain's DKIM keys and the key
    of mxdesk's Message-IDs and notices; safe to run again."""
    config.general.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    # Made here, by whoever runs init or a daemon, not by the first `ticket reply`.
    installation_key(config.general.state_dir)
    conn = state.connect(config.general.state_db)
    try:
        domains.ensure_base_domain_keys(conn, config)
    finally:
        conn.close()


def _refuse_bad_config(ctx: Context) -> cfg.Config:
    config = ctx.config  # exits 2 with one line per error
    init_state(config)
    daemon.setup_logging(config.general.log_level)
    return config


async def _gateway(config: cfg.Config) -> list[daemon.Service]:
    service = GatewayService(config)
    await service.start()
    return [service]


async def _store(config: cfg.Config) -> list[daemon.Service]:
    return [await start_store(config)]


async def _both(config: cfg.Config) -> list[daemon.Service]:
    store = await _store(config)
    return [*await _gateway(config), *store]


@click.command("init")
@pass_context
@errors_to_exit(SecretsError)
def init(ctx: Context) -> None:
    """Create the state directory, databases, the base domain's DKIM keys and the key that
    encrypts stored passwords (idempotent)."""
    init_state(ctx.config)
    secrets_key(ctx.config.general, create=True)
    click.echo(f"state in {ctx.config.general.state_dir}")
    click.echo(f"secrets key in {secrets_key_path(ctx.config.general)}: keep a backup of it")


@click.command("check-config")
@json_option
@pass_context
def check_config(ctx: Context, as_json: bool) -> None:
    """Validate the configuration file; print each error with its key and exit 2."""
    config = ctx.config
    if as_json:
        emit_json({"ok": True, "path": str(ctx.path)})
    else:
        click.echo(f"{ctx.path}: ok (base domain {config.general.base_domain})")


@click.command("gateway")
@pass_context
def gateway(ctx: Context) -> None:
    """Run the gateway daemon (MX and submission listeners, spool, delivery to the store and
    to recipients' MX hosts or company outboxes)."""
    config = _refuse_bad_config(ctx)
    raise SystemExit(asyncio.run(daemon.serve(lambda: _gateway(config))))


@click.command("store")
@pass_context
def store(ctx: Context) -> None:
    """Run the ticket store daemon (LMTP server on a Unix socket; hands replies to the
    gateway)."""
    config = _refuse_bad_config(ctx)
    raise SystemExit(asyncio.run(daemon.serve(lambda: _store(config))))


DEMO_CONFIG = """\
# mxdesk demo: everything under this directory, SMTP on 127.0.0.1:{port}.
[mxdesk]
base_domain = "helpdesk.example"
state_dir = "{dir}/state"
runtime_dir = "{dir}/run"
# The demo runs as whoever starts it.
user = ""

[gateway]
listen = ["127.0.0.1:{port}"]

[gateway.inbound_retry]
initial = 2.0
maximum = 60.0
"""


def _demo(directory: Path, port: int) -> Path:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mxdesk.toml"
    if not path.exists():
        path.write_text(DEMO_CONFIG.format(dir=directory, port=port))
    config = cfg.load(path)
    init_state(config)
    conn = state.connect(config.general.state_db)
    base = config.general.base_domain
    reserved = reserved_labels(None)
    try:
        state.add_tenant(conn, base, "marca", "owner@marca.example", "plus", reserved)
        from mxdesk.dns.lifecycle import activate

        domain = domains.add_domain(conn, config, "marca", "marca", reserved).domain.name
        # The demo has no DNS to publish to: active at once, and no mail to its owner.
        activate(conn, domain, forced=True)
        state.set_domain(conn, domain, owner_notified=True)
        state.add_mailbox(conn, base, f"suporte@marca.{base}", "Suporte Marca")
    except (state.StateError, sqlite3.IntegrityError):
        pass  # already set up by an earlier run
    finally:
        conn.close()
    click.echo(
        textwrap.dedent(f"""\
        mxdesk demo: tenant 'marca', mailbox suporte@marca.{base}, SMTP on 127.0.0.1:{port}
          send:   swaks --server 127.0.0.1:{port} --to suporte@marca.{base}
          read:   MXDESK_CONFIG={path} mxdesk ticket list
        """),
        err=True,
    )
    return path


@click.command("serve")
@click.option(
    "--demo",
    is_flag=True,
    help="Set up a demo state directory (tenant 'marca', mailbox suporte@) and use it.",
)
@click.option(
    "--demo-dir",
    type=click.Path(path_type=Path),
    default=Path("mxdesk-demo"),
    show_default=True,
    help="Where --demo keeps its config and state.",
)
@click.option("--demo-port", type=int, default=2525, show_default=True)
@pass_context
def serve(ctx: Context, demo: bool, demo_dir: Path, demo_port: int) -> None:
    """Run the gateway and the store in one process (a laptop, a demo)."""
    if demo:
        ctx.explicit_path = str(_demo(demo_dir, demo_port))
    config = _refuse_bad_config(ctx)
    raise SystemExit(asyncio.run(daemon.serve(lambda: _both(config))))


def register(group: click.Group) -> None:
    for command in (init, check_config, gateway, store, serve):
        group.add_command(command)
