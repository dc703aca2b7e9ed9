"""The AUTH SMTP server the smarthost tests rely on behaves like a company outbox."""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import Iterator

import aiosmtplib
import pytest
from auth_smtp_harness import AuthSmtpServer, auth_server

USER = "ana@empresa.example"
PASSWORD = "s3cret:with colon"
REFUSED = "blocked@empresa.example"

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def server() -> Iterator[AuthSmtpServer]:
    with auth_server(USER, PASSWORD, REFUSED) as srv:
        yield srv


def _verifying(server: AuthSmtpServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def _client(server: AuthSmtpServer, implicit_tls: bool) -> aiosmtplib.SMTP:
    if implicit_tls:
        port, use_tls, start_tls = server.ssl_port, True, False
    else:
        port, use_tls, start_tls = server.starttls_port, False, True
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        use_tls=use_tls,
        start_tls=start_tls,
        tls_context=_verifying(server),
        timeout=15,
    )


def _message(subject: str) -> bytes:
    head = f"From: Ana <{USER}>\r\nTo: cliente@cliente.example\r\nSubject: {subject}\r\n"
    return (head + "\r\nOi\r\n").encode()


@pytest.mark.parametrize("implicit_tls", [True, False], ids=["ssl", "starttls"])
async def test_login_with_the_right_password_delivers(
    server: AuthSmtpServer, implicit_tls: bool
) -> None:
    subject = f"teste {uuid.uuid4().hex}"
    client = _client(server, implicit_tls)
    await client.connect()
    await client.login(USER, PASSWORD)
    errors, _ = await client.sendmail(USER, ["cliente@cliente.example"], _message(subject))
    await client.quit()
    assert errors == {}
    found = server.wait_messages(1, containing=f"Subject: {subject}".encode())
    assert len(found) == 1
    assert found[0].startswith(f"Return-Path: <{USER}>".encode())
    assert b"Delivered-To: cliente@cliente.example" in found[0]


@pytest.mark.parametrize("implicit_tls", [True, False], ids=["ssl", "starttls"])
async def test_wrong_password_is_refused_with_535(
    server: AuthSmtpServer, implicit_tls: bool
) -> None:
    client = _client(server, implicit_tls)
    await client.connect()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await client.login(USER, "not the password")
    assert refused.value.code == 535
    await client.quit()


async def test_named_sender_is_refused_at_mail_from(server: AuthSmtpServer) -> None:
    client = _client(server, implicit_tls=True)
    await client.connect()
    await client.login(USER, PASSWORD)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail(REFUSED)
    assert 500 <= refused.value.code < 600
    await client.rset()
    # Only that sender: an alias of the user is still accepted.
    assert (await client.mail("suporte@empresa.example")).code == 250
    await client.quit()


async def test_mail_without_auth_is_refused_at_mail_from(server: AuthSmtpServer) -> None:
    client = _client(server, implicit_tls=True)
    await client.connect()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail(USER)
    assert 500 <= refused.value.code < 600
    await client.quit()


async def test_no_auth_before_starttls(server: AuthSmtpServer) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=server.starttls_port, start_tls=False, timeout=15
    )
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    reply = await client.execute_command(b"AUTH", b"PLAIN", plain)
    assert 500 <= reply.code < 600
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail(USER)
    assert refused.value.code == 530
    await client.starttls(tls_context=_verifying(server))
    await client.ehlo()
    assert client.supports_extension("auth")
    await client.login(USER, PASSWORD)
    await client.quit()
