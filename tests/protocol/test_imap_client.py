"""The IMAP client against a real Dovecot, and against tiny scripted servers for what Dovecot
never does (stalling mid-literal, garbage, BYE to IDLE, XOAUTH2)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import wait_for
from daemons import free_port
from dovecot_mail import MailServer, mail_server
from tls_files import served_at_another_address

from mxdesk.gateway.fetch.errors import (
    AuthFailed,
    CommandFailed,
    ConnectionLost,
    FetchError,
    FetchTimeout,
    FolderFailed,
    ProtocolError,
    TlsFailed,
)
from mxdesk.gateway.fetch.imap import FolderStatus, ImapClient

DOMAIN = "empresa.example"
NAMES = (
    "tls", "starttls", "plain", "aspas", "errada", "pastas", "bytes", "apagar", "mover", "busca",
    "idle", "quieto", "kick", "noop",
)  # fmt: skip
# One mailbox per test: the tests share a server, not what they count.
USERS = {f"{name}@{DOMAIN}": f"s3nha:{name}" for name in NAMES}
# Needs a literal: a quote, a backslash and non-ASCII.
USERS[f"aspas@{DOMAIN}"] = 'a"b\\c çã'
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[MailServer]:
    yield from mail_server(USERS)


@pytest.fixture(scope="module")
def tls(server: MailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def _user(name: str) -> str:
    return f"{name}@{DOMAIN}"


def _message(subject: str, body: bytes = b"Ol\xc3\xa1, preciso de ajuda.") -> bytes:
    head = (
        f"From: Cliente <cliente@cliente.example>\r\nTo: suporte@{DOMAIN}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@cliente.example>\r\n"
    ).encode()
    return head + b"\r\n" + body + b"\r\n"


@asynccontextmanager
async def _session(
    srv: MailServer, tls: ssl.SSLContext, name: str, folder: str | None = "INBOX"
) -> AsyncIterator[ImapClient]:
    client = await ImapClient.connect(srv.host, srv.imaps_port, "ssl", tls, TIMEOUT)
    try:
        await client.login(_user(name), USERS[_user(name)])
        if folder is not None:
            await client.select(folder)
        yield client
    finally:
        await client.logout()


async def _deliver(srv: MailServer, name: str, message: bytes, folder: str = "INBOX") -> None:
    # doveadm is a blocking subprocess: off the event loop, so the client keeps reading.
    await asyncio.to_thread(srv.deliver, _user(name), message, folder)


# -- connecting and logging in --------------------------------------------------------------


@pytest.mark.parametrize("security", ["ssl", "starttls", "none"])
async def test_connect_login_and_select(
    server: MailServer, tls: ssl.SSLContext, security: str
) -> None:
    name = {"ssl": "tls", "starttls": "starttls", "none": "plain"}[security]
    await _deliver(server, name, _message("Pedido"))
    port = server.imaps_port if security == "ssl" else server.imap_port
    client = await ImapClient.connect(server.host, port, security, tls, TIMEOUT)
    try:
        # After STARTTLS the capabilities are asked again: STARTTLS is no longer offered.
        assert ("STARTTLS" in client.capabilities) == (security == "none")
        await client.login(_user(name), USERS[_user(name)])
        assert {"IDLE", "UIDPLUS", "MOVE"} <= client.capabilities
        st = server.status(_user(name))
        assert await client.select("INBOX") == FolderStatus(st["uidvalidity"], st["uidnext"], 1)
    finally:
        await client.logout()


async def test_the_host_name_is_verified_as_sent(
    server: MailServer, tls: ssl.SSLContext, tmp_path: Path
) -> None:
    client = await ImapClient.connect("localhost", server.imaps_port, "ssl", tls, TIMEOUT)
    client.close()
    async with served_at_another_address(tmp_path, GREETING) as (trusting, port):
        with pytest.raises(TlsFailed, match=r"^127\.0\.0\.2: certificate verify failed: IP"):
            await ImapClient.connect("127.0.0.2", port, "ssl", trusting, TIMEOUT)


async def test_a_password_with_a_quote_backslash_and_accents(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    async with _session(server, tls, "aspas") as client:
        assert (await client.select("INBOX")).exists == 0


async def test_the_system_cas_refuse_the_test_certificate(server: MailServer) -> None:
    with pytest.raises(TlsFailed, match=r"^127\.0\.0\.1: certificate verify failed: "):
        await ImapClient.connect(server.host, server.imaps_port, "ssl", None, TIMEOUT)
    with pytest.raises(TlsFailed, match=r"^127\.0\.0\.1: certificate verify failed: "):
        await ImapClient.connect(server.host, server.imap_port, "starttls", None, TIMEOUT)


async def test_tls_to_the_plain_port_fails_as_tls(server: MailServer, tls: ssl.SSLContext) -> None:
    with pytest.raises(TlsFailed, match=r"^127\.0\.0\.1: TLS handshake failed: "):
        await ImapClient.connect(server.host, server.imap_port, "ssl", tls, TIMEOUT)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # localhost: ::1 and 127.0.0.1
async def test_a_closed_port_is_a_one_line_error(host: str) -> None:
    port = free_port()
    with pytest.raises(FetchError, match=rf"^{host}:{port}: connection refused$"):
        await ImapClient.connect(host, port, "ssl", None, TIMEOUT)


async def test_a_wrong_password_is_auth_failed_without_the_password(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    client = await ImapClient.connect(server.host, server.imaps_port, "ssl", tls, TIMEOUT)
    try:
        with pytest.raises(
            AuthFailed, match=r"\[AUTHENTICATIONFAILED\] Authentication failed"
        ) as e:
            await client.login(_user("errada"), "senha-errada-123")
        assert "senha-errada-123" not in str(e.value)
    finally:
        await client.logout()


# -- folders --------------------------------------------------------------------------------


async def test_folders_missing_non_ascii_created_twice(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    await _deliver(server, "pastas", _message("Na pasta"), folder="Suporte/Ação")
    async with _session(server, tls, "pastas") as client:
        # Dovecot 2.3 gives no [NONEXISTENT] code here, and names the folder in UTF-8.
        with pytest.raises(FolderFailed, match="SELECT refused: NO Mailbox doesn't exist: Não"):
            await client.select("Não existe")
        # A refused SELECT leaves the session usable.
        assert (await client.select("Suporte/Ação", readonly=True)).exists == 1
        await client.create("Arquivo/Ação")
        await client.create("Arquivo/Ação")  # already there: fine
        await client.select("Arquivo/Ação")


# -- fetching -------------------------------------------------------------------------------


async def test_fetch_returns_the_exact_bytes_and_leaves_messages_unseen(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    long_line = _message("Linha longa", b"x" * 10_000)
    # Not NUL: Dovecot stores it as 0x80.
    eight_bit = _message("8 bits", "Atenção: não recebi a fatura.\r\n\xff\x80".encode("latin-1"))
    without_id = b"Subject: sem id\r\n\r\noi\r\n"
    for message in (long_line, eight_bit, without_id):
        await _deliver(server, "bytes", message)
    before = time.time()
    async with _session(server, tls, "bytes") as client:
        uids = await client.search_uids("ALL")
        assert uids == [1, 2, 3]
        infos = await client.fetch_info([*uids, 99])
        assert [(i.uid, i.size) for i in infos] == [
            (1, len(long_line)),
            (2, len(eight_bit)),
            (3, len(without_id)),
        ]
        assert infos[0].message_id.startswith("<") and infos[0].message_id.endswith(">")
        assert infos[2].message_id == ""
        assert all(before - 60 < i.internaldate < time.time() + 60 for i in infos)
        got = [(uid, body) async for uid, body in client.fetch_bodies([3, 1, 2, 99])]
        assert got == [(1, long_line), (2, eight_bit), (3, without_id)]
        assert await client.search_uids("UNSEEN") == [1, 2, 3]


async def test_search_by_uid_and_date(server: MailServer, tls: ssl.SSLContext) -> None:
    for n in range(3):
        await _deliver(server, "busca", _message(f"Pedido {n}"))
    async with _session(server, tls, "busca") as client:
        assert await client.search_uids("UID 2:*") == [2, 3]
        # "N:*" always matches the highest UID: the caller filters.
        assert await client.search_uids("UID 120:*") == [3]
        assert await client.search_uids("SINCE 1-Jan-2000") == [1, 2, 3]
        with pytest.raises(CommandFailed, match=r"UID SEARCH refused: BAD"):
            await client.search_uids("NONSENSE")


async def test_uid_expunge_removes_only_the_given_uid(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    user = _user("apagar")
    for n in range(3):
        await _deliver(server, "apagar", _message(f"Pedido {n}"))
    async with _session(server, tls, "apagar") as client:
        await client.add_flags([1], "\\Deleted \\Seen")
        # Another client (a webmail) marks message 2 for deletion and does not expunge.
        await asyncio.to_thread(server.set_flags, user, "\\Deleted", uid=2)
        await client.uid_expunge([1])
        assert server.uids(user) == [2, 3]


async def test_move_to_another_folder(server: MailServer, tls: ssl.SSLContext) -> None:
    user = _user("mover")
    for n in range(3):
        await _deliver(server, "mover", _message(f"Pedido {n}"))
    async with _session(server, tls, "mover") as client:
        await client.create("Tratados/Ação")
        await client.move([1, 3], "Tratados/Ação")
        assert server.uids(user) == [2]
        assert len(server.uids(user, "Tratados/Ação")) == 2


# -- waiting for mail -----------------------------------------------------------------------


def _idling(client: ImapClient) -> bool:
    # A sync point, not an assertion: the IDLE command is on its way.
    return client._stream.doing == "IDLE"


async def test_idle_returns_true_soon_after_a_delivery(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    async with _session(server, tls, "idle") as client:
        waiting = asyncio.create_task(client.idle(30))
        await wait_for(lambda: _idling(client), what="IDLE sent")
        await _deliver(server, "idle", _message("Novo"))
        delivered = time.monotonic()
        assert await asyncio.wait_for(waiting, 10) is True
        assert time.monotonic() - delivered < 2.0
        # The IDLE is over (DONE, tagged OK): the session goes on.
        assert await client.search_uids("ALL") == [1]


async def test_idle_returns_false_when_nothing_comes(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    async with _session(server, tls, "quieto") as client:
        started = time.monotonic()
        assert await client.idle(0.5) is False
        assert 0.5 <= time.monotonic() - started < 2.0
        assert await client.noop() is False


async def test_noop_reports_new_mail(server: MailServer, tls: ssl.SSLContext) -> None:
    async with _session(server, tls, "noop") as client:
        await _deliver(server, "noop", _message("Novo"))
        assert await client.noop() is True
        assert await client.noop() is False
        # Mail reported during another command is not lost for the next idle().
        await _deliver(server, "noop", _message("Outro"))
        await client.search_uids("ALL")
        assert client.exists_seen
        assert await client.idle(30) is True


async def test_a_kick_during_idle_is_connection_lost_at_once(
    server: MailServer, tls: ssl.SSLContext
) -> None:
    async with _session(server, tls, "kick") as client:
        waiting = asyncio.create_task(client.idle(60))
        await wait_for(lambda: _idling(client), what="IDLE sent")
        await asyncio.to_thread(server.kick, _user("kick"))
        kicked = time.monotonic()
        with pytest.raises(ConnectionLost, match="BYE"):
            await asyncio.wait_for(waiting, TIMEOUT)
        assert time.monotonic() - kicked < 2.0
        with pytest.raises(ConnectionLost):
            await client.noop()
    # logout() on the dead session (by _session) did not raise.


# -- scripted servers -----------------------------------------------------------------------

HANG = b"<hang>"
GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] ready\r\n"
LOGGED_IN = ("LOGIN", b"{tag} OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] Logged in\r\n")
SELECTED = (
    "SELECT",
    b"* 2 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 9] ok\r\n{tag} OK [READ-WRITE] ok\r\n",
)


class ScriptedServer:
    """Answers each line the client sends with the next (expected start, answer) of a script;
    "{tag}" is the last command's tag, an answer ending in HANG stops the server talking."""

    def __init__(self, script: list[tuple[str, bytes]], greeting: bytes = GREETING) -> None:
        self.script, self.greeting = list(script), greeting
        self.received: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()

    async def connect(self, timeout: float = TIMEOUT, security: str = "none") -> ImapClient:
        return await ImapClient.connect("127.0.0.1", self.port, security, None, timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        writer.write(self.greeting)
        tag = ""
        while raw := await reader.readline():
            line = raw.decode().rstrip("\r\n")
            first, _, rest = line.partition(" ")
            if first.startswith("A") and first[1:].isdigit():
                tag, line = first, rest
            self.received.append(line)
            expected, answer = self.script.pop(0) if self.script else ("", b"{tag} BAD no\r\n")
            if not line.startswith(expected):
                answer = b"{tag} BAD unexpected\r\n"
            writer.write(answer.removesuffix(HANG).replace(b"{tag}", tag.encode()))
            await writer.drain()
            if answer.endswith(HANG):
                await asyncio.Event().wait()


async def test_a_server_that_stalls_mid_literal_is_a_timeout() -> None:
    stalled = ("UID FETCH", b"* 1 FETCH (UID 7 BODY[] {100}\r\n" + b"x" * 10 + HANG)
    async with ScriptedServer([LOGGED_IN, SELECTED, stalled]) as fake:
        client = await fake.connect(timeout=0.5)
        await client.login("u", "p")
        await client.select("INBOX")
        started = time.monotonic()
        with pytest.raises(FetchTimeout, match=r"no answer to UID FETCH for 0\.5s"):
            async for _ in client.fetch_bodies([7]):
                pass
        assert 0.5 <= time.monotonic() - started < 1.5


async def test_garbage_is_a_protocol_error() -> None:
    async with ScriptedServer([("LOGIN", b"HTTP/1.1 400 Bad Request\r\n")]) as fake:
        client = await fake.connect()
        with pytest.raises(ProtocolError, match=r"cannot parse 'HTTP/1\.1 400 Bad Request'"):
            await client.login("u", "p")
    async with ScriptedServer([], greeting=b"SSH-2.0-OpenSSH_9.2\r\n") as fake:
        with pytest.raises(ProtocolError):
            await fake.connect()


async def test_bye_in_answer_to_idle_is_connection_lost_at_once() -> None:
    bye = ("IDLE", b"* BYE Server shutting down\r\n" + HANG)
    async with ScriptedServer([LOGGED_IN, SELECTED, bye]) as fake:
        client = await fake.connect(timeout=5)
        await client.login("u", "p")
        await client.select("INBOX")
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="BYE Server shutting down"):
            await client.idle(60)
        assert time.monotonic() - started < 1.0


async def test_fetch_info_skips_unsolicited_flag_updates() -> None:
    infos = (
        "UID FETCH 7:8 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
        b"* 1 FETCH (FLAGS (\\Seen))\r\n"
        b'* 2 FETCH (UID 8 RFC822.SIZE 120 INTERNALDATE "02-Dec-2026 10:00:00 +0000" '
        b"BODY[HEADER.FIELDS (MESSAGE-ID)] {25}\r\nMessage-ID:\r\n <x@y.z>\r\n\r\n)\r\n"
        b"{tag} OK done\r\n",
    )
    async with ScriptedServer([LOGGED_IN, SELECTED, infos]) as fake:
        client = await fake.connect()
        await client.login("u", "p")
        await client.select("INBOX")
        [info] = await client.fetch_info([8, 7])
        assert (info.uid, info.size, info.message_id) == (8, 120, "<x@y.z>")
        client.close()


async def test_starttls_required_but_not_offered() -> None:
    async with ScriptedServer([]) as fake:
        with pytest.raises(FetchError, match="does not offer STARTTLS"):
            await fake.connect(security="starttls")


async def test_logindisabled_uses_authenticate_plain() -> None:
    plain = base64.b64encode(b"\0user\0p\xc3\xa1ss").decode()
    script = [
        ("AUTHENTICATE PLAIN", b"+ \r\n"),
        (plain, b"{tag} OK Logged in\r\n"),
        ("CAPABILITY", b"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n"),
    ]
    greeting = b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN] ready\r\n"
    async with ScriptedServer(script, greeting) as fake:
        client = await fake.connect()
        await client.login("user", "páss")
        assert client.capabilities == {"IMAP4REV1", "IDLE"}
        assert fake.received == ["AUTHENTICATE PLAIN", plain, "CAPABILITY"]
        client.close()


async def test_login_sends_literals_after_the_servers_go_ahead() -> None:
    script = [
        ("LOGIN {5}", b"+ go\r\n"),
        ("joão {5}", b"+ go\r\n"),
        ('p"w\\x', b"{tag} OK [CAPABILITY IMAP4rev1] Logged in\r\n"),
    ]
    async with ScriptedServer(script) as fake:
        client = await fake.connect()
        await client.login("joão", 'p"w\\x')
        assert fake.received == ["LOGIN {5}", "joão {5}", 'p"w\\x']
        client.close()


async def test_a_literal_refused_by_the_server_is_auth_failed() -> None:
    script = [("LOGIN", b"{tag} NO [LIMIT] too long\r\n")]
    async with ScriptedServer(script) as fake:
        client = await fake.connect()
        with pytest.raises(AuthFailed, match=r"LOGIN refused: NO \[LIMIT\] too long"):
            await client.login("user", "çççç")
        client.close()


XOAUTH2 = "IMAP4rev1 AUTH=XOAUTH2 SASL-IR"
SASL = base64.b64encode(b"user=u@x.example\x01auth=Bearer tok3n\x01\x01").decode()


async def test_xoauth2_with_an_initial_response_and_the_error_challenge() -> None:
    error = base64.b64encode(b'{"status":"401","schemes":"Bearer","scope":"s"}').decode()
    script = [
        (f"AUTHENTICATE XOAUTH2 {SASL}", f"+ {error}\r\n".encode()),
        ("", b"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"),
    ]
    async with ScriptedServer(script, f"* OK [CAPABILITY {XOAUTH2}] hi\r\n".encode()) as fake:
        client = await fake.connect()
        with pytest.raises(AuthFailed, match=r"Invalid credentials.*status 401") as e:
            await client.authenticate_xoauth2("u@x.example", "tok3n")
        assert "tok3n" not in str(e.value)
        assert fake.received[-1] == ""  # the empty answer to the error challenge
        client.close()


async def test_xoauth2_without_sasl_ir_answers_the_empty_challenge() -> None:
    script = [
        ("AUTHENTICATE XOAUTH2", b"+ \r\n"),
        (SASL, b"{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    ]
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] hi\r\n"
    async with ScriptedServer(script, greeting) as fake:
        client = await fake.connect()
        await client.authenticate_xoauth2("u@x.example", "tok3n")
        assert fake.received == ["AUTHENTICATE XOAUTH2", SASL]
        assert "IDLE" in client.capabilities
        client.close()


async def test_move_without_move_copies_flags_and_expunges() -> None:
    ok = b"{tag} OK done\r\n"
    script = [LOGGED_IN, SELECTED, ("UID COPY", ok), ("UID STORE", ok), ("UID EXPUNGE", ok)]
    async with ScriptedServer(script) as fake:
        client = await fake.connect()
        await client.login("u", "p")
        await client.select("INBOX")
        await client.move([7, 8], "Tratados")
        assert fake.received[2:] == [
            'UID COPY 7:8 "Tratados"',
            "UID STORE 7:8 +FLAGS.SILENT (\\Deleted)",
            "UID EXPUNGE 7:8",
        ]
        client.close()
