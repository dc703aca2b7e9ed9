"""`mxdesk ticket reply|new|cancel|show` as an operator runs them, with the store daemon and
the real gateway on the submission socket (its send delay keeps each reply queued, where
`mxdesk queue show` reads what was handed over)."""

from __future__ import annotations

import json
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import UnixSocketController
from aiosmtpd.smtp import SMTP, Envelope, Session
from daemons import Daemon, activate, cli, provision, write_config

MAILBOX = "suporte@marca.helpdesk.example"
CLIENTE = "cliente@example.com"
FIRST = (
    "X-Mxdesk-Queue-Id: QIN1\r\nFrom: Cliente <cliente@example.com>\r\n"
    f"To: {MAILBOX}\r\nSubject: Pedido atrasado\r\nMessage-ID: <pedido-1@example.com>\r\n"
    "\r\nCadê meu pedido?\r\n"
)
# The gateway keeps replies queued for an hour: nothing leaves the machine in these tests.
HOLD = '\n[gateway.outbound]\nsend_delay = 3600.0\nnameservers = ["127.0.0.1:9"]\n'
QUEUED_AS = re.compile(r"queued as ([0-9A-F]{17})")


class RefusingSubmission:
    """A submission server that refuses one recipient. The gateway never refuses an address
    the CLI accepts, but another server on the socket may: this injects that failure."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("recusado@"):
            return "550 5.7.1 Recipient address rejected: refused here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: queued as Q4"


class DsnSMTP(SMTP):
    """aiosmtpd refuses DSN parameters (RFC 3461): strip them."""

    async def smtp_MAIL(self, arg: str) -> None:
        await super().smtp_MAIL(arg.split(" ", 1)[0])

    async def smtp_RCPT(self, arg: str) -> None:
        await super().smtp_RCPT(arg.split(" ", 1)[0])


class Refusing(UnixSocketController):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(RefusingSubmission(), unix_socket=str(path))

    def factory(self) -> SMTP:
        return DsnSMTP(self.handler)


@pytest.fixture
def conf(short_tmp: Path) -> Path:
    path = write_config(short_tmp)
    path.write_text(path.read_text() + HOLD)
    provision(path)
    cli(path, "tenant", "add", "outra", "--owner", "dono@outra.example", "--plan", "plus")
    cli(path, "domain", "add", "outra", "--tenant", "outra")
    activate(path, "outra.helpdesk.example")
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


def daemon(conf: Path, command: str) -> Daemon:
    d = Daemon(conf, command, conf.parent / f"{command}.log")
    d.start()
    return d


def stop(*daemons: Daemon) -> None:
    for d in daemons:
        d.terminate()
        d.close()


@pytest.fixture
def store(conf: Path) -> Iterator[Daemon]:
    d = daemon(conf, "store")
    yield d
    stop(d)


@pytest.fixture
def gateway(conf: Path) -> Iterator[Daemon]:
    d = daemon(conf, "gateway")
    yield d
    stop(d)


def show(conf: Path, number: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli(conf, "ticket", "show", str(number), "--json").stdout)
    return result


def queued(conf: Path, queue_id: str, body: bool = True) -> tuple[dict[str, Any], str]:
    """The gateway's spool entry (JSON) and the message as `queue show --body` prints it."""
    entry = json.loads(cli(conf, "queue", "show", queue_id, "--json").stdout)
    text = cli(conf, "queue", "show", queue_id, *(["--body"] if body else [])).stdout
    return entry, text


def wait_status(
    conf: Path, number: int, index: int, wanted: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message: dict[str, Any] = show(conf, number)["messages"][index]
        if message["status"] == wanted or time.monotonic() > deadline:
            assert message["status"] == wanted, message
            return message


def open_draft(conf: Path, subject: str, body: str) -> str:
    """`ticket new … --no-send`: a ticket whose first message is kept as a draft."""
    new = ["ticket", "new", "--tenant", "marca", "--from", MAILBOX, "--to", CLIENTE]
    return cli(conf, *new, "--subject", subject, "--no-send", input=body).stdout


def test_reply_and_new_ticket_with_the_store_daemon(
    conf: Path, store: Daemon, gateway: Daemon
) -> None:
    with smtplib.LMTP(str(conf.parent / "run" / "store" / "lmtp.sock")) as lmtp:
        lmtp.sendmail(CLIENTE, [MAILBOX], FIRST.encode())
    body = conf.parent / "reply.txt"
    body.write_text("Olá! Seu pedido já saiu.\n")
    pdf = conf.parent / "nota fiscal.pdf"
    pdf.write_bytes(b"%PDF-1.4 nota")
    args = ["--operator", "Ana", "--cc", "Gerente@Example.org", "--attach", str(pdf)]
    result = cli(conf, "ticket", "reply", "1", "--body-file", str(body), *args)
    match = QUEUED_AS.fullmatch(result.stdout.strip().split(": ", 1)[1])
    assert result.stdout.startswith("message 2 on ticket #1: queued as ") and match
    first_id = match[1]
    entry, sent = queued(conf, first_id)
    assert (entry["kind"], entry["mail_from"], entry["ret"]) == ("out", MAILBOX, "HDRS")
    assert re.fullmatch(r"[A-Z0-9]{24}", entry["envid"])
    assert [(r["mailbox"], r["notify"]) for r in entry["recipients"]] == [
        (CLIENTE, "SUCCESS,FAILURE,DELAY"),
        ("gerente@example.org", "SUCCESS,FAILURE,DELAY"),
    ]
    assert "In-Reply-To: <pedido-1@example.com>" in sent
    assert "Subject: Re: Pedido atrasado" in sent
    assert 'filename="nota fiscal.pdf"' in sent

    again = cli(conf, "ticket", "reply", "1", "--operator", "Ana", "--json", input="Mais uma.\n")
    second_id = json.loads(again.stdout)["queue_id"]
    assert QUEUED_AS.fullmatch(f"queued as {second_id}") and second_id != first_id
    ticket = show(conf, 1)
    reply = ticket["messages"][1]
    assert (reply["direction"], reply["status"], reply["queue_id"], reply["operator"]) == (
        "out",
        "queued",
        first_id,
        "Ana",
    )
    assert [(d["recipient"], d["status"]) for d in reply["deliveries"]] == [
        (CLIENTE, "pending"),
        ("gerente@example.org", "pending"),
    ]
    text = cli(conf, "ticket", "show", "1").stdout
    assert "--- message 2 (out, 2 of 3)" in text and "Status:     queued\n" in text
    # A reply the gateway holds says so on its ticket, with where to look.
    cli(conf, "queue", "hold", first_id)
    text = cli(conf, "ticket", "show", "1").stdout
    held = f"Status:     queued: held by an administrator (mxdesk queue show {first_id})\n"
    assert held in text
    replies = show(conf, 1)["messages"][1:]
    assert [m["status_detail"] for m in replies] == [held.split(": ", 2)[2].strip(), ""]
    assert "Delivery:   cliente@example.com  pending" in text and "Operator:   Ana" in text
    listed = cli(conf, "ticket", "list").stdout.splitlines()
    assert listed[0].split()[-3:-1] == ["MESSAGES", "PENDING"] and listed[1].split()[-3:-1] == [
        "3",
        "2",
    ]

    new = ["ticket", "new", "--tenant", "marca", "--from", MAILBOX, "--to", "novo@example.com"]
    opened = cli(conf, *new, "--subject", "Sua fatura", "--operator", "Ana", input="Fatura.\n")
    third = QUEUED_AS.search(opened.stdout)
    assert opened.stdout.startswith("ticket #2 opened: message 4 on ticket #2: queued as ")
    assert third is not None
    _, third_sent = queued(conf, third[1])
    assert "Subject: Sua fatura\n" in third_sent
    assert "In-Reply-To" not in third_sent


def test_a_recipient_refused_at_submission_fails_with_the_reason(conf: Path, store: Daemon) -> None:
    open_draft(conf, "Sua fatura", "Olá!\n")
    server = Refusing(conf.parent / "run" / "gateway" / "submit.sock")
    server.start()
    try:
        refused = cli(
            conf,
            *("ticket", "reply", "1", "--operator", "Ana", "--cc", "recusado@example.org"),
            input="Cópia.\n",
            check=False,
        )
        accepted = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Sem cópia.\n")
    finally:
        server.stop()
    assert refused.returncode == 1
    assert refused.stderr == (
        "mxdesk: message 2 on ticket #1: queued as Q4, but refused by the gateway:"
        " recusado@example.org: 550 5.7.1 Recipient address rejected: refused here\n"
    )
    assert accepted.stdout == "message 3 on ticket #1: queued as Q4\n"

    # Queued in a gateway whose spool does not exist here: the cancel says why it cannot.
    refused = cli(conf, "ticket", "cancel", "3", check=False)
    assert refused.returncode == 1 and "no spool at" in refused.stderr


def test_without_the_store_daemon_the_reply_waits(conf: Path) -> None:
    opened = open_draft(conf, "Bem-vindo", "Olá!\n")
    assert opened == "ticket #1 opened: message 1 on ticket #1: kept as a draft, not sent\n"
    result = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Oi de novo.\n")
    assert result.stdout == (
        "message 2 on ticket #1: stored; the store daemon hands it to the gateway once it runs"
        " (it is not running now: systemctl start mxdesk-store)\n"
    )
    assert [m["status"] for m in show(conf, 1)["messages"]] == ["draft", "new"]
    assert cli(conf, "ticket", "cancel", "2").stdout == "message 2 on ticket #1: cancelled\n"
    for message, error in (("2", "was already cancelled"), ("1", "is a draft")):
        refused = cli(conf, "ticket", "cancel", message, check=False)
        assert refused.returncode == 1 and error in refused.stderr

    waiting = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Terceira.\n")
    assert "message 3 on ticket #1: stored" in waiting.stdout
    store = daemon(conf, "store")
    try:
        wait_status(conf, 1, 2, "new")
        late = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Quarta.\n")
        assert "message 4 on ticket #1: stored" in late.stdout
        assert "(gateway not reachable: " in late.stdout
        gateway = daemon(conf, "gateway")
        try:
            third = wait_status(conf, 1, 3, "queued")
            fourth = wait_status(conf, 1, 2, "queued")
            assert {third["queue_id"], fourth["queue_id"]} <= {
                e["id"] for e in json.loads(cli(conf, "queue", "list", "--json").stdout)
            }
        finally:
            stop(gateway)
    finally:
        stop(store)


def test_errors_are_one_line(conf: Path) -> None:
    open_draft(conf, "x", "x\n")
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
