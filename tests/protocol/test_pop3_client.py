"""The asyncio POP3 client against a real Dovecot and against small broken servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from daemons import free_port
from dovecot_mail import MailServer, mail_server
from tls_files import served_at_another_address

from mxdesk.gateway.fetch.errors import (
    AuthFailed,
    CommandFailed,
    ConnectionLost,
    FetchError,
    FetchTimeout,
    ProtocolError,
    TlsFailed,
)
from mxdesk.gateway.fetch.pop3 import Pop3Client

DOMAIN = "empresa.example"
# One mailbox per test: the tests share a server, not what they count. Passwords with spaces,
# ':' and non-ASCII letters must survive PASS.
USERS = {
    f"{name}@{DOMAIN}": f"s3nha com espaço:{name}:ção"
    for name in ("ssl", "stls", "plain", "wrong", "long", "keep", "gone", "big", "huge", "validity")
}
UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")


@pytest.fixture(scope="module")
def server() -> Iterator[MailServer]:
    yield from mail_server(USERS)


@pytest.fixture(scope="module")
def tls(server: MailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def _address(name: str) -> str:
    return f"{name}@{DOMAIN}"


def _message(subject: str, body: bytes = "Olá, preciso de ajuda.\r\n".encode()) -> bytes:
    head = (
        f"From: Cliente <cliente@cliente.example>\r\nTo: suporte@{DOMAIN}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@cliente.example>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return head.encode() + body


async def _login(
    server: MailServer, tls: ssl.SSLContext, name: str, security: str = "ssl"
) -> Pop3Client:
    port = server.pop3s_port if security == "ssl" else server.pop3_port
    client = await Pop3Client.connect(server.host, port, security, tls, timeout=10)
    await client.login(_address(name), USERS[_address(name)])
    return client


# -- Dovecot ---------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize(("security", "name"), [("ssl", "ssl"), ("starttls", "stls")])
async def test_tls_verified_against_the_ca(
    server: MailServer, tls: ssl.SSLContext, security: str, name: str
) -> None:
    message = _message("Por TLS")
    server.deliver(_address(name), message)
    client = await _login(server, tls, name, security)
    assert {"UIDL", "USER"} <= client.capabilities
    assert "STLS" not in client.capabilities  # CAPA asked again after STLS
    assert await client.stat() == (1, len(message))
    await client.quit()


@pytest.mark.real
async def test_plain_port_without_tls(server: MailServer) -> None:
    server.deliver(_address("plain"), _message("Sem TLS"))
    client = await Pop3Client.connect(server.host, server.pop3_port, "none", None, timeout=10)
    assert {"STLS", "UIDL", "TOP"} <= client.capabilities
    assert {"PLAIN", "LOGIN"} <= client.sasl
    await client.login(_address("plain"), USERS[_address("plain")])
    assert (await client.stat())[0] == 1
    await client.quit()


@pytest.mark.real
@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_the_default_context_refuses_a_certificate_of_a_private_ca(
    server: MailServer, security: str
) -> None:
    port = server.pop3s_port if security == "ssl" else server.pop3_port
    with pytest.raises(TlsFailed) as failed:
        await Pop3Client.connect(server.host, port, security, None, timeout=10)
    assert f"{server.host}:{port}" in str(failed.value)
    # The harness signs the server's certificate with its own CA, which the system lacks.
    assert "certificate not accepted: unable to get local issuer certificate" in str(failed.value)


async def test_the_host_name_is_verified_as_sent(tmp_path: Path) -> None:
    async with served_at_another_address(tmp_path, b"+OK ready\r\n") as (trusting, port):
        with pytest.raises(TlsFailed, match=r"IP address mismatch"):
            await Pop3Client.connect("127.0.0.2", port, "ssl", trusting, timeout=10)


@pytest.mark.real
async def test_a_wrong_password_is_auth_failed_with_dovecots_text(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    client = await Pop3Client.connect(server.host, server.pop3s_port, "ssl", tls, timeout=10)
    try:
        with pytest.raises(AuthFailed, match=re.escape("[AUTH] Authentication failed.")) as failed:
            await client.login(_address("wrong"), "errada com espaço")
        assert "errada" not in str(failed.value)
    finally:
        client.close()


@pytest.mark.real
async def test_uidl_list_and_retr_give_the_exact_bytes_of_long_lines_and_8bit_bodies(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    user = _address("long")
    ten_thousand = _message("Linha de 10.000", b"x" * 10_000 + b"\r\n")
    body = (
        b"y" * 100_000
        + b"\r\n"
        + "Olá, ação já\r\n".encode()
        + b"\xe9t\xe9 em Latin-1\r\n"
        + b".\r\n..dois pontos\r\n.um ponto\r\n.\r\nfim\r\n"
    )
    hundred_thousand = _message("Linha de 100.000", body)
    server.deliver(user, ten_thousand)
    server.deliver(user, hundred_thousand)
    client = await _login(server, tls, "long")
    try:
        uidl = await client.uidl()
        assert sorted(uidl) == [1, 2]
        assert len(set(uidl.values())) == 2
        assert all(UNIQUE_ID.fullmatch(uid) for uid in uidl.values())
        assert await client.sizes() == {1: len(ten_thousand), 2: len(hundred_thousand)}
        assert await client.stat() == (2, len(ten_thousand) + len(hundred_thousand))
        assert await client.retr(1, len(ten_thousand)) == ten_thousand
        assert await client.retr(2, len(hundred_thousand)) == hundred_thousand
        head = hundred_thousand[: hundred_thousand.index(b"\r\n\r\n") + 4]
        assert await client.top(2) == head  # the header and its blank line
    finally:
        await client.quit()


@pytest.mark.real
async def test_dele_without_quit_deletes_nothing(server: MailServer, tls: ssl.SSLContext) -> None:
    server.deliver(_address("keep"), _message("Fica"))
    client = await _login(server, tls, "keep")
    uidl = await client.uidl()
    await client.dele(1)
    client.close()
    client.close()  # never raises, even twice
    client = await _login(server, tls, "keep")
    assert await client.uidl() == uidl
    await client.quit()
    assert server.status(_address("keep"))["messages"] == 1


@pytest.mark.real
async def test_dele_then_quit_removes_the_message(server: MailServer, tls: ssl.SSLContext) -> None:
    server.deliver(_address("gone"), _message("Vai embora"))
    client = await _login(server, tls, "gone")
    await client.dele(1)
    await client.quit()
    assert server.status(_address("gone"))["messages"] == 0


@pytest.mark.real
@pytest.mark.parametrize("name", ["big", "huge"])
async def test_retr_over_max_size_fails_and_the_session_goes_on(
    server: MailServer, tls: ssl.SSLContext, name: str
) -> None:
    message = _message("Grande", b"z" * 100_000 + b"\r\n")
    server.deliver(_address(name), message)
    # "big" is one byte over; for "huge" the 100,000-byte line alone is over.
    limit = len(message) - 1 if name == "big" else 1000
    client = await _login(server, tls, name)
    try:
        with pytest.raises(CommandFailed, match=f"message 1 is larger than {limit} bytes"):
            await client.retr(1, limit)
        assert await client.stat() == (1, len(message))
        assert await client.retr(1, len(message)) == message  # at the bound
    finally:
        await client.quit()


@pytest.mark.real
async def test_uidls_change_with_the_uidvalidity(server: MailServer, tls: ssl.SSLContext) -> None:
    user = _address("validity")
    server.deliver(user, _message("Antes"))
    client = await _login(server, tls, "validity")
    before = await client.uidl()
    await client.quit()
    server.change_uidvalidity(user, server.status(user)["uidvalidity"] + 1000)
    client = await _login(server, tls, "validity")
    after = await client.uidl()
    await client.quit()
    # The same message under a new unique id: a fetcher keyed on UIDLs alone would fetch it
    # again, so it also guards by Message-ID.
    assert after.keys() == before.keys() == {1}
    assert after[1] != before[1]


async def test_connection_refused_is_one_line() -> None:
    port = free_port()
    with pytest.raises(FetchError, match=f"^127.0.0.1:{port}: connection refused$"):
        await Pop3Client.connect("127.0.0.1", port, "none", None, timeout=5)


# -- small broken servers --------------------------------------------------------------------

Reply = bytes | Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CAPA = b"+OK\r\nUSER\r\nUIDL\r\n.\r\n"


class FakePop3:
    """Answers each command line with replies[line] or replies[verb]; records what it got."""

    def __init__(self, replies: dict[str, Reply], eol: bytes = b"\r\n") -> None:
        self.eol = eol
        self.replies: dict[str, Reply] = {
            "CAPA": CAPA,
            "USER": b"+OK\r\n",
            "PASS": b"+OK Logged in.\r\n",
            "DELE": b"+OK Marked to be deleted.\r\n",
            "QUIT": b"+OK Bye\r\n",
            **replies,
        }
        self.received: list[str] = []
        self.sessions: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.append((task, writer))
        writer.write(b"+OK fake POP3 ready" + self.eol)
        with contextlib.suppress(ConnectionError):  # the client may hang up at any point
            async for raw in reader:
                line = raw.decode().removesuffix("\r\n")
                self.received.append(line)
                reply = self.replies.get(line) or self.replies.get(line.split(" ")[0].upper())
                if reply is None:
                    writer.write(b"-ERR unknown command\r\n")
                elif isinstance(reply, bytes):
                    writer.write(reply.replace(b"\r\n", self.eol))
                else:
                    await reply(reader, writer)
                if line == "QUIT":
                    break
        writer.close()


@contextlib.asynccontextmanager
async def fake_server(fake: FakePop3) -> AsyncIterator[int]:
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        # Each session ends before the test's loop does (a session still waiting would be
        # cancelled with the loop, and asyncio logs that as an error).
        for task, writer in fake.sessions:
            writer.transport.abort()
            await asyncio.wait_for(task, 5)


async def _fake_login(port: int, timeout: float = 10) -> Pop3Client:
    client = await Pop3Client.connect("127.0.0.1", port, "none", None, timeout)
    await client.login("ana", "s3nha")
    return client


async def _stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+OK 40 octets\r\nSubject: metade\r\n\r\nmeia ")
    await reader.read()  # silent until the client gives up


async def test_a_server_that_stalls_mid_message_times_out() -> None:
    async with fake_server(FakePop3({"RETR": _stall})) as port:
        client = await _fake_login(port, timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(FetchTimeout, match=re.escape("no data for 0.5 s")):
            await client.retr(1, 1000)
        assert 0.4 < loop.time() - started < 3
        with pytest.raises(ConnectionLost):  # the session is over, not out of step
            await client.stat()


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+OK\r\n")
    for _ in range(6):
        # The server's own pace is what is tested: 1.2 s in all, never 0.5 s of silence.
        await asyncio.sleep(0.2)
        writer.write(b"a" * 100)
    writer.write(b"\r\n.\r\n")


async def test_a_message_that_keeps_flowing_never_times_out() -> None:
    async with fake_server(FakePop3({"RETR": _trickle})) as port:
        client = await _fake_login(port, timeout=0.5)
        assert await client.retr(1, 1000) == b"a" * 600 + b"\r\n"
        await client.quit()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("STAT", b"* OK this is IMAP\r\n"),
        ("UIDL", b"+OK\r\n1 " + b"u" * 71 + b"\r\n.\r\n"),
        ("UIDL", b"+OK\r\n1 com espaco\r\n.\r\n"),
        ("UIDL", "+OK\r\n1 ação\r\n.\r\n".encode()),
        ("LIST", b"+OK\r\n1 big\r\n.\r\n"),
    ],
)
async def test_garbage_is_a_protocol_error(command: str, reply: bytes) -> None:
    async with fake_server(FakePop3({command: reply})) as port:
        client = await _fake_login(port)
        call = {"STAT": client.stat, "UIDL": client.uidl, "LIST": client.sizes}[command]
        with pytest.raises(ProtocolError):
            await call()
        with pytest.raises(ConnectionLost):
            await client.stat()


async def test_seventy_character_uidls_are_fine() -> None:
    uid = "".join(chr(c) for c in range(0x21, 0x7F))[:70]
    async with fake_server(FakePop3({"UIDL": f"+OK\r\n7 {uid}\r\n.\r\n".encode()})) as port:
        client = await _fake_login(port)
        assert await client.uidl() == {7: uid}
        await client.quit()


async def _half_and_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+OK\r\nSubject: metade\r\n")
    writer.close()


async def test_eof_mid_message_is_connection_lost() -> None:
    async with fake_server(FakePop3({"RETR": _half_and_hang_up})) as port:
        client = await _fake_login(port)
        with pytest.raises(ConnectionLost, match="closed the connection"):
            await client.retr(1, 1000)


async def test_a_server_with_bare_lf_line_ends_works() -> None:
    retr = b"+OK\r\nSubject: LF\r\n\r\n..um ponto\r\n...\r\nfim\r\n.\r\n"
    fake = FakePop3({"RETR": retr, "UIDL": b"+OK\r\n1 abc\r\n.\r\n"}, eol=b"\n")
    async with fake_server(fake) as port:
        client = await _fake_login(port)
        assert client.capabilities == {"USER", "UIDL"}
        assert await client.uidl() == {1: "abc"}
        assert await client.retr(1, 1000) == b"Subject: LF\r\n\r\n.um ponto\r\n..\r\nfim\r\n"
        await client.quit()


async def test_auth_plain_when_user_is_not_offered() -> None:
    fake = FakePop3({"CAPA": b"+OK\r\nSASL PLAIN\r\n.\r\n", "AUTH": b"+OK\r\n"})
    async with fake_server(fake) as port:
        client = await Pop3Client.connect("127.0.0.1", port, "none", None, timeout=10)
        await client.login("ana@empresa.example", "senha com espaço:ção")
        verb, mechanism, response = fake.received[-1].split(" ")
        assert (verb, mechanism) == ("AUTH", "PLAIN")
        assert base64.b64decode(response) == "\0ana@empresa.example\0senha com espaço:ção".encode()
        await client.quit()


def _xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


async def test_xoauth2_with_a_short_token_goes_in_the_auth_line() -> None:
    fake = FakePop3({f"AUTH XOAUTH2 {_xoauth2('ana', 'ya29.curto')}": b"+OK\r\n"})
    async with fake_server(fake) as port:
        client = await Pop3Client.connect("127.0.0.1", port, "none", None, timeout=10)
        await client.authenticate_xoauth2("ana", "ya29.curto")
        await client.quit()


async def test_a_refused_xoauth2_token_is_auth_failed_with_the_decoded_status() -> None:
    token = "ya29." + "t" * 1500  # real tokens overflow the 255-octet AUTH line (RFC 5034 §4)
    status = base64.b64encode(b'{"status":"401","schemes":"bearer"}')
    fake = FakePop3(
        {
            "AUTH XOAUTH2": b"+ \r\n",
            _xoauth2("ana", token): b"+ " + status + b"\r\n",
            "": b"-ERR [AUTH] Invalid credentials.\r\n",
        }
    )
    async with fake_server(fake) as port:
        client = await Pop3Client.connect("127.0.0.1", port, "none", None, timeout=10)
        with pytest.raises(AuthFailed) as failed:
            await client.authenticate_xoauth2("ana", token)
        assert '"status":"401"' in str(failed.value)
        assert "[AUTH] Invalid credentials." in str(failed.value)
        assert token not in str(failed.value)
        assert fake.received[-3:] == ["AUTH XOAUTH2", _xoauth2("ana", token), ""]
        client.close()


async def test_starttls_requires_stls() -> None:
    async with fake_server(FakePop3({})) as port:
        with pytest.raises(FetchError, match="does not offer STLS"):
            await Pop3Client.connect("127.0.0.1", port, "starttls", None, timeout=10)


async def test_quit_answered_err_is_command_failed() -> None:
    fake = FakePop3({"QUIT": b"-ERR [SYS/TEMP] Could not expunge\r\n"})
    async with fake_server(fake) as port:
        client = await _fake_login(port)
        await client.dele(1)
        with pytest.raises(CommandFailed, match=re.escape("QUIT: [SYS/TEMP] Could not expunge")):
            await client.quit()
