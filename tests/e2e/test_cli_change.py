"""Changing and removing what was provisioned, as a sysadmin does it with the CLI, with the
daemons running: refusals are one line and exit 1, nothing queued is lost, tickets stay."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for_sync
from daemons import Daemon, cli, free_port, provision, write_config

MAILBOX = "suporte@marca.helpdesk.example"
DOMAIN = "marca.helpdesk.example"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def conf(short_tmp: Path, port: int) -> Path:
    path = write_config(short_tmp, port)
    provision(path)
    cli(path, "operator", "add", "Ana Souza", "--tenant", "marca")
    return path


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One installation for the commands that change nothing."""
    path = write_config(tmp_path_factory.mktemp("refusals"))
    provision(path)
    return path


def start(conf: Path, command: str) -> Daemon:
    d = Daemon(conf, command, conf.parent / f"{command}.log")
    d.start()
    return d


@pytest.fixture
def daemons(conf: Path) -> Iterator[list[Daemon]]:
    running = [start(conf, "store"), start(conf, "gateway")]
    yield running
    for d in running:
        d.terminate()
        d.close()


def refused(conf: Path, *args: str) -> str:
    result = cli(conf, *args, check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def send(port: int, rcpt: str, *headers: str) -> None:
    message = "\r\n".join(["From: cliente@example.com", f"To: {rcpt}", *headers]) + "\r\n\r\nOi\r\n"
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.sendmail("cliente@example.com", [rcpt], message.encode())


def rcpt_reply(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("cliente@example.com")
        return smtp.rcpt(rcpt)


def tickets(conf: Path, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(cli(conf, "ticket", "list", "--json", *args).stdout)
    return found


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenant", "show", "naoexiste"], "no tenant 'naoexiste'"),
        (["tenant", "disable", "naoexiste"], "no tenant 'naoexiste'"),
        (["tenant", "set", "marca"], "nothing to change"),
        (["tenant", "set", "marca", "--plan", "basic"], "which the basic plan does not allow"),
        (["mailbox", "list", "--tenant", "naoexiste"], "no tenant 'naoexiste'"),
        (["operator", "list", "--tenant", "naoexiste"], "no tenant 'naoexiste'"),
        (["ticket", "list", "--tenant", "naoexiste"], "no tenant 'naoexiste'"),
        (["mailbox", "show", "ninguem@marca.helpdesk.example"], "no mailbox ninguem@"),
        (["mailbox", "remove", "marca@helpdesk.example"], "default inbox of tenant 'marca'"),
        (["domain", "remove", DOMAIN], "still has 1 mailbox (suporte@marca.helpdesk.example)"),
        (["domain", "disable", "nada.helpdesk.example"], "no domain 'nada.helpdesk.example'"),
        (["operator", "remove", "Bia", "--tenant", "marca"], "no operator 'Bia'"),
        (["operator", "set", "Ana Souza", "--tenant", "marca"], "nothing to change"),
        (["ticket", "close", "7"], "no tickets yet"),
    ],
)
def test_refusals_are_one_line_and_exit_1(provisioned: Path, args: list[str], message: str) -> None:
    assert message in refused(provisioned, *args)


def test_tenant_remove_refuses_then_force_keeps_the_tickets(conf: Path, port: int) -> None:
    store, gateway = start(conf, "store"), start(conf, "gateway")
    try:
        send(port, MAILBOX, "Subject: Pedido", "Message-ID: <p1@example.com>")
        wait_for_sync(lambda: tickets(conf, "--tenant", "marca"), what="the ticket")
    finally:
        for d in (gateway, store):
            d.terminate()
            d.close()
    line = refused(conf, "tenant", "remove", "marca")
    assert "1 domain (marca.helpdesk.example), 1 mailbox and 1 open ticket" in line
    assert "--force" in line
    keys = list((conf.parent / "state" / "dkim" / DOMAIN).iterdir())
    assert keys
    out = cli(conf, "tenant", "remove", "marca", "--force").stdout
    assert "tenant marca removed with 1 domain (marca.helpdesk.example), 2 mailboxes" in out
    assert "kept in the tickets database: 1 ticket" in out
    assert "DNS records of its domains stay" in out
    assert not any(k.exists() for k in keys)
    assert json.loads(cli(conf, "tenant", "list", "--json").stdout) == []
    assert json.loads(cli(conf, "domain", "list", "--json").stdout) == []
    # The history is still there, under the slug it was filed with.
    assert [t["subject"] for t in tickets(conf, "--tenant", "marca")] == ["Pedido"]
    # A new customer never gets that history: the slug is not given out again.
    line = refused(conf, "tenant", "add", "Marca", "--owner", "nova@outra.example")
    assert line == (
        "mxdesk: tenant slug 'marca' belonged to a removed tenant whose 1 ticket tickets.db"
        " keeps under that name: choose another slug"
    )
    assert json.loads(cli(conf, "tenant", "list", "--json").stdout) == []
    cli(conf, "tenant", "add", "marca2", "--owner", "nova@outra.example")


def test_nothing_queued_is_removed(conf: Path, port: int) -> None:
    """The store is down: the gateway keeps the accepted mail queued, and removals wait."""
    gateway = start(conf, "gateway")
    try:
        send(port, MAILBOX, "Subject: Na fila")
        for args, what in (
            (["mailbox", "remove", MAILBOX, "--force"], f"mailbox {MAILBOX}"),
            (["tenant", "remove", "marca", "--force"], "tenant 'marca'"),
        ):
            line = refused(conf, *args)
            assert f"{what} still has 1 message in the queue" in line
            assert "mxdesk queue list" in line
        assert cli(conf, "mailbox", "show", MAILBOX).stdout.count("queued: 1 message") == 1
    finally:
        gateway.terminate()
        gateway.close()


def test_disable_enable_and_set_while_the_daemons_run(
    conf: Path, port: int, daemons: list[Daemon]
) -> None:
    assert (
        "mailbox suporte@marca.helpdesk.example disabled"
        in cli(conf, "mailbox", "disable", MAILBOX).stdout
    )
    code, text = rcpt_reply(port, MAILBOX)
    assert (code, text[:5]) == (550, b"5.1.1")
    assert cli(conf, "mailbox", "show", MAILBOX, "--json").stdout.count('"active": false') == 1
    cli(conf, "mailbox", "enable", MAILBOX)
    assert rcpt_reply(port, MAILBOX)[0] == 250

    cli(conf, "domain", "disable", DOMAIN)
    assert rcpt_reply(port, MAILBOX)[0] == 550
    listed = cli(conf, "domain", "list").stdout
    assert DOMAIN in listed and "disabled" in listed
    out = cli(conf, "domain", "enable", DOMAIN).stdout
    assert "propagating" in out
    assert "enable it first" not in cli(conf, "domain", "activate", DOMAIN, "--force").stderr

    cli(conf, "tenant", "disable", "marca")
    assert rcpt_reply(port, "marca@helpdesk.example")[0] == 550
    shown = json.loads(cli(conf, "tenant", "show", "marca", "--json").stdout)
    assert shown["tenant"]["status"] == "disabled"
    assert [d["name"] for d in shown["domains"]] == [DOMAIN]
    cli(conf, "tenant", "enable", "marca")
    assert rcpt_reply(port, "marca@helpdesk.example")[0] == 250

    cli(conf, "tenant", "set", "marca", "--owner", "nova@marca.example", "--plan", "premium")
    cli(conf, "mailbox", "set", MAILBOX, "--name", "Atendimento Marca")
    cli(conf, "operator", "set", "Ana Souza", "--tenant", "marca", "--name", "Ana S. Souza")
    tenant = json.loads(cli(conf, "tenant", "list", "--json").stdout)[0]
    assert (tenant["owner"], tenant["plan"]) == ("nova@marca.example", "premium")
    box = json.loads(cli(conf, "mailbox", "show", MAILBOX, "--json").stdout)["mailbox"]
    assert box["name"] == "Atendimento Marca"
    assert "Ana S. Souza" in cli(conf, "operator", "list", "--tenant", "marca").stdout


def test_close_reopen_and_a_customer_answer_reopens(
    conf: Path, port: int, daemons: list[Daemon]
) -> None:
    send(port, MAILBOX, "Subject: Impressora", "Message-ID: <p1@example.com>")
    (ticket,) = wait_for_sync(lambda: tickets(conf), what="the ticket")
    number = str(ticket["number"])
    assert ticket["status"] == "open"
    assert cli(conf, "ticket", "close", number).stdout == f"ticket #{number} closed\n"
    assert "was closed already" in cli(conf, "ticket", "close", number).stdout
    assert [t["number"] for t in tickets(conf, "--status", "closed")] == [ticket["number"]]
    assert tickets(conf, "--status", "open") == []
    assert "no open tickets" in cli(conf, "ticket", "list", "--status", "open").stdout
    table = cli(conf, "ticket", "list").stdout
    assert "closed" in table.splitlines()[1]
    send(port, MAILBOX, "Subject: Re: Impressora", "In-Reply-To: <p1@example.com>")
    wait_for_sync(lambda: tickets(conf, "--status", "open"), what="the ticket reopened")
    assert len(tickets(conf)) == 1
    cli(conf, "ticket", "close", number)
    assert cli(conf, "ticket", "reopen", number).stdout == f"ticket #{number} reopened\n"
    assert "no ticket #99" in refused(conf, "ticket", "reopen", "99")


def test_domain_remove_lists_the_records_left_in_the_zone(conf: Path) -> None:
    cli(conf, "mailbox", "remove", MAILBOX)
    keys = list((conf.parent / "state" / "dkim" / DOMAIN).iterdir())
    out = cli(conf, "domain", "remove", DOMAIN).stdout
    assert f"domain {DOMAIN} removed with its DKIM keys" in out
    assert "its DNS records stay: remove them from the zone" in out
    assert f"_dmarc.{DOMAIN} TXT" in out and f"{DOMAIN} MX" in out
    assert not any(k.exists() for k in keys)
    assert json.loads(cli(conf, "domain", "list", "--json").stdout) == []
