"""Replies leave through the real daemons to Postfix's smtp-sink, found through an MX record.

The gateway and the store run as a sysadmin runs them (subprocesses from a config file), the CLI
as an operator uses it; the recipient's domain has its MX on a local DNS server the gateway is
configured to ask, pointing at smtp-sink on loopback.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.policy import default
from pathlib import Path

import dkim
import pytest
from conftest import require_real, wait_for
from daemons import cli
from opendkim import opendkim_verify
from postfix_harness import port_open
from replysite import CUSTOMER, MAILBOX, Site
from sink import Sink
from wire import send_message

from mxdesk.secrets import installation_key
from mxdesk.store.compose import ticket_of_message_id


@pytest.fixture
def site(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    require_real("smtp-sink")
    send_delay, flags = getattr(request, "param", (0.0, ()))
    s = Site(short_tmp, send_delay, flags)
    yield s
    s.close()


def as_crlf(dump: bytes) -> bytes:
    """The message smtp-sink received, without the X- lines it adds, with CRLF line ends."""
    lines = dump.split(b"\n")
    while lines and lines[0].startswith(b"X-") and b": " in lines[0]:
        lines.pop(0)
    return b"\r\n".join(lines).rstrip(b"\r\n") + b"\r\n"


async def test_reply_reaches_the_sink_signed_and_threads_back(site: Site) -> None:
    ticket = await site.ask()
    out = site.reply(ticket)
    await wait_for(lambda: site.sink.messages(), timeout=20, what="the reply at the sink")
    [dump] = site.sink.messages()
    raw = as_crlf(dump)
    msg = email.message_from_bytes(raw, policy=default)
    assert str(msg["From"]) == f"Suporte Marca <{MAILBOX}>"
    assert msg["To"].addresses[0].addr_spec == CUSTOMER
    assert msg["Subject"] == "Re: impressora parada"
    assert msg["In-Reply-To"] == "<q1@example.com>"
    assert "<q1@example.com>" in msg["References"]
    assert msg["Date"] and msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] is None
    key = installation_key(site.root / "state")
    assert ticket_of_message_id(key, msg["Message-ID"]) == ticket
    parts = [p.get_content_type() for p in msg.walk()]
    assert "text/plain" in parts and "text/html" in parts
    assert "Ana Souza" in msg.get_body(("plain",)).get_content()

    # Both signatures (RSA-2048 and Ed25519) verify, with dkimpy and with OpenDKIM.
    assert len(msg.get_all("DKIM-Signature")) == 2
    for index in range(2):
        verified = dkim.DKIM(raw).verify(idx=index, dnsfunc=lambda name, timeout=5: site.txt[name])
        assert verified, f"signature {index}"
    resolv = site.root / "resolv.conf"
    resolv.write_text(f"nameserver {site.dns.host}\noptions timeout:1 attempts:2\n")
    checked = opendkim_verify(raw, resolv)
    assert checked.returncode == 0, checked.stderr.decode()

    # The success notice comes back through the inbound path: the reply is marked sent.
    await wait_for(lambda: site.message(ticket, 1)["status"] == "sent", what="status sent")
    assert site.message(ticket, 1)["id"] == out["id"]

    # The customer answers with a client that keeps only In-Reply-To: it joins the ticket.
    answer = (
        f"From: {CUSTOMER}\r\nTo: {MAILBOX}\r\nSubject: funcionou\r\n"
        f"In-Reply-To: {msg['Message-ID']}\r\n\r\nObrigado!\r\n"
    ).encode()
    assert (await send_message(site.port, CUSTOMER, [MAILBOX], answer)).startswith("250")
    await wait_for(
        lambda: len(site.json("ticket", "show", str(ticket))["messages"]) == 3,
        what="the answer on the ticket",
    )
    assert len(site.json("ticket", "list")) == 1
    # Cancelling once it is delivered is refused.
    refused = cli(site.config, "ticket", "cancel", str(out["id"]), check=False)
    assert refused.returncode == 1 and "already sent" in refused.stderr


@pytest.mark.parametrize("site", [(0.0, ("-f", "rcpt"))], indirect=True)
async def test_permanent_refusal_fails_the_reply_with_its_notice(site: Site) -> None:
    ticket = await site.ask()
    site.reply(ticket)
    await wait_for(lambda: site.message(ticket, 1)["status"] == "failed", what="status failed")
    messages = site.json("ticket", "show", str(ticket))["messages"]
    notice = messages[-1]
    assert notice["direction"] == "in" and "automatic" in notice["flags"]
    assert "Undelivered Mail" in notice["subject"]
    assert "500" in site.message(ticket, 1)["status_detail"]
    assert site.sink.messages() == []
    assert site.json("queue", "list") == []  # no retry is waiting
    attempts = [
        line
        for line in site.gateway.log.read_text().splitlines()
        if "mxdesk.gateway.outbound" in line and f"to=<{CUSTOMER}>" in line
    ]
    assert len(attempts) == 1, attempts  # one attempt, no retry


@pytest.mark.parametrize("site", [(0.0, ("-r", "rcpt"))], indirect=True)
async def test_4xx_defers_then_the_retry_delivers(site: Site) -> None:
    ticket = await site.ask()
    site.reply(ticket)
    await wait_for(lambda: site.message(ticket, 1)["status"] == "deferred", what="deferred")
    assert "450" in site.message(ticket, 1)["status_detail"]
    # The customer's server stops refusing: the next attempt gets through.
    port = site.sink.port
    site.sink.close()
    site.sink = Sink(site.root, (), port=port)
    await wait_for(lambda: port_open(port), what="the sink back")
    await wait_for(lambda: site.message(ticket, 1)["status"] == "sent", timeout=20, what="sent")
    assert len(site.sink.messages()) == 1


@pytest.mark.parametrize("site", [(0.0, ("-q", "."))], indirect=True)
async def test_hang_up_after_the_dot_is_retried(site: Site) -> None:
    ticket = await site.ask()
    site.reply(ticket)
    await wait_for(
        lambda: any(e["attempts"] >= 2 for e in site.json("queue", "list") if e["kind"] == "out"),
        timeout=20,
        what="a second attempt",
    )
    assert site.message(ticket, 1)["status"] in ("queued", "deferred")


@pytest.mark.parametrize("site", [(30.0, ())], indirect=True)
async def test_cancel_during_the_send_delay_sends_nothing(site: Site) -> None:
    ticket = await site.ask()
    out = site.reply(ticket)
    await wait_for(lambda: site.message(ticket, 1)["queue_id"], what="handed to the gateway")
    result = cli(site.config, "ticket", "cancel", str(out["id"]))
    assert result.returncode == 0
    assert site.message(ticket, 1)["status"] == "cancelled"
    assert not [e for e in site.json("queue", "list") if e["kind"] == "out"]
    assert site.sink.messages() == []
