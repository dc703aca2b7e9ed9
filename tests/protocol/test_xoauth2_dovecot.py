"""SASL XOAUTH2 with tokens from a real authorization server, against real Dovecot (IMAP, POP3) and
Postfix with Dovecot SASL (SMTP): what a Microsoft 365 channel meets, on loopback."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import poplib
import smtplib
import ssl
import uuid
from collections.abc import Iterator

import pytest
from auth_smtp_harness import REQUIRED_PROGRAMS as SMTP_PROGRAMS
from auth_smtp_harness import AuthSmtpServer, auth_server
from conftest import require_real, wait_for_sync
from dovecot_mail import REQUIRED_PROGRAMS, MailServer
from oauth_server import OAuthServer

from mxdesk.oauth2 import (
    Tokens,
    poll_device_flow,
    refresh,
    start_device_flow,
    xoauth2,
)

DOMAIN = "empresa.example"
IMAP_USER, POP_USER, OTHER_USER = (f"{n}@{DOMAIN}" for n in ("imap", "pop", "senha"))
# Every mailbox has a password too; only OTHER_USER's is used, to show passwords still work.
USERS = {IMAP_USER: "nunca-usada-1", POP_USER: "nunca-usada-2", OTHER_USER: "s3nha:com dois"}
SMTP_USER = f"ana@{DOMAIN}"

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(client_id="mxdesk-test") as srv:
        yield srv


@pytest.fixture(scope="module")
def server(oauth: OAuthServer) -> Iterator[MailServer]:
    for program in REQUIRED_PROGRAMS:
        require_real(program)
    with MailServer(USERS, oauth2=oauth.keys) as srv:
        yield srv


@pytest.fixture(scope="module")
def tls(server: MailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


@pytest.fixture(scope="module")
def outbox(oauth: OAuthServer) -> Iterator[AuthSmtpServer]:
    for program in SMTP_PROGRAMS:
        require_real(program)
    with auth_server(SMTP_USER, "s3nha", f"bloqueado@{DOMAIN}", oauth2=oauth.keys) as srv:
        yield srv


def _authorize(oauth: OAuthServer, user: str) -> Tokens:
    """`mxdesk channel authorize` in short: the device flow, approved during the first wait."""

    async def flow() -> Tokens:
        provider = oauth.provider()
        code = await start_device_flow(provider)

        async def person_approves(seconds: float) -> None:
            oauth.approve(code.user_code, user)

        return await poll_device_flow(provider, code, sleep=person_approves)

    return asyncio.run(flow())


def _message(subject: str) -> bytes:
    return (
        f"From: Cliente <cliente@cliente.example>\r\nTo: {IMAP_USER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@cliente.example>\r\n\r\nOlá\r\n"
    ).encode()


def _sasl_bytes(user: str, token: str) -> bytes:
    return base64.b64decode(xoauth2(user, token))


def _imap_xoauth2(server: MailServer, tls: ssl.SSLContext, user: str, token: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls, timeout=10)
    response = _sasl_bytes(user, token)
    try:
        # A refused token gets a continuation with a JSON error first; the client answers it
        # with an empty line and then gets NO (Google's XOAUTH2 description, Dovecot alike).
        imap.authenticate("XOAUTH2", lambda challenge: b"" if challenge else response)
    except imaplib.IMAP4.error:
        imap.logout()
        raise
    return imap


def _pop3_xoauth2(
    server: MailServer, tls: ssl.SSLContext, user: str, token: str
) -> tuple[poplib.POP3_SSL, bytes]:
    """AUTH XOAUTH2 with the initial response (RFC 5034); returns the session and the final
    answer (``+OK …`` or ``-ERR …``)."""
    pop = poplib.POP3_SSL(server.host, server.pop3s_port, context=tls, timeout=10)
    answer = pop._shortcmd("AUTH XOAUTH2 " + xoauth2(user, token))
    if not answer.startswith(b"+OK"):  # "+ <base64 JSON error>": acknowledge it
        try:
            answer = pop._shortcmd("")
        except poplib.error_proto as e:
            answer = e.args[0]
    return pop, answer


def _log_says(server: MailServer, text: str) -> None:
    wait_for_sync(lambda: text in server.log_text(), 10, f"Dovecot to log {text!r}")


# -- IMAP ------------------------------------------------------------------------------------


def test_imap_token_from_the_device_flow_logs_in_and_selects_inbox(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    server.deliver(IMAP_USER, _message("Pedido 1"))
    tokens = _authorize(oauth, IMAP_USER)
    with _imap_xoauth2(server, tls, IMAP_USER, tokens.access_token) as imap:
        # Past SELECT, not just the login (Microsoft's "authenticated but not connected").
        assert imap.select("INBOX") == ("OK", [b"1"])
        assert imap.uid("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[0] == "OK"


def test_imap_token_after_a_refresh_with_rotation_logs_in(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    first = _authorize(oauth, IMAP_USER)
    renewed = asyncio.run(refresh(oauth.provider(), first.refresh_token))
    assert renewed.refresh_token != first.refresh_token
    with _imap_xoauth2(server, tls, IMAP_USER, renewed.access_token) as imap:
        assert imap.select("INBOX")[0] == "OK"


def test_imap_expired_token_is_refused(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    token = oauth.access_token(IMAP_USER, lifetime=-60)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        _imap_xoauth2(server, tls, IMAP_USER, token)
    _log_says(server, f"oauth2({IMAP_USER},127.0.0.1,")
    _log_says(server, "Local validation failed: Token has expired")


def test_imap_token_signed_with_another_key_is_refused(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    forged = oauth.access_token(IMAP_USER, secret=b"not the issuer's key".ljust(32, b"!"))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        _imap_xoauth2(server, tls, IMAP_USER, forged)
    _log_says(server, "Local validation failed: Incorrect JWT signature")


def test_imap_token_of_another_user_is_refused(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        _imap_xoauth2(server, tls, OTHER_USER, oauth.access_token(IMAP_USER))


@pytest.mark.parametrize("lifetime", [3600, -60])
def test_imap_oauthbearer_takes_the_same_tokens(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext, lifetime: int
) -> None:
    # RFC 7628 §3.1: a GS2 header naming the user, then the same key-value pairs as XOAUTH2; a
    # refused token gets an error challenge that the client answers with %x01 (§3.2.3).
    token = oauth.access_token(IMAP_USER, lifetime=lifetime)
    response = f"n,a={IMAP_USER},\x01auth=Bearer {token}\x01\x01".encode()
    with imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls, timeout=10) as imap:
        if lifetime > 0:
            imap.authenticate("OAUTHBEARER", lambda challenge: b"\x01" if challenge else response)
            assert imap.select("INBOX")[0] == "OK"
        else:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                imap.authenticate("OAUTHBEARER", lambda c: b"\x01" if c else response)


def test_passwords_still_work_and_tokens_are_no_passwords(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    with imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls, timeout=10) as imap:
        imap.login(OTHER_USER, USERS[OTHER_USER])
        assert imap.select("INBOX")[0] == "OK"
    with (
        imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls, timeout=10) as imap,
        pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"),
    ):
        imap.login(IMAP_USER, oauth.access_token(IMAP_USER))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        _imap_xoauth2(server, tls, OTHER_USER, USERS[OTHER_USER])


# -- POP3 ------------------------------------------------------------------------------------


def test_pop3_token_logs_in_and_lists(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext
) -> None:
    server.deliver(POP_USER, _message("Pedido por POP"))
    tokens = _authorize(oauth, POP_USER)
    pop, answer = _pop3_xoauth2(server, tls, POP_USER, tokens.access_token)
    try:
        assert answer.startswith(b"+OK")
        assert pop.stat()[0] == 1
    finally:
        pop.quit()


@pytest.mark.parametrize("kind", ["expired", "forged"])
def test_pop3_bad_token_is_refused(
    oauth: OAuthServer, server: MailServer, tls: ssl.SSLContext, kind: str
) -> None:
    if kind == "expired":
        token = oauth.access_token(POP_USER, lifetime=-60)
    else:
        token = oauth.access_token(POP_USER, secret=b"x" * 32)
    pop, answer = _pop3_xoauth2(server, tls, POP_USER, token)
    try:
        assert answer.startswith(b"-ERR [AUTH]")
    finally:
        pop.close()


# -- SMTP through Postfix ----------------------------------------------------------------------


def _smtp(outbox: AuthSmtpServer) -> smtplib.SMTP_SSL:
    tls = ssl.create_default_context(cafile=str(outbox.ca_file))
    return smtplib.SMTP_SSL("127.0.0.1", outbox.ssl_port, context=tls, timeout=15)


def _smtp_xoauth2(smtp: smtplib.SMTP, user: str, token: str) -> tuple[int, bytes]:
    response = _sasl_bytes(user, token).decode()
    # smtplib sends the first answer with AUTH (initial response) and base64-encodes each one;
    # a refused token gets 334 <JSON error>, which the empty answer acknowledges.
    return smtp.auth("XOAUTH2", lambda challenge=None: "" if challenge else response)


def test_smtp_token_sends_through_postfix(oauth: OAuthServer, outbox: AuthSmtpServer) -> None:
    tokens = _authorize(oauth, SMTP_USER)
    subject = f"Resposta {uuid.uuid4().hex}"
    with _smtp(outbox) as smtp:
        smtp.ehlo("mxdesk.example")
        assert "XOAUTH2" in smtp.esmtp_features["auth"].split()
        assert _smtp_xoauth2(smtp, SMTP_USER, tokens.access_token)[0] == 235
        message = f"From: {SMTP_USER}\r\nTo: c@cliente.example\r\nSubject: {subject}\r\n\r\nOi\r\n"
        smtp.sendmail(SMTP_USER, ["c@cliente.example"], message.encode())
    assert len(outbox.wait_messages(1, containing=subject.encode())) == 1


@pytest.mark.parametrize("kind", ["expired", "forged"])
def test_smtp_bad_token_is_refused_with_535(
    oauth: OAuthServer, outbox: AuthSmtpServer, kind: str
) -> None:
    if kind == "expired":
        token = oauth.access_token(SMTP_USER, lifetime=-60)
    else:
        token = oauth.access_token(SMTP_USER, secret=b"x" * 32)
    with _smtp(outbox) as smtp:
        smtp.ehlo("mxdesk.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            _smtp_xoauth2(smtp, SMTP_USER, token)
    assert caught.value.smtp_code == 535


def test_smtp_password_still_works(outbox: AuthSmtpServer) -> None:
    with _smtp(outbox) as smtp:
        assert smtp.login(SMTP_USER, "s3nha")[0] == 235
