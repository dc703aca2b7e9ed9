"""Commands pipelined behind STARTTLS in the same segment are discarded (RFC 3207 §4.2): a man in
the middle cannot slip plaintext commands into the encrypted session (CVE-2021-38371 class)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from conftest import MAILBOX, Running, make_config, provision, wait_for
from tls_files import make_tls_files
from wire import Wire, stored_messages

HOST = "mx.helpdesk.example"


@pytest.mark.parametrize(
    "injected",
    [
        # Would make the client's RCPT the second step of a transaction it never began.
        b"MAIL FROM:<intruso@evil.example>\r\n",
        # A whole transaction, EHLO first.
        b"EHLO evil.example\r\nMAIL FROM:<intruso@evil.example>\r\nRCPT TO:<"
        + MAILBOX.encode()
        + b">\r\nDATA\r\nSubject: injetada\r\n\r\nx\r\n.\r\n",
    ],
    ids=["mail-from", "whole-transaction"],
)
async def test_commands_pipelined_behind_starttls_are_discarded(
    short_tmp: Path, injected: bytes
) -> None:
    ca, cert, key = make_tls_files(short_tmp / "tls", HOST)
    config = make_config(short_tmp, tls_cert=str(cert), tls_key=str(key))
    provision(config)
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    try:
        w = await Wire.open(r.port)
        assert "250-STARTTLS" in await w.hello()
        await w.send(b"STARTTLS\r\n" + injected)  # one write: one segment on loopback
        assert (await w.reply()).startswith("220 ")
        # A real handshake right after the 220: a plaintext reply to the injected commands
        # would break it.
        context = ssl.create_default_context(cafile=str(ca))
        await w.writer.start_tls(context, server_hostname=HOST)
        # Nothing of the plaintext survives: the client must say EHLO again (RFC 3207 §4.2),
        # and then no transaction has begun.
        assert (await w.cmd("MAIL FROM:<cliente@example.org>")).startswith("503 5.5.1")
        ehlo = await w.cmd("EHLO client.example")
        # Neither STARTTLS again nor AUTH: the MX takes no login, encrypted or not.
        assert ehlo.startswith("250-") and "STARTTLS" not in ehlo and "AUTH" not in ehlo
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("503 5.5.1")
        assert (await w.cmd("MAIL FROM:<cliente@example.org>")).startswith("250")
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
        assert (await w.cmd("DATA")).startswith("354")
        await w.send(b"Subject: legitima\r\n\r\nOi\r\n.\r\n")
        assert (await w.reply()).startswith("250 2.0.0")
        assert (await w.cmd("QUIT")).startswith("221")
        await w.close()
        rows = await wait_for(lambda: stored_messages(config.store.database))
        assert [row["subject"] for row in rows] == ["legitima"]
    finally:
        await r.close()
