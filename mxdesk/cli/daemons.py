"""`mxdesk init|check-config|gateway|store|serve`: setting up and running the daemons."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import click

from mxdesk import config as cfg
from mxdesk import configcheck, daemon, demo, domains, state, versions
from mxdesk.cli.context import Context, pass_context
from mxdesk.cli.output import emit_json, errors_to_exit, json_option
from mxdesk.configread import Problem
from mxdesk.gateway.service import GatewayService
from mxdesk.reload import Reloader
from mxdesk.secrets import SecretsError, installation_key, secrets_key, secrets_key_path
from mxdesk.startup import EXIT_CONFIG, StartupError, failure
from mxdesk.store.service import start_store

DAEMON_EPILOG = """\b
Exit status: 0 after SIGTERM (work in flight finished); 2 when the
configuration is wrong (each error with its file and line); 3 when it
cannot start and a person must act (the port is in use, no permission to
bind it, a socket in use by a running daemon, a Python with a known
mail-parsing flaw: the line names the version needed); 1 on anything
else. A failure is one line on stderr; log_level = "debug" logs the
traceback too.

\b
SIGHUP reloads what can change while running: the TLS certificate and key,
log_level, the reserved labels file and the limits (max_message_size,
max_recipients, max_connections, max_connections_per_client, idle_timeout,
session_timeout), for the sessions that start from then on. Each change is
logged; other changed settings are logged as needing a restart; a bad new
configuration is logged, error by error, and the running one is kept."""

STORE_EPILOG = """\b
Exit status: 0 after SIGTERM (deliveries in flight filed); 2 when the
configuration is wrong (each error with its file and line); 3 when it
cannot start and a person must act (its socket in use by a running store,
a directory it may not write, a Python with a known mail-parsing flaw: the
line names the version needed); 1 on anything else. A failure is one line
on stderr; log_level = "debug" logs the traceback too.

\b
SIGHUP reloads log_level; other changed settings are logged as needing a
restart; a bad new configuration is logged, error by error, and the
running one is kept."""


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


def _say(problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(daemon.error_line(str(problem)), err=True)


def _daemon_config(ctx: Context, name: str, is_demo: bool = False) -> cfg.Config:
    """The configuration a daemon runs with, and its state set up; exits 2 on an error in
    the configuration (a line each), 3 when the state cannot be set up."""
    config = ctx.config  # exits 2 with one line per error
    refused = [] if is_demo else configcheck.daemon_errors(config, gateway=name != "store")
    if refused:
        _say(refused)
        raise SystemExit(EXIT_CONFIG)
    daemon.setup_logging(config.general.log_level)
    try:
        versions.check()
        init_state(config)
    except Exception as exc:
        daemon.log.debug("%s: start-up failed", name, exc_info=True)
        _stop(failure(exc, name))
    return config


def _stop(error: StartupError) -> NoReturn:
    click.echo(daemon.error_line(str(error)), err=True)
    raise SystemExit(error.code)


def _run(
    ctx: Context,
    config: cfg.Config,
    start: Callable[[], Awaitable[list[daemon.Service]]],
    name: str,
    is_demo: bool = False,
) -> NoReturn:
    def load() -> cfg.Config:
        new = cfg.load(ctx.path)
        refused = [] if is_demo else configcheck.daemon_errors(new, gateway=name != "store")
        if refused:
            raise cfg.ConfigError(refused)
        return new

    try:
        code = asyncio.run(daemon.serve(start, Reloader(config, load), name))
    except StartupError as exc:
        _stop(exc)
    raise SystemExit(code)


async def _gateway(config: cfg.Config) -> list[daemon.Service]:
    service = GatewayService(config)
    await service.start()
    return [service]


async def _store(config: cfg.Config) -> list[daemon.Service]:
    return [await start_store(config)]


async def _both(config: cfg.Config, is_demo: bool) -> list[daemon.Service]:
    store = await start_store(config)
    gateway = GatewayService(config)
    try:
        await gateway.start()
    except BaseException:
        await store.close()
        raise
    if is_demo:
        click.echo(demo.banner(config, gateway.addresses), err=True)
    return [gateway, store]


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
    """Validate the configuration file. Each error names its file, line and key (with the
    closest known key for a misspelt one) and the exit status is 2; warnings, such as the
    example base domain, are printed with the errors or alone, and do not fail the check."""
    checked = configcheck.check(ctx.path)
    if as_json:
        config = checked.config
        emit_json(
            {
                "ok": config is not None,
                "path": str(ctx.path),
                **({"base_domain": config.general.base_domain} if config else {}),
                "errors": [e.as_json() for e in checked.errors],
                "warnings": [w.as_json() for w in checked.warnings],
            }
        )
    else:
        _say(checked.errors)
        for warning in checked.warnings:
            click.echo(f"mxdesk: warning: {warning}", err=True)
        if checked.config is not None:
            click.echo(f"{ctx.path}: ok (base domain {checked.config.general.base_domain})")
    if checked.errors:
        raise SystemExit(EXIT_CONFIG)


@click.command("gateway", epilog=DAEMON_EPILOG)
@pass_context
def gateway(ctx: Context) -> None:
    """Run the gateway daemon (MX and submission listeners, spool, delivery to the store and
    to recipients' MX hosts or company outboxes)."""
    config = _daemon_config(ctx, "gateway")
    _run(ctx, config, lambda: _gateway(config), "gateway")


@click.command("store", epilog=STORE_EPILOG)
@pass_context
def store(ctx: Context) -> None:
    """Run the ticket store daemon (LMTP server on a Unix socket; hands replies to the
    gateway)."""
    config = _daemon_config(ctx, "store")
    _run(ctx, config, lambda: _store(config), "store")


@click.command("serve", epilog=DAEMON_EPILOG)
@click.option(
    "--demo",
    "is_demo",
    is_flag=True,
    help="Set up a demo state directory (tenant 'marca', mailbox suporte@) and use it; the"
    " example base domain is allowed.",
)
@click.option(
    "--demo-dir",
    type=click.Path(path_type=Path),
    default=Path("mxdesk-demo"),
    show_default=True,
    help="Where --demo keeps its config and state.",
)
@click.option(
    "--demo-port",
    type=click.IntRange(0, 65535),
    default=2525,
    show_default=True,
    help="The demo's SMTP port on 127.0.0.1, written into the demo config even when an"
    " earlier run chose another (0: any free port; the banner says which).",
)
@pass_context
def serve(ctx: Context, is_demo: bool, demo_dir: Path, demo_port: int) -> None:
    """Run the gateway and the store in one process (a laptop, a demo)."""
    try:
        if is_demo:
            ctx.explicit_path = str(demo.config_file(demo_dir, demo_port))
        config = _daemon_config(ctx, "serve", is_demo)
        if is_demo:
            demo.provision(config)
    except Exception as exc:
        daemon.log.debug("serve: start-up failed", exc_info=True)
        _stop(failure(exc, "serve"))
    _run(ctx, config, lambda: _both(config, is_demo), "serve", is_demo)
