"""Property-based fuzzing of the MX listener's command handling, over a real loopback socket.

The gateway (its SMTP sessions with the real MxHandler, policy and spool; no store, no
verdicts) runs on an event loop in a thread; each example opens a session, sends random command
lines (and a message when DATA is accepted), and checks every reply. Bounded for CI:
derandomized, no example database, a fixed number of examples.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MAILBOX, make_config, provision
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mxdesk.gateway.service import GatewayService

FUZZ = settings(
    max_examples=500,
    deadline=timedelta(seconds=20),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# The replies after which the server closes: QUIT, a 421, and aiosmtpd's limit of five
# unknown commands (a 502 where RFC 5321 §3.8 would have 421).
ENDS_SESSION = ("221 ", "421 ", "502 5.5.1 Too many unrecognized commands")
REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])(.*)\r\n", re.DOTALL)
# RFC 5321 §4.2: the text of a reply is HT and printable ASCII (SMTPUTF8 allows UTF-8).
NOT_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
MAX_REPLY_LINE = 512


class ErrorLog(logging.Handler):
    """Keeps every error or traceback the gateway's session code logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        watched = record.name.startswith(("mail.log", "mxdesk.gateway", "asyncio"))
        if watched and (record.levelno >= logging.ERROR or record.exc_info):
            self.records.append(record)


def printable_records(
    make: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    """A log record factory that escapes the client's raw bytes (surrogate escapes) in a
    message: pytest-xdist cannot send them from a worker, and fails the whole run."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # the logging module reports a bad format itself
            return record
        if any("\ud800" <= c <= "\udfff" for c in message):
            record.msg, record.args = message.encode("utf-8", "backslashreplace").decode(), ()
        return record

    return factory


@dataclass
class Served:
    port: int
    errors: ErrorLog


@pytest.fixture(scope="module")
def gateway() -> Iterator[Served]:
    root = Path(tempfile.mkdtemp(prefix="mxf", dir="/tmp"))
    config = make_config(
        root,
        max_connections=10_000,
        max_connections_per_client=10_000,
        min_free_mb=0,
        inbound_auth={"enabled": False},  # no DNS: the verdicts have their own tests
        inbound_retry={"initial": 3600.0, "maximum": 3600.0},  # no store: no retries
    )
    provision(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    service = GatewayService(config)
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(30)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    make_record = logging.getLogRecordFactory()
    logging.setLogRecordFactory(printable_records(make_record))
    try:
        yield Served(service.ports[0], errors)
    finally:
        logging.setLogRecordFactory(make_record)
        logging.getLogger().removeHandler(errors)
        asyncio.run_coroutine_threadsafe(service.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Session:
    """One client session; every reply is checked as it is read."""

    sock: socket.socket
    buffer: bytes = b""
    closed: bool = False
    replies: list[str] = field(default_factory=list)
    garbled: list[bytes] = field(default_factory=list)  # reply lines with control characters
    sent: list[bytes] = field(default_factory=list)

    def reply(self) -> str:
        lines: list[bytes] = []
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    assert not self.buffer, f"the session closed inside a reply: {self.buffer!r}"
                    self.closed = True
                    assert not lines, "the session closed inside a multi-line reply"
                    return ""
                self.buffer += chunk
                continue
            line, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
            match = REPLY_LINE.fullmatch(line)
            assert match is not None, f"not an SMTP reply line: {line!r}"
            assert len(line) <= MAX_REPLY_LINE, f"reply line too long: {len(line)} octets"
            assert not lines or lines[0][:3] == line[:3], "a multi-line reply changed its code"
            if NOT_TEXT.search(match[3].decode("utf-8")):
                self.garbled.append(line)
            lines.append(line)
            if match[2] == b" ":
                text = b"".join(lines).decode()
                self.replies.append(text)
                return text

    def command(self, line: bytes) -> str:
        self.sent.append(line)
        self.sock.sendall(line + b"\r\n")
        return self.reply()


VERBS = st.sampled_from(
    [
        b"HELO",
        b"EHLO",
        b"MAIL FROM:",
        b"RCPT TO:",
        b"mail from:",
        b"rcpt to:",
        b"DATA",
        b"RSET",
        b"NOOP",
        b"VRFY",
        b"EXPN",
        b"HELP",
        b"STARTTLS",
        b"AUTH",
        b"BDAT",
        b"LHLO",
        b"XCLIENT",
        b"QUIT",
        b"",
    ]
)
ARGUMENTS = st.one_of(
    st.sampled_from(
        [
            b"",
            b"client.example",
            f"<{MAILBOX}>".encode(),
            f"<{MAILBOX}> NOTIFY=NEVER".encode(),
            b"<>",
            b"<x@example.org>",
            b"<x@example.org> SIZE=100 BODY=8BITMIME",
            "<ação@example.org> SMTPUTF8".encode(),
            b"<x@example.org> SIZE=99999999999",
            b"<@a.example,@b.example:" + MAILBOX.encode() + b">",
            b'<"a@b"@marca.helpdesk.example>',
            b"<a%b@marca.helpdesk.example>",
            b"x@example.org",
            b"<x@example.org",
            b"PLAIN AGFkbWluAHNlY3JldA==",
            b"(comment) <x@example.org>",
        ]
    ),
    # Anything but a newline, which would make two commands of one line; past the line limit.
    st.binary(max_size=1100).map(lambda b: b.replace(b"\n", b"")),
)
RANDOM_COMMAND = st.tuples(VERBS, st.sampled_from([b" ", b"", b"  ", b"\t"]), ARGUMENTS).map(
    b"".join
)
TRANSACTION = [
    (b"EHLO client.example", st.sampled_from([b"HELO client.example", b"EHLO [127.0.0.1]"])),
    (b"MAIL FROM:<x@example.org>", ARGUMENTS.map(b"MAIL FROM:".__add__)),
    (f"RCPT TO:<{MAILBOX}>".encode(), ARGUMENTS.map(b"RCPT TO:".__add__)),
    (b"DATA", st.just(b"DATA ")),
]


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """Random commands mixed into the steps of a transaction, whose order they keep (random
    lines alone seldom reach DATA); a step is itself a random variant one time in four."""
    reach = draw(st.sampled_from([0, 1, 2, 3, 4, 4, 4, 4]))
    steps = [
        draw(variant) if draw(st.integers(0, 3)) == 0 else plain
        for plain, variant in TRANSACTION[:reach]
    ]
    noise = draw(st.lists(RANDOM_COMMAND, max_size=6))
    merged = []
    while steps or noise:
        source = steps if steps and (not noise or draw(st.booleans())) else noise
        merged.append(source.pop(0))
    return merged or [b"NOOP"]


BODIES = st.binary(max_size=2000)


def dot_stuffed(body: bytes) -> bytes:
    """The message as a client sends it after 354 (RFC 5321 §4.5.2)."""
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


@FUZZ
@given(commands=sessions(), body=BODIES)
def test_random_commands_get_smtp_replies_and_never_break_a_session(
    gateway: Served, commands: list[bytes], body: bytes
) -> None:
    gateway.errors.records.clear()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        session = Session(sock)
        assert session.reply().startswith("220 ")
        for line in commands:
            reply = session.command(line)
            assert not session.closed, f"closed without a reply to {line!r}"
            if reply.startswith("354"):
                line = dot_stuffed(body) + b"\r\n."
                reply = session.command(line)
                assert reply[:3] in ("250", "451", "452", "550", "552", "554"), reply
                event(f"message answered {reply[:3]}")
            assert not session.garbled, f"control characters in a reply: {session.garbled}"
            assert not reply.startswith("451 4.3.0"), f"internal error: {line!r} -> {reply}"
            if reply.startswith(ENDS_SESSION):
                assert session.reply() == "" and session.closed, "it said goodbye: it must close"
                break
        if not session.closed:
            assert session.command(b"RSET")[:3] == "250", "the session must still work"
            assert session.command(b"NOOP")[:3] == "250"
            assert session.command(b"QUIT")[:3] == "221"
            assert session.reply() == "" and session.closed
    assert not gateway.errors.records, [r.getMessage() for r in gateway.errors.records]


@pytest.mark.parametrize(
    ("mail_from", "rcpt_to"),
    [
        (b"<\x80@example.org>", f"<{MAILBOX}>".encode()),
        (b"<x@example.org>", b"<suporte+\x80@marca.helpdesk.example>"),
    ],
)
def test_invalid_utf8_in_an_address_is_refused_at_once(
    gateway: Served, mail_from: bytes, rcpt_to: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        session = Session(sock)
        session.reply()
        session.command(b"EHLO client.example")
        replies = [session.command(b"MAIL FROM:" + mail_from)]
        replies.append(session.command(b"RCPT TO:" + rcpt_to))
        if replies[-1].startswith("250") and replies[0].startswith("250"):
            session.command(b"DATA")
            replies.append(session.command(b"Subject: x\r\n\r\nbody\r\n."))
        session.command(b"QUIT")
    # Refused with a 5xx at MAIL or RCPT, or taken whole: never a 451 the client retries.
    assert replies[-1][0] == "5" or replies[-1].startswith("250 2.0.0"), replies


@pytest.mark.parametrize("line", [b"MAIL FROM:<", b'MAIL FROM:"', b'VRFY <"'])
def test_an_unparsable_address_is_a_syntax_error(gateway: Served, line: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        session = Session(sock)
        session.reply()
        session.command(b"EHLO client.example")
        reply = session.command(line)
    assert reply[:3] in ("501", "502", "553"), reply


@pytest.mark.parametrize("line", [b"X\x1b[31m", b"HELO\r\x00", b"VRFY >\x80"])
def test_replies_carry_no_raw_client_bytes(gateway: Served, line: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        session = Session(sock)
        session.reply()
        session.command(b"EHLO client.example")
        reply = session.command(line)
    assert not session.garbled and not reply.startswith("451"), reply
