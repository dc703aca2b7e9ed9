"""The MX listener on a real loopback socket, delivering to the real store."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import MAILBOX, Running, make_config, provision, require_real, wait_for
from tls_files import make_tls_files
from wire import Wire, send_message, stored_messages

from mxdesk.gateway.queuectl import list_entries
from mxdesk.gateway.smtp import R421_IDLE, R421_SESSION

MSG = b"From: Cliente <cliente@example.org>\r\nSubject: Ajuda\r\n\r\nOla\r\n"


async def test_ehlo_advertises_extensions(running: Running) -> None:
    w = await Wire.open(running.port)
    ehlo = await w.hello()
    for ext in ("SIZE 26214400", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"):
        assert f"250-{ext}" in ehlo
    assert "STARTTLS" not in ehlo
    assert "AUTH" not in ehlo  # no listener takes a login
    await w.close()


async def test_accepted_mail_becomes_a_ticket_with_received_header(running: Running) -> None:
    reply = await send_message(
        running.port, "cliente@example.org", ["Suporte+pedido@MARCA.helpdesk.example"], MSG
    )
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    queue_id = reply.split()[-1]
    rows = await wait_for(lambda: stored_messages(running.config.store.database), what="ticket")
    assert [r["queue_id"] for r in rows] == [queue_id]
    assert rows[0]["subject"] == "Ajuda"
    raw = _raw(running, queue_id)
    assert raw.index(b"Received: from client.example") < raw.index(b"From: Cliente")
    assert f"id {queue_id}".encode() in raw


def _raw(running: Running, queue_id: str) -> bytes:
    import sqlite3

    conn = sqlite3.connect(running.config.store.database)
    try:
        return bytes(
            conn.execute("SELECT raw FROM messages WHERE queue_id=?", (queue_id,)).fetchone()[0]
        )
    finally:
        conn.close()


# The domain is hosted: the refusal says it is the form of the address (RFC 5321 §3.6.1).
FORWARDING = "550 5.7.1 Recipient address rejected: a forwarding form of address, relay denied"
SOURCE_ROUTE = "550 5.7.1 Recipient address rejected: source routes are not relayed"


@pytest.mark.parametrize(
    ("rcpt", "code"),
    [
        ("ninguem@marca.helpdesk.example", "550 5.1.1"),
        ("someone@gmail.example", "550 5.7.1 Recipient address rejected: not a domain hosted"),
        ("a%b@marca.helpdesk.example", FORWARDING),
        ("b!a@marca.helpdesk.example", FORWARDING),
        ('"a@b"@marca.helpdesk.example', FORWARDING),
        ("@relay.example:suporte@marca.helpdesk.example", SOURCE_ROUTE),
        ("@a.example,@b.example:suporte@marca.helpdesk.example", SOURCE_ROUTE),
    ],
)
async def test_rcpt_refusals(running: Running, rcpt: str, code: str) -> None:
    w = await Wire.open(running.port)
    await w.hello()
    assert (await w.cmd("MAIL FROM:<x@example.org>")).startswith("250")
    assert (await w.cmd(f"RCPT TO:<{rcpt}>")).startswith(code)
    await w.close()


async def test_a_refused_recipient_is_logged_alone(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal's log line names the recipient refused, not those accepted before it."""
    w = await Wire.open(running.port)
    await w.hello()
    assert (await w.cmd("MAIL FROM:<x@example.org>")).startswith("250")
    assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
    with caplog.at_level("INFO", logger="mxdesk.gateway"):
        assert (await w.cmd("RCPT TO:<ninguem@marca.helpdesk.example>")).startswith("550")
    await w.close()
    [line] = [r.getMessage() for r in caplog.records if "result=rejected" in r.getMessage()]
    assert " to=<ninguem@marca.helpdesk.example> result=rejected reply='550 5.1.1 " in line


async def test_postmaster_of_a_hosted_domain_reaches_its_tenant(running: Running) -> None:
    reply = await send_message(running.port, "", ["postmaster@marca.helpdesk.example"], MSG)
    assert reply.startswith("250 ")
    rows = await wait_for(lambda: stored_messages(running.config.store.database))
    assert len(rows) == 1


async def test_size_limit_at_the_bound(short_tmp: Path) -> None:
    config = make_config(short_tmp, max_message_size=2000)
    provision(config)
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    try:
        w = await Wire.open(r.port)
        assert "250-SIZE 2000" in await w.hello()
        assert (await w.cmd("MAIL FROM:<x@example.org> SIZE=2001")).startswith("552 5.3.4")
        assert (await w.cmd("MAIL FROM:<x@example.org> SIZE=2000")).startswith("250")
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
        assert (await w.cmd("DATA")).startswith("354")
        await w.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 30 + b".\r\n")
        assert (await w.reply()).startswith("552 5.3.4")
        await w.close()
        # Exactly at the limit (counted as on the wire, CRLFs included) is accepted.
        body = b"Subject: fit\r\n\r\n"
        while len(body) < 2000:
            body += b"y" * min(98, 2000 - len(body) - 2) + b"\r\n"
        assert len(body) == 2000
        assert (await send_message(r.port, "x@example.org", [MAILBOX], body)).startswith("250")
    finally:
        await r.close()


async def test_recipient_limit_at_the_bound(short_tmp: Path) -> None:
    config = make_config(short_tmp, max_recipients=2)
    provision(config)
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    try:
        w = await Wire.open(r.port)
        await w.hello()
        await w.cmd("MAIL FROM:<x@example.org>")
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
        assert (await w.cmd("RCPT TO:<marca@helpdesk.example>")).startswith("250")
        assert (await w.cmd("RCPT TO:<outra@helpdesk.example>")).startswith("452 4.5.3")
        assert (await w.cmd("DATA")).startswith("354")
        await w.send(MSG + b".\r\n")
        assert (await w.reply()).startswith("250")
        await w.close()
        rows = await wait_for(lambda: len(stored_messages(config.store.database)) == 2)
        assert rows
    finally:
        await r.close()


async def test_connection_limits(short_tmp: Path) -> None:
    config = make_config(short_tmp, max_connections=3, max_connections_per_client=2)
    provision(config)
    r = Running(config)
    await r.start_gateway()
    try:
        first = [await Wire.open(r.port) for _ in range(2)]
        for w in first:
            assert (await w.reply()).startswith("220")
        third = await Wire.open(r.port)
        assert (await third.reply()).startswith("421 4.7.0")
        await third.close()
        # Another client address (127.0.0.2 is loopback too) still gets a session, up to the
        # total; then everyone is refused.
        other = await Wire.open(r.port, source="127.0.0.2")
        assert (await other.reply()).startswith("220")
        fourth = await Wire.open(r.port, source="127.0.0.3")
        assert (await fourth.reply()).startswith("421 4.7.0")
        await fourth.close()
        # A closed session frees its slot.
        await first[0].close()
        await wait_for(lambda: r.gateway is not None and len(r.gateway.limits.sessions) == 2)
        again = await Wire.open(r.port)
        assert (await again.reply()).startswith("220")
        for w in [first[1], other, again]:
            await w.close()
    finally:
        await r.close()


async def test_idle_and_session_timeouts(short_tmp: Path) -> None:
    config = make_config(short_tmp, idle_timeout=0.3, session_timeout=1.0)
    provision(config)
    r = Running(config)
    await r.start_gateway()
    try:
        idle = await Wire.open(r.port)
        await idle.hello()
        assert (await idle.reply(timeout=5)) == R421_IDLE
        await idle.close()
        busy = await Wire.open(r.port)
        await busy.hello()
        replies = []
        for _ in range(40):  # keeps the session active well past session_timeout
            try:
                replies.append(await busy.cmd("NOOP"))
            except ConnectionError:
                break
            await asyncio.sleep(0.05)
        # Cut by the session's limit, never by the idle timeout (which counts from the last
        # command, however many came before it), though that is the shorter one.
        assert R421_SESSION in replies and R421_IDLE not in replies, replies[-3:]
        await busy.close()
    finally:
        await r.close()


@pytest.mark.parametrize(
    "smuggle",
    [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n\x00.\r\n", b"\r.\r\n", b"\r\n.\n"],
)
async def test_end_of_data_smuggling_never_yields_a_second_message(
    running: Running, smuggle: bytes
) -> None:
    w = await Wire.open(running.port)
    await w.hello()
    await w.cmd("MAIL FROM:<cliente@example.org>")
    await w.cmd(f"RCPT TO:<{MAILBOX}>")
    assert (await w.cmd("DATA")).startswith("354")
    inner = (
        b"MAIL FROM:<attacker@evil.example>\r\nRCPT TO:<"
        + MAILBOX.encode()
        + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
    )
    await w.send(b"Subject: outer\r\n\r\nfirst" + smuggle + inner + b".\r\n")
    assert (await w.reply()).startswith("250")
    assert (await w.cmd("QUIT")).startswith("221")
    await w.close()
    rows = await wait_for(lambda: stored_messages(running.config.store.database))
    assert [r["subject"] for r in rows] == ["outer"]
    # The gateway deletes its entry once it has read the store's 250: a moment after the filing.
    await wait_for(
        lambda: list_entries(running.config.gateway.spool_path) == [], what="the spool empty"
    )


async def test_storage_failure_answers_451_without_details(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    def broken(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error at /secret/path")

    # Whichever way the transaction runs (opened on the loop or whole on the spool's thread).
    monkeypatch.setattr("mxdesk.gateway.spool.insert_entry", broken)
    reply = await send_message(running.port, "x@example.org", [MAILBOX], MSG)
    assert reply.startswith("451 4.3.0")
    assert "secret" not in reply and "disk" not in reply


async def test_internal_error_answers_451_not_500(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mxdesk.gateway.policy import RecipientPolicy

    def explode(self: object, address: str) -> None:
        raise RuntimeError("policy exploded: /internal/detail")

    monkeypatch.setattr(RecipientPolicy, "check", explode)
    w = await Wire.open(running.port)
    await w.hello()
    await w.cmd("MAIL FROM:<x@example.org>")
    reply = await w.cmd(f"RCPT TO:<{MAILBOX}>")
    assert reply.startswith("451 4.3.0")
    assert "exploded" not in reply and "internal" not in reply
    await w.close()


async def test_disconnect_right_after_final_dot_leaves_no_partial_entry(
    running: Running,
) -> None:
    results = []
    for _ in range(20):
        w = await Wire.open(running.port)
        await w.hello()
        await w.cmd("MAIL FROM:<x@example.org>")
        await w.cmd(f"RCPT TO:<{MAILBOX}>")
        await w.cmd("DATA")
        await w.send(MSG + b".\r\n")
        w.writer.transport.abort()  # hang up without waiting for the reply
        results.append(w)
    # Every entry that made it into the spool is whole and reaches the store; none is stuck.
    await wait_for(lambda: not list_entries(running.config.gateway.spool_path), what="empty spool")
    rows = stored_messages(running.config.store.database)
    assert all(r["subject"] == "Ajuda" for r in rows)
    assert len({r["queue_id"] for r in rows}) == len(rows)


async def test_starttls_when_a_certificate_is_configured(short_tmp: Path) -> None:
    import aiosmtplib

    _, cert, key = make_tls_files(short_tmp / "tls", "mx.helpdesk.example")
    config = make_config(short_tmp, tls_cert=str(cert), tls_key=str(key))
    provision(config)
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    try:
        w = await Wire.open(r.port)
        assert "250-STARTTLS" in await w.hello()
        await w.close()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=r.port, start_tls=True, tls_context=context
        )
        await client.connect()
        errors, reply = await client.sendmail("x@example.org", [MAILBOX], MSG)
        await client.quit()
        assert not errors and reply.startswith("2.0.0 Ok: queued")
        # And a real client's TLS stack: swaks (Perl's IO::Socket::SSL, OpenSSL underneath).
        command = [require_real("swaks"), "--server", f"127.0.0.1:{r.port}", "--tls"]
        command += ["--from", "maria@cliente.example", "--to", MAILBOX, "--helo", "c.example"]
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
        if "TLS not available" in done.stderr and os.environ.get("MXDESK_REQUIRE_REAL") != "1":
            pytest.skip(f"swaks without TLS (libnet-ssleay-perl): {done.stderr.strip()}")
        assert done.returncode == 0 and "TLS started" in done.stdout, done.stdout[-2000:]
        assert "<~  250 2.0.0 Ok: queued as " in done.stdout, done.stdout[-2000:]
        await wait_for(lambda: len(stored_messages(config.store.database)) == 2)
        for row in stored_messages(config.store.database):
            assert b"with ESMTPS id" in _raw(r, row["queue_id"])
    finally:
        await r.close()


async def test_pipelined_commands_after_the_final_dot_and_dot_stuffing(running: Running) -> None:
    w = await Wire.open(running.port)
    await w.hello()
    body = b"Subject: pontos\r\n\r\n..linha com ponto\r\n...\r\n.\r\n"
    # Everything in one write, as a PIPELINING client may send it (RFC 2920).
    await w.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<" + MAILBOX.encode() + b">\r\nDATA\r\n")
    assert (await w.reply()).startswith("250")
    assert (await w.reply()).startswith("250")
    assert (await w.reply()).startswith("354")
    await w.send(body + b"MAIL FROM:<b@example.org>\r\nQUIT\r\n")
    assert (await w.reply()).startswith("250 2.0.0")
    assert (await w.reply()).startswith("250")
    assert (await w.reply()).startswith("221")
    await w.close()
    rows = await wait_for(lambda: stored_messages(running.config.store.database))
    raw = _raw(running, rows[0]["queue_id"])
    assert raw.endswith(b"\r\n\r\n.linha com ponto\r\n..\r\n")


async def test_empty_message_and_message_split_across_packets(running: Running) -> None:
    w = await Wire.open(running.port)
    await w.hello()
    await w.cmd("MAIL FROM:<a@example.org>")
    await w.cmd(f"RCPT TO:<{MAILBOX}>")
    await w.cmd("DATA")
    for piece in (b"Subject: partes\r\n\r\nab", b"c\r", b"\n", b".", b"\r", b"\n"):
        await w.send(piece)
        await asyncio.sleep(0.01)
    assert (await w.reply()).startswith("250 2.0.0")
    await w.cmd("MAIL FROM:<a@example.org>")
    await w.cmd(f"RCPT TO:<{MAILBOX}>")
    await w.cmd("DATA")
    await w.send(b".\r\n")
    assert (await w.reply()).startswith("250 2.0.0")
    await w.close()
    rows = await wait_for(lambda: len(stored_messages(running.config.store.database)) == 2)
    assert rows
    subjects = sorted(r["subject"] for r in stored_messages(running.config.store.database))
    assert subjects == ["", "partes"]
