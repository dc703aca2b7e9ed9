"""Real MTAs in front of the daemons: Postfix relays to the gateway, swaks talks to it directly."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import MAILBOX, require_real, wait_for
from daemons import Daemon, cli, mx_port, provision, store_and_gateway, write_config
from postfix_harness import PostfixInstance
from wire import stored_messages

pytestmark = pytest.mark.real

SUBJECT = "Pedido de ajuda — ação"
BODY = "Olá, equipe!\nNão consigo emitir a nota fiscal; a configuração está correta?\n"
QUEUED_AS = re.compile(r"status=sent \(250 2\.0\.0 Ok: queued as ([0-9A-F]+)\)")


@dataclass
class Mxdesk:
    config: Path
    port: int
    root: Path
    store: Daemon
    gateway: Daemon

    def tickets(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(
            cli(self.config, "ticket", "list", "--json").stdout
        )
        return result

    def ticket(self, number: int) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            cli(self.config, "ticket", "show", str(number), "--json").stdout
        )
        return result


@pytest.fixture
def mxdesk(short_tmp: Path) -> Iterator[Mxdesk]:
    """The store and the gateway as two daemons from one config file; stopped with SIGTERM."""
    config = write_config(short_tmp)
    provision(config)
    with store_and_gateway(config, short_tmp) as (store, gateway):
        yield Mxdesk(config, mx_port(config), short_tmp, store, gateway)
        assert gateway.terminate() == 0, gateway.log.read_text()
        assert store.terminate() == 0, store.log.read_text()


@pytest.fixture
def postfix(mxdesk: Mxdesk) -> Iterator[PostfixInstance]:
    """A private Postfix that relays helpdesk.example and its subdomains to the gateway."""
    require_real("postfix")
    instance = PostfixInstance.relaying("helpdesk.example", mxdesk.port)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        instance.cleanup()


def portuguese_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "João da Silva <joao@cliente.example>"
    msg["To"] = f"Suporte Marca <{MAILBOX}>"
    msg["Subject"] = SUBJECT
    msg.set_content(BODY)
    return msg.as_bytes(policy=policy.SMTP)


@pytest.mark.parametrize("submission", ["sendmail", "smtp"])
async def test_postfix_relays_a_message_that_becomes_a_ticket(
    mxdesk: Mxdesk, postfix: PostfixInstance, submission: str
) -> None:
    message = portuguese_message()
    if submission == "sendmail":
        postfix.sendmail(message, "joao@cliente.example", [MAILBOX])
    else:
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
            client.sendmail("joao@cliente.example", [MAILBOX], message)

    sent = await wait_for(postfix.deliveries, timeout=30, what="Postfix to deliver")
    assert len(sent) == 1
    assert f"to=<{MAILBOX}>" in sent[0] and f"relay=127.0.0.1[127.0.0.1]:{mxdesk.port}" in sent[0]
    match = QUEUED_AS.search(sent[0])
    assert match, sent[0]
    queue_id = match.group(1)

    tickets = await wait_for(mxdesk.tickets, timeout=30, what="the ticket")
    assert [(t["subject"], t["mailbox"], t["messages"]) for t in tickets] == [(SUBJECT, MAILBOX, 1)]
    ticket = mxdesk.ticket(tickets[0]["number"])
    assert ticket["requester"] == "joao@cliente.example"
    [stored] = ticket["messages"]
    assert stored["subject"] == SUBJECT
    assert stored["from_name"] == "João da Silva"
    assert stored["text_body"] == BODY
    # The id in Postfix's log is the one the store filed the message under.
    assert [r["queue_id"] for r in stored_messages(mxdesk.root / "state" / "tickets.db")] == [
        queue_id
    ]
    assert postfix.queue_is_empty()


async def test_postfix_keeps_the_message_while_the_gateway_is_down(
    mxdesk: Mxdesk, postfix: PostfixInstance
) -> None:
    assert mxdesk.gateway.terminate() == 0
    postfix.sendmail(portuguese_message(), "joao@cliente.example", [MAILBOX])
    deferred = await wait_for(
        lambda: postfix.deliveries("deferred"), timeout=30, what="Postfix to defer"
    )
    assert "connect to 127.0.0.1[127.0.0.1]" in deferred[0], deferred[0]

    mxdesk.gateway.start()
    postfix.flush()
    sent = await wait_for(postfix.deliveries, timeout=30, what="Postfix to deliver")
    assert QUEUED_AS.search(sent[0]), sent[0]
    tickets = await wait_for(mxdesk.tickets, timeout=30, what="the ticket")
    assert [(t["subject"], t["messages"]) for t in tickets] == [(SUBJECT, 1)]
    assert postfix.queue_is_empty()


def swaks(port: int, to: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_real("swaks"),
            "--server",
            f"127.0.0.1:{port}",
            "--helo",
            "cliente.example",
            "--from",
            "maria@cliente.example",
            "--to",
            to,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_swaks_attachment_reaches_the_ticket(mxdesk: Mxdesk, short_tmp: Path) -> None:
    attachment = short_tmp / "relatorio.pdf"
    content = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    attachment.write_bytes(content)
    result = swaks(
        mxdesk.port,
        "suporte+pedido@marca.helpdesk.example",
        "--header",
        "Subject: Relatório do mês",
        "--body",
        "Segue o relatório em anexo.",
        "--attach-type",
        "application/pdf",
        "--attach",
        f"@{attachment}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"<- +250 2\.0\.0 Ok: queued as [0-9A-F]+", result.stdout), result.stdout

    tickets = await wait_for(mxdesk.tickets, timeout=30, what="the ticket")
    assert [(t["subject"], t["mailbox"]) for t in tickets] == [("Relatório do mês", MAILBOX)]
    [stored] = mxdesk.ticket(tickets[0]["number"])["messages"]
    assert "Segue o relatório em anexo." in stored["text_body"]
    assert stored["attachments"] == [
        {"filename": "relatorio.pdf", "content_type": "application/pdf", "size": len(content)}
    ]


@pytest.mark.parametrize(
    ("to", "reply"),
    [
        ("nobody@marca.helpdesk.example", "550 5.1.1"),
        ("x@gmail.example", "550 5.7.1"),
    ],
)
def test_swaks_refused_recipients(mxdesk: Mxdesk, to: str, reply: str) -> None:
    result = swaks(mxdesk.port, to)
    assert result.returncode == 24, result.stdout  # swaks: no RCPT accepted
    assert re.search(rf"<\*\* +{reply} ", result.stdout), result.stdout
    assert mxdesk.tickets() == []
