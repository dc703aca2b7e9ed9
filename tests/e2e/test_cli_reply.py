"""`mxdesk ticket reply|new|cancel|show` as an operator runs them, with the store daemon and a
stand-in gateway on the submission socket."""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import UnixSocketController
from aiosmtpd.smtp import SMTP, Envelope, Session
from daemons import Daemon, cli, provision, write_config

MAILBOX = "suporte@marca.helpdesk.example"
CLIENTE = "cliente@example.com"
FIRST = (
    "X-Mxdesk-Queue-Id: QIN1\r\nFrom: Cliente <cliente@example.com>\r\n"
    f"To: {MAILBOX}\r\nSubject: Pedido atrasado\r\nMessage-ID: <pedido-1@example.com>\r\n"
    "\r\nCadê meu pedido?\r\n"
)


class Recorder:
    """The gateway's side of submission: accepts everything, keeps the commands and data."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.data: list[bytes] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("recusado@"):
            return "550 5.7.1 Recipient address rejected: refused here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data.append(envelope.original_content or b"")
        return f"250 2.0.0 Ok: queued as Q{len(self.data)}"


class DsnSMTP(SMTP):
    """aiosmtpd refuses DSN parameters (RFC 3461): record the commands, then strip them."""

    async def smtp_MAIL(self, arg: str) -> None:
        self.event_handler.commands.append(f"MAIL {arg}")
        await super().smtp_MAIL(arg.split(" ", 1)[0])

    async def smtp_RCPT(self, arg: str) -> None:
        self.event_handler.commands.append(f"RCPT {arg}")
        await super().smtp_RCPT(arg.split(" ", 1)[0])


class Gateway(UnixSocketController):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(Recorder(), unix_socket=str(path))

    def factory(self) -> SMTP:
        return DsnSMTP(self.handler)


@pytest.fixture
def conf(short_tmp: Path) -> Path:
    path = write_config(short_tmp)
    provision(path)
    cli(path, "tenant", "add", "outra", "--owner", "dono@outra.example", "--plan", "plus")
    cli(path, "domain", "add", "outra", "--tenant", "outra")
    cli(path, "mailbox", "add", "contato@outra.helpdesk.example", "--name", "Outra")
    (short_tmp / "sig.txt").write_text("Ana Souza\nSuporte Marca\n")
    cli(
        path,
        "operator",
        "add",
        "Ana",
        "--tenant",
        "marca",
        "--signature-file",
        str(short_tmp / "sig.txt"),
    )
    return path


@pytest.fixture
def store(conf: Path) -> Iterator[Daemon]:
    daemon = Daemon(conf, "store", conf.parent / "store.log")
    daemon.start()
    yield daemon
    daemon.terminate()
    daemon.close()


@pytest.fixture
def gateway(conf: Path) -> Iterator[Gateway]:
    g = Gateway(conf.parent / "run" / "gateway" / "submit.sock")
    g.start()
    yield g
    g.stop()


def show(conf: Path, number: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli(conf, "ticket", "show", str(number), "--json").stdout)
    return result


def wait_status(
    conf: Path, number: int, index: int, wanted: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message: dict[str, Any] = show(conf, number)["messages"][index]
        if message["status"] == wanted or time.monotonic() > deadline:
            assert message["status"] == wanted, message
            return message


def test_reply_and_new_ticket_with_the_store_daemon(
    conf: Path, store: Daemon, gateway: Gateway
) -> None:
    with smtplib.LMTP(str(conf.parent / "run" / "store" / "lmtp.sock")) as lmtp:
        lmtp.sendmail(CLIENTE, [MAILBOX], FIRST.encode())
    body = conf.parent / "reply.txt"
    body.write_text("Olá! Seu pedido já saiu.\n")
    pdf = conf.parent / "nota fiscal.pdf"
    pdf.write_bytes(b"%PDF-1.4 nota")
    args = ["--operator", "Ana", "--cc", "Gerente@Example.org", "--attach", str(pdf)]
    result = cli(conf, "ticket", "reply", "1", "--body-file", str(body), *args)
    assert result.stdout == "message 2 on ticket #1: queued as Q1\n"
    recorder: Recorder = gateway.handler
    (mail, *rcpts) = recorder.commands
    assert mail.startswith(f"MAIL FROM:<{MAILBOX}> RET=HDRS ENVID=")
    assert rcpts == [
        f"RCPT TO:<{CLIENTE}> NOTIFY=SUCCESS,FAILURE,DELAY",
        "RCPT TO:<gerente@example.org> NOTIFY=SUCCESS,FAILURE,DELAY",
    ]
    sent = recorder.data[0]
    assert b"In-Reply-To: <pedido-1@example.com>" in sent
    assert b"Subject: Re: Pedido atrasado" in sent
    assert b'filename="nota fiscal.pdf"' in sent

    again = cli(conf, "ticket", "reply", "1", "--operator", "Ana", "--json", input="Mais uma.\n")
    assert json.loads(again.stdout)["queue_id"] == "Q2"
    ticket = show(conf, 1)
    reply = ticket["messages"][1]
    assert (reply["direction"], reply["status"], reply["queue_id"], reply["operator"]) == (
        "out",
        "queued",
        "Q1",
        "Ana",
    )
    assert [(d["recipient"], d["status"]) for d in reply["deliveries"]] == [
        (CLIENTE, "pending"),
        ("gerente@example.org", "pending"),
    ]
    text = cli(conf, "ticket", "show", "1").stdout
    assert "--- message 2 (out, 2 of 3)" in text and "Status:     queued" in text
    assert "Delivery:   cliente@example.com  pending" in text and "Operator:   Ana" in text
    listed = cli(conf, "ticket", "list").stdout.splitlines()
    assert listed[0].split()[-3:-1] == ["MESSAGES", "PENDING"] and listed[1].split()[-3:-1] == [
        "3",
        "2",
    ]

    opened = cli(
        conf,
        "ticket",
        "new",
        "--tenant",
        "marca",
        "--from",
        MAILBOX,
        "--to",
        "novo@example.com",
        "--subject",
        "Sua fatura",
        "--operator",
        "Ana",
        input="Segue a fatura.\n",
    )
    assert opened.stdout == "ticket #2 opened: message 4 on ticket #2: queued as Q3\n"
    assert b"Subject: Sua fatura\r\n" in recorder.data[2]
    assert b"In-Reply-To" not in recorder.data[2]

    refused = cli(
        conf,
        "ticket",
        "reply",
        "2",
        "--operator",
        "Ana",
        "--cc",
        "recusado@example.org",
        input="Cópia.\n",
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr == (
        "mxdesk: message 5 on ticket #2: queued as Q4, but refused by the gateway:"
        " recusado@example.org: 550 5.7.1 Recipient address rejected: refused here\n"
    )

    # Queued in a gateway whose spool does not exist here: the cancel says why it cannot.
    refused = cli(conf, "ticket", "cancel", "2", check=False)
    assert refused.returncode == 1 and "no spool at" in refused.stderr


def test_without_the_store_daemon_the_reply_waits(conf: Path) -> None:
    opened = cli(
        conf,
        "ticket",
        "new",
        "--tenant",
        "marca",
        "--from",
        MAILBOX,
        "--to",
        CLIENTE,
        "--subject",
        "Bem-vindo",
        "--no-send",
        input="Olá!\n",
    )
    assert opened.stdout == "ticket #1 opened: message 1 on ticket #1: kept as a draft, not sent\n"
    result = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Oi de novo.\n")
    assert result.stdout == (
        "message 2 on ticket #1: stored; it is handed to the gateway as soon as the gateway is"
        " reachable (the store daemon is not running)\n"
    )
    assert [m["status"] for m in show(conf, 1)["messages"]] == ["draft", "new"]
    assert cli(conf, "ticket", "cancel", "2").stdout == "message 2 on ticket #1: cancelled\n"
    for message, error in (("2", "was already cancelled"), ("1", "is a draft")):
        refused = cli(conf, "ticket", "cancel", message, check=False)
        assert refused.returncode == 1 and error in refused.stderr

    waiting = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Terceira.\n")
    assert "message 3 on ticket #1: stored" in waiting.stdout
    daemon = Daemon(conf, "store", conf.parent / "store.log")
    daemon.start()
    try:
        wait_status(conf, 1, 2, "new")
        late = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Quarta.\n")
        assert "message 4 on ticket #1: stored" in late.stdout
        assert "(gateway not reachable: " in late.stdout
        gateway = Gateway(conf.parent / "run" / "gateway" / "submit.sock")
        gateway.start()
        try:
            assert wait_status(conf, 1, 3, "queued")["queue_id"] in ("Q1", "Q2")
            wait_status(conf, 1, 2, "queued")
        finally:
            gateway.stop()
    finally:
        daemon.terminate()
        daemon.close()


def test_errors_are_one_line(conf: Path) -> None:
    cli(
        conf,
        "ticket",
        "new",
        "--tenant",
        "marca",
        "--from",
        MAILBOX,
        "--to",
        CLIENTE,
        "--subject",
        "x",
        "--no-send",
        input="x\n",
    )
    binary = conf.parent / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    reply = ["ticket", "reply", "1", "--operator", "Ana"]
    new = ["ticket", "new", "--tenant", "marca", "--from", MAILBOX, "--to", CLIENTE]
    cases: list[tuple[list[str], str, str]] = [
        (["ticket", "reply", "99", "--operator", "Ana"], "x", "no ticket #99"),
        (
            ["ticket", "reply", "1", "--operator", "Nobody"],
            "x",
            "no operator 'Nobody' in tenant 'marca'",
        ),
        (reply, "  \n", "has no text"),
        ([*reply, "--body-file", str(conf.parent / "nada.txt")], "", "cannot read"),
        ([*reply, "--body-file", str(binary)], "", "is not UTF-8 text"),
        ([*reply, "--attach", str(conf.parent / "nada.pdf")], "x", "cannot read"),
        ([*reply, "--cc", "not-an-address"], "x", "cc: 'not-an-address' is not an e-mail address"),
        (new, "x", "a new ticket needs a subject"),
        ([*new, "--subject", "  "], "x", "a new ticket needs a subject"),
        (
            [
                "ticket",
                "new",
                "--tenant",
                "marca",
                "--from",
                "contato@outra.helpdesk.example",
                "--to",
                CLIENTE,
                "--subject",
                "x",
            ],
            "x",
            "is not a mailbox of tenant 'marca'",
        ),
        (["ticket", "cancel", "99"], "", "no message 99"),
    ]
    for args, stdin, message in cases:
        result = cli(conf, *args, input=stdin, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    assert len(show(conf, 1)["messages"]) == 1
