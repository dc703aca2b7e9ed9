"""A tenant's company outbox: replies go through a real SMTP server that demands AUTH after TLS.

The server is a private Postfix whose SASL is Dovecot's auth service (tests/auth_smtp_harness.py);
the outbox is configured with the CLI, the password given on stdin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_smtp_harness import AuthSmtpServer, auth_server
from conftest import require_real, wait_for
from daemons import cli
from replysite import CUSTOMER, Site

USER, PASSWORD = "ana@empresa.example", "s3nha-da-Empresa"
REFUSED = "bloqueado@empresa.example"


@pytest.fixture
def server() -> Iterator[AuthSmtpServer]:
    with auth_server(USER, PASSWORD, REFUSED) as srv:
        yield srv


@pytest.fixture
def site(short_tmp: Path) -> Iterator[Site]:
    require_real("smtp-sink")
    s = Site(short_tmp, 0.0, ())
    yield s
    s.close()


def set_outbox(
    site: Site, server: AuthSmtpServer, security: str, password: str, address: str = USER
) -> None:
    port = server.ssl_port if security == "ssl" else server.starttls_port
    cli(
        site.config,
        *("outbox", "set", "marca", "--host", "127.0.0.1", "--port", str(port)),
        *("--security", security, "--user", USER, "--address", address),
        *("--ca-file", str(server.ca_file), "--password-stdin"),
        input=password + "\n",
    )


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_good_login_delivers_through_the_outbox(
    site: Site, server: AuthSmtpServer, security: str
) -> None:
    set_outbox(site, server, security, PASSWORD)
    state_db = (site.root / "state" / "state.db").read_bytes()
    assert PASSWORD.encode() not in state_db
    ticket = await site.ask()
    site.reply(ticket)
    [received] = server.wait_messages(1, containing=b"Subject: Re: impressora parada")
    assert f"Return-Path: <{USER}>".encode() in received  # the outbox's own address
    assert f"Delivered-To: {CUSTOMER}".encode() in received
    assert b"DKIM-Signature:" in received
    await wait_for(lambda: site.message(ticket, 1)["status"] == "sent", what="status sent")
    assert site.sink.messages() == []  # nothing went to the recipient's MX


async def test_wrong_password_is_said_on_the_reply_and_in_the_queue(
    site: Site, server: AuthSmtpServer
) -> None:
    set_outbox(site, server, "ssl", "not-the-password")
    ticket = await site.ask()
    site.reply(ticket)
    await wait_for(lambda: site.message(ticket, 1)["status"] == "deferred", what="deferred")
    detail = site.message(ticket, 1)["status_detail"]
    assert "refused the login for user" in detail and "535" in detail
    [entry] = [e for e in site.json("queue", "list") if e["kind"] == "out"]
    shown = cli(site.config, "queue", "show", entry["id"]).stdout
    assert "refused the login for user" in shown
    assert "not-the-password" not in shown + detail
    assert server.messages() == []


async def test_refused_sender_fails_the_reply_with_the_reason(
    site: Site, server: AuthSmtpServer
) -> None:
    set_outbox(site, server, "starttls", PASSWORD, address=REFUSED)
    ticket = await site.ask()
    site.reply(ticket)
    await wait_for(lambda: site.message(ticket, 1)["status"] == "failed", what="failed")
    detail = site.message(ticket, 1)["status_detail"]
    assert f"refused the sender <{REFUSED}>" in detail and "553" in detail
    assert server.messages() == []
