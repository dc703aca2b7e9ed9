"""A company mailbox on a real Dovecot read into tickets by the gateway, as a sysadmin sets it up:
IDLE, mail read elsewhere, UIDVALIDITY changes, POP3 long lines, oversize mail, a changed password,
and replies from the channel's address."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_real, wait_for_sync
from daemons import cli
from dovecot_mail import REQUIRED_PROGRAMS, MailServer
from replysite import Site
from wire import stored_messages

from mxdesk.gateway.fetch.ledger import read_statuses

DOMAIN = "empresa.example"
NAMES = ("idle", "validade", "pop", "senha", "pastas", "certificado")
USERS = {f"{n}@{DOMAIN}": f"s3nha-{n}" for n in NAMES}
CHANNELS = """
[channels]
poll_interval = 0.5
idle_heartbeat = 30
timeout = 5
retry_initial = 0.2
retry_max = 1
auth_retry = 1
alert_after = 60
"""
LIMIT = 200_000

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def mail() -> Iterator[MailServer]:
    for program in (*REQUIRED_PROGRAMS, "smtp-sink"):
        require_real(program)
    with MailServer(USERS) as srv:
        yield srv


@pytest.fixture
def site(short_tmp: Path) -> Iterator[Site]:
    site = Site(
        short_tmp,
        send_delay=0,
        sink_flags=(),
        extra=CHANNELS,
        gateway_extra=f"max_message_size = {LIMIT}",
    )
    site.dns.add("marca.example", "MX", "10 mx.example.com.")
    yield site
    site.close()


def message(
    n: int, subject: str = "", body: str = "", sender: str = "cliente@example.com"
) -> bytes:
    return (
        f"From: Cliente <{sender}>\r\nTo: x@{DOMAIN}\r\nSubject: {subject or f'pedido {n}'}\r\n"
        f"Message-ID: <m{n}.{time.time_ns()}@example.com>\r\nDate: Wed, 02 Dec 2026 10:00:00"
        f" +0000\r\n\r\n{body or f'corpo {n}'}\r\n"
    ).encode()


def add_channel(
    site: Site, mail: MailServer, name: str, *args: str, ca: bool = True, login: str = ""
) -> str:
    """Adds the channel of name@DOMAIN (logging in as login@DOMAIN when given), its password
    on stdin; ca: verify the server against the test CA (else the system's CAs)."""
    address, login = f"{name}@{DOMAIN}", f"{login or name}@{DOMAIN}"
    protocol = "pop3" if "pop3" in args else "imap"
    port = {"imap": mail.imaps_port, "pop3": mail.pop3s_port}[protocol]
    options = ["--ca-file", str(mail.ca_file)] if ca else []
    cli(
        site.config,
        *("channel", "add", "--tenant", "marca", "--address", address, "--user", login),
        *("--host", "127.0.0.1", "--port", str(port), *options, "--password-stdin", *args),
        input=USERS[login] + "\n",
    )
    return address


def channel(site: Site, name: str) -> dict[str, Any]:
    shown: dict[str, Any] = site.json("channel", "show", name)
    return shown


def started(site: Site, name: str, state: str = "idle") -> None:
    wait_for_sync(lambda: channel(site, name)["state"] == state, 30, f"{name} to be {state}")


def looked_again(site: Site, name: str, times: int = 2) -> None:
    """Waits until the fetcher has finished `times` more looks at the mailbox (a negative check
    then means something: nothing more arrived although it looked)."""
    spool = site.root / "state" / "spool.db"

    def last() -> float:
        return float(str(read_statuses(spool)[name]["last_success"]))

    for _ in range(times):
        before = last()
        wait_for_sync(lambda b=before: last() > b, 30, "another look")  # type: ignore[misc]


def queue_empty(site: Site) -> bool:
    return not site.json("queue", "list")


def failures(site: Site, name: str) -> int:
    text = (site.root / "gateway.log").read_text(errors="replace")
    return text.count(f"channel={name} failed")


def subjects(site: Site) -> list[str]:
    return [row["subject"] for row in stored_messages(site.root / "state" / "tickets.db")]


def test_idle_push_mail_read_elsewhere_and_a_reply_from_the_channel_address(
    site: Site, mail: MailServer
) -> None:
    name = add_channel(site, mail, "idle", "--sender-name", "Suporte Empresa")
    mail.deliver(name, message(0, "antes"))  # there before the first look: the past
    started(site, name)
    t0 = time.monotonic()
    mail.deliver(name, message(1, "chegou agora"))
    wait_for_sync(lambda: "chegou agora" in subjects(site), 20, "the IDLE push to a ticket")
    latency = time.monotonic() - t0
    print(f"IDLE: saved in Dovecot -> ticket in {latency:.2f} s")
    mail.deliver(name, message(2, "lido no webmail"))
    mail.set_flags(name, "\\Seen")  # another client read it before mxdesk looked
    wait_for_sync(lambda: "lido no webmail" in subjects(site), 20, "the seen message")
    assert "antes" not in subjects(site)
    assert mail.status(name)["messages"] == 3  # --after keep: nothing changed there
    shown = channel(site, name)
    assert shown["fetched"] == 2 and shown["last_success"]
    listed = site.json("channel", "list")
    assert [c["state"] for c in listed] == ["idle"]
    # The ticket's mailbox is the channel's address: the reply goes out From: it.
    tickets = site.json("ticket", "list")
    site.reply(int(tickets[0]["number"]))
    sent = wait_for_sync(site.sink.messages, 30, "the reply at the sink")
    assert b"From: Suporte Empresa <idle@empresa.example>" in sent[0]
    assert b"d=helpdesk.example" in sent[0]


def test_uidvalidity_change_makes_no_duplicate(site: Site, mail: MailServer) -> None:
    name = add_channel(site, mail, "validade")
    started(site, name)
    for n in range(3):
        mail.deliver(name, message(n, f"validade {n}"))
    wait_for_sync(lambda: len(subjects(site)) == 3, 20, "three tickets")
    mail.change_uidvalidity(name, 4242)
    mail.kick(name)  # the fetcher reconnects and sees the new UIDVALIDITY
    mail.deliver(name, message(9, "depois da troca"))
    wait_for_sync(lambda: "depois da troca" in subjects(site), 30, "the message after the change")
    # A marker after the rescan: once it is a ticket and the queue is empty, a duplicate of
    # the rescan would be a ticket too.
    mail.deliver(name, message(10, "marcador"))
    wait_for_sync(lambda: "marcador" in subjects(site), 30, "the marker")
    wait_for_sync(lambda: queue_empty(site), 20, "the queue to empty")
    assert sorted(subjects(site)) == sorted(
        [f"validade {n}" for n in range(3)] + ["depois da troca", "marcador"]
    )


def test_pop3_long_line_oversize_skipped_once_and_delete(site: Site, mail: MailServer) -> None:
    name = add_channel(site, mail, "pop", "--protocol", "pop3", "--after", "delete")
    wait_for_sync(lambda: channel(site, name)["last_success"], 30, "the first POP3 look")
    mail.deliver(name, message(1, "linha longa", "x" * 10_000))
    mail.deliver(name, message(2, "grande", "y" * (LIMIT + 1000)))
    mail.deliver(name, message(3, "depois"))
    wait_for_sync(lambda: "depois" in subjects(site), 30, "the POP3 tickets")
    assert sorted(subjects(site)) == ["depois", "linha longa"]
    wait_for_sync(lambda: mail.status(name)["messages"] == 1, 60, "the fetched ones deleted")
    shown = channel(site, name)
    assert shown["skipped"] == 1 and "larger than the limit" in shown["note"]
    wait_for_sync(site.sink.messages, 30, "the oversize alert")
    looked_again(site, name)  # more looks at the mailbox: no second alert, no ticket
    wait_for_sync(lambda: queue_empty(site), 20, "the queue to empty")
    alerts = site.sink.messages()
    assert len(alerts) == 1 and b"too large" in alerts[0]
    assert b"owner@" not in alerts[0] and b"dono@marca.example" in alerts[0]
    assert sorted(subjects(site)) == ["depois", "linha longa"]


def test_changed_password_one_alert_then_one_recovery_mail(site: Site, mail: MailServer) -> None:
    name = add_channel(site, mail, "senha")
    started(site, name)
    mail.set_password(name, "trocada")
    mail.kick(name)
    # The kick ends the session (a first, temporary failure); the next login is refused.
    failing = wait_for_sync(
        lambda: (
            (c := channel(site, name))["state"] == "failing"
            and "AUTHENTICATIONFAILED" in c["last_error"]
            and c
        ),
        30,
        "the refused login",
    )
    assert USERS[name] not in failing["last_error"] and "trocada" not in failing["last_error"]
    out = cli(site.config, "channel", "list").stdout
    assert "failing" in out
    status = cli(site.config, "status", check=False).stdout
    assert "channels failing:" in status and name in status
    wait_for_sync(lambda: len(site.sink.messages()) == 1, 30, "the alert")
    seen = failures(site, name)
    wait_for_sync(lambda: failures(site, name) >= seen + 3, 30, "three more failed logins")
    wait_for_sync(lambda: queue_empty(site), 20, "the queue to empty")
    assert len(site.sink.messages()) == 1
    assert b"cannot be read" in site.sink.messages()[0]
    cli(site.config, "channel", "password", name, "--password-stdin", input="trocada\n")
    started(site, name)
    mails = wait_for_sync(
        lambda: len(site.sink.messages()) == 2 and site.sink.messages(), 30, "recovery"
    )
    assert sorted(b"is read again" in m for m in mails) == [False, True]
    mail.deliver(name, message(5, "depois da senha"))
    wait_for_sync(lambda: "depois da senha" in subjects(site), 20, "mail after the fix")


def test_folder_with_accents_move_after_fetch_and_channel_test(
    site: Site, mail: MailServer
) -> None:
    name = add_channel(
        site, mail, "pastas", "--folder", "Suporte/Ação", "--after", "move:Arquivo/Concluído"
    )
    mail.deliver(name, message(0, "ja estava"), folder="Suporte/Ação")
    test = cli(site.config, "channel", "test", name).stdout
    assert "ok    login" in test and "Suporte/Ação: 1 messages" in test and "IDLE (push)" in test
    started(site, name)
    mail.deliver(name, message(1, "na pasta"), folder="Suporte/Ação")
    mail.deliver(
        name, message(2, "binário \x00 e cabeçalho quebrado\r\nX-Quebrado"), folder="Suporte/Ação"
    )
    wait_for_sync(lambda: len(subjects(site)) == 2, 20, "two tickets from the folder")
    wait_for_sync(
        lambda: mail.status(name, "Arquivo/Concluído")["messages"] == 2, 20, "the moved messages"
    )
    assert mail.status(name, "Suporte/Ação")["messages"] == 1  # the one from before stays
    add_channel(site, mail, "x", "--folder", "Não existe", login="pastas")
    failed = cli(site.config, "channel", "test", f"x@{DOMAIN}", check=False)
    assert failed.returncode == 1
    assert "ok    login" in failed.stdout and "FAIL  folder" in failed.stdout


def test_certificate_error_names_the_host_and_is_told_at_once(site: Site, mail: MailServer) -> None:
    address = add_channel(site, mail, "certificado", ca=False)
    failing = wait_for_sync(
        lambda: (c := channel(site, address))["state"] == "failing" and c, 30, "the TLS failure"
    )
    assert "127.0.0.1" in failing["last_error"] and "certificate" in failing["last_error"]
    alert = wait_for_sync(site.sink.messages, 30, "the alert, without waiting alert_after")
    assert b"certificate" in alert[0]
    test = cli(site.config, "channel", "test", address, check=False)
    assert test.returncode == 1 and "FAIL  connect" in test.stdout
    # The sysadmin decides the server is theirs and turns verification off.
    cli(site.config, "channel", "remove", address)
    add_channel(site, mail, "certificado", "--tls-verify", "off", ca=False)
    assert "tls-verify: off" in cli(site.config, "channel", "show", address).stdout
    started(site, address)
