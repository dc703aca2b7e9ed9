"""A Microsoft-365-like channel end to end: `mxdesk channel authorize` through the device grant,
the gateway reading the mailbox with XOAUTH2 (Dovecot validating the tokens), refreshing them
with rotation, the outbox sending with the same grant through Postfix, and a revoked grant
stopping the channel with one alert."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_smtp_harness import AuthSmtpServer, auth_server
from conftest import require_real, wait_for_sync
from daemons import MXDESK, cli, free_port, provision, write_config
from dovecot_mail import REQUIRED_PROGRAMS, MailServer
from oauth_server import OAuthServer
from replysite import Site
from wire import stored_messages

USER = "suporte@empresa.example"
CHANNELS = """
[channels]
poll_interval = 0.5
idle_heartbeat = 30
timeout = 5
retry_initial = 0.2
retry_max = 1
auth_retry = 1

[oauth2.empresa]
client_id = "mxdesk-test"
device_endpoint = "{device}"
token_endpoint = "{token}"
scope = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
"""

pytestmark = pytest.mark.real


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    # Access tokens live 300 s: within the 300 s margin, every new connection refreshes first.
    with OAuthServer(interval=1, access_token_lifetime=300, rotation=True) as srv:
        yield srv


@pytest.fixture
def mail(oauth: OAuthServer) -> Iterator[MailServer]:
    for program in (*REQUIRED_PROGRAMS, "smtp-sink"):
        require_real(program)
    with MailServer({USER: "a-password-nobody-uses"}, oauth2=oauth.keys) as srv:
        yield srv


@pytest.fixture
def outbox(oauth: OAuthServer) -> Iterator[AuthSmtpServer]:
    with auth_server(USER, "another-unused-password", "bloqueado@empresa.example", oauth.keys) as s:
        yield s


@pytest.fixture
def site(short_tmp: Path, oauth: OAuthServer) -> Iterator[Site]:
    extra = CHANNELS.format(device=oauth.device_endpoint, token=oauth.token_endpoint)
    site = Site(short_tmp, send_delay=0, sink_flags=(), extra=extra)
    site.dns.add("marca.example", "MX", "10 mx.example.com.")
    yield site
    site.close()


def channel(site: Site) -> dict[str, Any]:
    shown: dict[str, Any] = site.json("channel", "show", USER)
    return shown


def subjects(site: Site) -> list[str]:
    return [row["subject"] for row in stored_messages(site.root / "state" / "tickets.db")]


def authorize(config: Path, oauth: OAuthServer) -> None:
    """Runs `mxdesk channel authorize` as a person would, and approves its code at the
    provider the way the person signs in on another device."""
    proc = subprocess.Popen(
        [*MXDESK, "--config", str(config), "channel", "authorize", USER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith(f"Open {oauth.base_url}"), first
    code = first.rsplit(" ", 1)[1].strip()
    oauth.approve(code, USER)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"channel {USER} authorized" in out


def deliver(mail: MailServer, subject: str) -> None:
    mail.deliver(USER, f"From: cliente@example.com\r\nSubject: {subject}\r\n\r\nolá\r\n".encode())


def test_authorize_fetch_refresh_with_rotation_send_and_revoke(
    site: Site, oauth: OAuthServer, mail: MailServer, outbox: AuthSmtpServer
) -> None:
    cli(
        site.config,
        *("channel", "add", "--tenant", "marca", "--address", USER, "--host", "127.0.0.1"),
        *("--port", str(mail.imaps_port), "--ca-file", str(mail.ca_file)),
        *("--auth", "oauth2", "--oauth-provider", "empresa"),
    )
    # Not authorized yet: failing, saying what to run; no mail for that.
    wait_for_sync(lambda: "channel authorize" in channel(site)["last_error"], 30, "the hint")
    authorize(site.config, oauth)
    wait_for_sync(lambda: channel(site)["state"] == "idle", 30, "the XOAUTH2 login")
    deliver(mail, "via oauth")
    wait_for_sync(lambda: "via oauth" in subjects(site), 20, "the first ticket")
    # Each new connection refreshes; the provider rotates the refresh token every time and
    # the old one dies: two reconnects work only if every new one was kept.
    for n in range(2):
        refreshed = oauth.requests["refresh_token"]
        mail.kick(USER)
        wait_for_sync(lambda r=refreshed: oauth.requests["refresh_token"] > r, 30, "a refresh")
        deliver(mail, f"depois do refresh {n}")
        wait_for_sync(lambda n=n: f"depois do refresh {n}" in subjects(site), 30, "a ticket")
    # The outbox logs in with the same grant (XOAUTH2 through Postfix + Dovecot SASL).
    cli(
        site.config,
        *("outbox", "set", "marca", "--host", "127.0.0.1", "--port", str(outbox.ssl_port)),
        *("--ca-file", str(outbox.ca_file), "--address", USER, "--oauth-channel", USER),
    )
    test = cli(site.config, "outbox", "test", "marca")
    assert "AUTH XOAUTH2" in test.stdout
    ticket = int(site.json("ticket", "list")[0]["number"])
    site.reply(ticket)
    sent = outbox.wait_messages(1)
    assert f"Return-Path: <{USER}>".encode() in sent[0]
    # A revoked grant (password reset, admin revoked sessions): failing, one alert mail.
    oauth.revoke(USER)
    mail.kick(USER)
    failing = wait_for_sync(
        lambda: (c := channel(site))["state"] == "failing" and "revoked" in c["last_error"] and c,
        30,
        "the revoked grant",
    )
    assert f"mxdesk channel authorize {USER}" in failing["last_error"]
    alerts = wait_for_sync(site.sink.messages, 30, "the alert")
    assert len(alerts) == 1 and b"cannot be read" in alerts[0]


def test_channel_test_interrupted_while_refreshing_keeps_the_rotated_grant(
    short_tmp: Path, oauth: OAuthServer
) -> None:
    """Ctrl-C on `mxdesk channel test` while its refresh request is out: the provider has
    already rotated the refresh token, so the command stores the answer before it ends; the
    next refresh works with it (a dropped answer would leave the dead token: invalid_grant)."""
    config = write_config(short_tmp)
    extra = CHANNELS.format(device=oauth.device_endpoint, token=oauth.token_endpoint)
    config.write_text(config.read_text() + extra)
    provision(config)
    cli(
        config,
        *("channel", "add", "--tenant", "marca", "--address", USER, "--host", "127.0.0.1"),
        *("--port", str(free_port()), "--auth", "oauth2", "--oauth-provider", "empresa"),
    )
    authorize(config, oauth)
    # Its access token lives 300 s, within the refresh margin: `channel test` refreshes.
    oauth.answer_delay = 2.0
    before = oauth.requests["refresh_token"]
    proc = subprocess.Popen(
        [*MXDESK, "--config", str(config), "channel", "test", USER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_sync(
        lambda: oauth.requests["refresh_token"] > before or proc.poll() is not None,
        30,
        "the refresh request",
    )
    assert proc.poll() is None, proc.communicate()  # rotated; the answer is on its way
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    oauth.answer_delay = 0.0
    again = cli(config, "channel", "test", USER, check=False)
    assert "no access token" not in again.stdout + again.stderr, again.stderr
    assert oauth.requests["refresh_token"] == before + 2
