"""The Dovecot mailbox the fetcher tests rely on behaves like a company's IMAP/POP3 server."""

from __future__ import annotations

import imaplib
import poplib
import ssl
import uuid
from collections.abc import Iterator

import pytest
from dovecot_mail import MailServer, mail_server

DOMAIN = "empresa.example"
# One mailbox per test, so that the tests share a server but not what they count.
USERS = {
    f"{name}@{DOMAIN}": f"s3nha:{name}"  # a ':' in a password must work
    for name in ("suporte", "pop", "lido", "validade", "kick", "senha", "pastas", "longa")
}

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def server() -> Iterator[MailServer]:
    yield from mail_server(USERS)


@pytest.fixture(scope="module")
def tls(server: MailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def _address(name: str) -> str:
    return f"{name}@{DOMAIN}"


def _message(subject: str, body: str = "Olá, preciso de ajuda.") -> bytes:
    head = (
        f"From: Cliente <cliente@cliente.example>\r\nTo: suporte@{DOMAIN}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@cliente.example>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    )
    return f"{head}\r\n{body}\r\n".encode()


def _imaps(server: MailServer, tls: ssl.SSLContext, name: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls, timeout=10)
    imap.login(_address(name), USERS[_address(name)])
    return imap


def _pop3s(server: MailServer, tls: ssl.SSLContext, name: str) -> poplib.POP3_SSL:
    pop = poplib.POP3_SSL(server.host, server.pop3s_port, context=tls, timeout=10)
    pop.user(_address(name))
    pop.pass_(USERS[_address(name)])
    return pop


def _uidl(pop: poplib.POP3) -> list[bytes]:
    """The unique ids of a UIDL listing (its lines are b"<number> <uidl>")."""
    return [line.split()[1] for line in pop.uidl()[1]]


def test_imaps_fetch_with_peek_returns_the_message_and_leaves_it_unseen(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    message = _message("Pedido 1")
    server.deliver(_address("suporte"), message)
    [uid] = server.uids(_address("suporte"))
    with _imaps(server, tls, "suporte") as imap:
        typ, count = imap.select("INBOX")
        assert (typ, count) == ("OK", [b"1"])
        typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == message
        typ, data = imap.uid("FETCH", str(uid), "(FLAGS)")
        assert b"\\Seen" not in data[0]
    assert server.status(_address("suporte"))["messages"] == 1


def test_imap_starttls_verifies_against_the_ca(server: MailServer, tls: ssl.SSLContext) -> None:
    with imaplib.IMAP4(server.host, server.imap_port, timeout=10) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=tls)
        imap.login(_address("suporte"), USERS[_address("suporte")])
        assert imap.select("INBOX")[0] == "OK"


def test_a_client_without_the_ca_refuses_the_certificate(server: MailServer) -> None:
    # An explicit context: without one, imaplib and poplib verify nothing at all.
    system_cas = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=system_cas, timeout=10)


def test_pop3s_lists_and_retrieves(server: MailServer, tls: ssl.SSLContext) -> None:
    message = _message("Pedido por POP")
    server.deliver(_address("pop"), message)
    pop = _pop3s(server, tls, "pop")
    try:
        assert len(_uidl(pop)) == 1
        lines = pop.retr(1)[1]
        # POP3 hands over lines without their CRLF (and with dot-stuffing undone).
        assert b"\r\n".join(lines) + b"\r\n" == message
    finally:
        pop.quit()


def test_pop3_stls_verifies_against_the_ca(server: MailServer, tls: ssl.SSLContext) -> None:
    pop = poplib.POP3(server.host, server.pop3_port, timeout=10)
    try:
        assert "STLS" in pop.capa()
        pop.stls(context=tls)
        pop.user(_address("pop"))
        pop.pass_(USERS[_address("pop")])
        assert pop.stat()[0] >= 0
    finally:
        pop.quit()


def test_a_message_marked_seen_is_still_listed(server: MailServer, tls: ssl.SSLContext) -> None:
    user = _address("lido")
    server.deliver(user, _message("Já lido no webmail"))
    server.set_flags(user, "\\Seen")
    pop = _pop3s(server, tls, "lido")
    try:
        assert len(_uidl(pop)) == 1
    finally:
        pop.quit()
    with _imaps(server, tls, "lido") as imap:
        imap.select("INBOX", readonly=True)
        # A fetcher that searched UNSEEN would never see it.
        assert imap.uid("SEARCH", "UNSEEN")[1] == [b""]
        assert imap.uid("SEARCH", "ALL")[1] == [b"1"]


def test_change_uidvalidity_shows_at_the_next_select(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    user = _address("validade")
    server.deliver(user, _message("Antes da mudança"))
    with _imaps(server, tls, "validade") as imap:
        imap.select("INBOX")
        before = int(imap.response("UIDVALIDITY")[1][0])
    pop = _pop3s(server, tls, "validade")
    uidls_before = _uidl(pop)
    pop.quit()

    server.change_uidvalidity(user, before + 1000)

    assert server.status(user)["uidvalidity"] == before + 1000
    with _imaps(server, tls, "validade") as imap:
        imap.select("INBOX")
        assert int(imap.response("UIDVALIDITY")[1][0]) == before + 1000
    pop = _pop3s(server, tls, "validade")
    # Dovecot's UIDLs carry the UIDVALIDITY: a POP3 fetcher sees every message as new.
    assert _uidl(pop) != uidls_before
    pop.quit()


def test_kick_drops_an_open_imap_session(server: MailServer, tls: ssl.SSLContext) -> None:
    imap = _imaps(server, tls, "kick")
    try:
        imap.select("INBOX")
        server.kick(_address("kick"))
        with pytest.raises(imaplib.IMAP4.abort):
            imap.noop()
    finally:
        # Not `with`: on Python 3.11 its LOGOUT raises on the dead connection.
        imap.shutdown()


def _login_answer(server: MailServer, tls: ssl.SSLContext, user: str, password: str) -> str:
    """ "OK", or the text of the server's NO to LOGIN."""
    with imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls, timeout=10) as imap:
        try:
            return imap.login(user, password)[0]
        except imaplib.IMAP4.error as e:
            return str(e)


def test_a_wrong_password_fails_and_set_password_applies_at_the_next_login(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    user = _address("senha")
    assert "[AUTHENTICATIONFAILED]" in _login_answer(server, tls, user, "errada")
    # No other test logs in as this user, so its password is not set back.
    server.set_password(user, "nova senha")
    assert "[AUTHENTICATIONFAILED]" in _login_answer(server, tls, user, USERS[user])
    assert _login_answer(server, tls, user, "nova senha") == "OK"


def test_a_non_ascii_folder_is_selectable_by_its_modified_utf7_name(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    server.deliver(_address("pastas"), _message("Na pasta"), folder="Suporte/Ação")
    assert server.uids(_address("pastas"), "Suporte/Ação") == [1]
    with _imaps(server, tls, "pastas") as imap:
        listed = imap.list()[1]
        # RFC 3501 §5.1.3: "çã" is UTF-16 00E7 00E3, base64 "AOcA4w" between '&' and '-'.
        assert any(b'"/" Suporte/A&AOcA4w-o' in line for line in listed if isinstance(line, bytes))
        assert imap.select('"Suporte/A&AOcA4w-o"') == ("OK", [b"1"])


def test_a_10000_byte_line_arrives_whole_but_poplib_refuses_it(
    server: MailServer, tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_line = "x" * 10_000
    server.deliver(_address("longa"), _message("Linha longa", long_line))
    pop = _pop3s(server, tls, "longa")
    try:
        # The trap the fetcher must avoid: poplib gives up on any line over 2,048 bytes.
        with pytest.raises(poplib.error_proto, match="line too long"):
            pop.retr(1)
    finally:
        pop.close()
    monkeypatch.setattr(poplib, "_MAXLINE", 20_000)
    pop = _pop3s(server, tls, "longa")
    try:
        assert long_line.encode() in pop.retr(1)[1]
    finally:
        pop.quit()
