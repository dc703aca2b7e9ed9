"""The demo of `mxdesk serve --demo`: its config file, its tenant and mailbox, its banner."""

from __future__ import annotations

import shlex
import shutil
import sqlite3
import sys
import tomllib
from pathlib import Path

from mxdesk import config as cfg
from mxdesk import domains, state
from mxdesk.configlines import key_lines
from mxdesk.dns.lifecycle import activate
from mxdesk.names import reserved_labels
from mxdesk.secrets import secrets_key

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
TENANT = "marca"


def config_file(directory: Path, port: int) -> Path:
    """The demo's config file in directory, written, or brought up to date: the MX on
    127.0.0.1:port whatever an earlier run chose, and run as whoever starts it."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mxdesk.toml"
    fresh = DEMO_CONFIG.format(dir=directory, port=port)
    if not path.exists():
        path.write_text(fresh)
        return path
    text = path.read_text("utf-8")
    updated = _updated(text, port)
    if updated != text:
        path.write_text(fresh if updated is None else updated)
    return path


def _alone(line: str, key: str) -> bool:
    """True when line is `key = [...]` by itself, so that it can be replaced."""
    try:
        return set(tomllib.loads(line)) == {key}
    except tomllib.TOMLDecodeError:
        return False


def _updated(text: str, port: int) -> str | None:
    """text with its MX listen address on port and `user = ""`, the rest as it was; None
    when it is not laid out as the demo writes it (then it is written again)."""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    lines = key_lines(text)
    rows = text.splitlines(keepends=True)
    listen = lines.get(("gateway", "listen"))
    if listen is None or not _alone(rows[listen - 1], "listen"):
        return None
    rows[listen - 1] = f'listen = ["127.0.0.1:{port}"]\n'
    if rows[0].startswith("# mxdesk demo:"):
        rows[0] = DEMO_CONFIG.splitlines(keepends=True)[0].format(port=port)
    if ("mxdesk", "user") not in lines:
        # Written before [mxdesk] user existed: the demo is not handed to a daemons' user.
        header = next((n for n, row in enumerate(rows) if row.strip() == "[mxdesk]"), None)
        if header is None or header > listen - 1:
            return None
        rows.insert(header + 1, 'user = ""\n')
    return "".join(rows)


def provision(config: cfg.Config) -> None:
    """The demo tenant with an active hosted domain and the mailbox suporte@ on it, and the
    secrets key (as `mxdesk init` makes it: the outbox and channels need it); what an earlier
    run made is kept."""
    secrets_key(config.general, create=True)
    conn = state.connect(config.general.state_db)
    base = config.general.base_domain
    reserved = reserved_labels(None)
    try:
        state.add_tenant(conn, base, TENANT, "owner@marca.example", "plus", reserved)
        domain = domains.add_domain(conn, config, TENANT, TENANT, reserved).domain.name
        # The demo has no DNS to publish to: active at once, and no mail to its owner.
        activate(conn, domain, forced=True)
        state.set_domain(conn, domain, owner_notified=True)
        state.add_mailbox(conn, base, mailbox(config), "Suporte Marca")
    except (state.StateError, sqlite3.IntegrityError):
        pass  # already set up by an earlier run
    finally:
        conn.close()


def mailbox(config: cfg.Config) -> str:
    return f"suporte@{TENANT}.{config.general.base_domain}"


def banner(config: cfg.Config, addresses: list[str]) -> str:
    """What the demo tells the person who started it, with the addresses really bound."""
    return (
        f"mxdesk demo: tenant '{TENANT}', mailbox {mailbox(config)},"
        f" SMTP on {', '.join(addresses)}\n"
        f"  send:   swaks --server {addresses[0]} --to {mailbox(config)}\n"
        f"  read:   MXDESK_CONFIG={config.source} {this_command()} ticket list\n"
    )


def this_command() -> str:
    """How to run the mxdesk that runs now, from the current directory: the script of a
    virtual environment is usually not on the PATH."""
    script = Path(sys.argv[0])
    if script.name != "mxdesk":  # python -m mxdesk
        return f"{shlex.quote(sys.executable)} -m mxdesk"
    on_path = shutil.which("mxdesk")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "mxdesk"
    try:
        return shlex.quote(str(script.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script.absolute()))
