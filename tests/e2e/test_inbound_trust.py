"""Inbound trust end to end, the daemons started from a config file: a forged customer cannot
slip into their ticket with a [#N] tag while the genuine, DKIM-signed customer can; and clients
that resend after a lost 250 while the daemons are killed get each message filed exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import smtplib
import sqlite3
from collections import Counter
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import wait_for, wait_for_sync
from daemons import Daemon, cli, free_port, provision, write_config
from dns_server import DnsServer
from wire import send_message

from mxdesk.gateway.dkim import generate_key, load_key
from mxdesk.gateway.queuectl import list_entries
from mxdesk.store.verdicts import read_verdicts

HOST = "mx.helpdesk.example"
MAILBOX = "suporte@marca.helpdesk.example"
VENDAS = "vendas@marca.helpdesk.example"
CUSTOMER = "cliente@cliente.example"
SELECTOR = "s1"
MESSAGES = int(os.environ.get("MXDESK_RESEND_CRASH_MESSAGES", "600"))
PARALLEL = 20
# What the gateway writes for these messages when it checks them against the records below;
# the test puts it in itself only while the gateway does not (it is being built alongside).
GENUINE_AR = (
    f"Authentication-Results: {HOST};\r\n\tspf=pass smtp.mailfrom={CUSTOMER};\r\n"
    f"\tdkim=pass header.d=cliente.example header.s={SELECTOR} header.a=rsa-sha256;\r\n"
    "\tdmarc=pass header.from=cliente.example policy.dmarc=quarantine;\r\n\tarc=none\r\n"
)
FORGED_AR = (
    f"Authentication-Results: {HOST};\r\n\tspf=none smtp.mailfrom=eve@evil.example;\r\n"
    "\tdkim=none;\r\n\tdmarc=fail header.from=cliente.example policy.dmarc=quarantine;\r\n"
    "\tarc=none\r\n"
)


class Site:
    """Gateway and store from one config file; a DNS server with the customer domain's SPF,
    DKIM (a key of its own) and DMARC (p=quarantine: a forgery is accepted and flagged)."""

    def __init__(self, root: Path) -> None:
        # The address the gateway asks: port 53 of a loopback address of our own.
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        self.dns = DnsServer(host=host, port=53)
        pem = generate_key("rsa")
        self.key_pem = pem
        txt = load_key(pem, "cliente.example", SELECTOR).dns_txt()
        chunks = " ".join(f'"{txt[i : i + 255]}"' for i in range(0, len(txt), 255))
        self.dns.add(f"{SELECTOR}._domainkey.cliente.example", "TXT", chunks)
        self.dns.add("cliente.example", "TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')
        self.dns.add("_dmarc.cliente.example", "TXT", '"v=DMARC1; p=quarantine"')
        self.port = free_port()
        auth = f'inbound_auth = {{ nameservers = ["{host}:53"] }}'
        self.config = write_config(root, self.port, auth)
        provision(self.config)
        cli(self.config, "mailbox", "add", VENDAS, "--name", "Vendas Marca")
        self.tickets_db = root / "state" / "tickets.db"
        self.store = Daemon(self.config, "store", root / "store.log")
        self.gateway = Daemon(self.config, "gateway", root / "gateway.log")
        self.store.start()
        self.gateway.start()

    def close(self) -> None:
        for daemon in (self.gateway, self.store):
            if daemon.proc is not None and daemon.proc.poll() is None:
                assert daemon.terminate() == 0
            daemon.close()
        self.dns.close()

    def query(self, sql: str, *args: object) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.tickets_db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            conn.close()

    def show(self, ticket: int) -> str:
        return cli(self.config, "ticket", "show", str(ticket)).stdout


@pytest.fixture
def site(short_tmp: Path) -> Iterator[Site]:
    s = Site(short_tmp)
    yield s
    s.close()


def signed(site: Site, subject: str, n: int) -> bytes:
    head = (
        f"From: Cliente <{CUSTOMER}>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: <c{n}@cliente.example>\r\n"
    )
    message = f"{head}\r\nMensagem {n} do cliente.\r\n".encode()
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    return bytes(
        dkim.sign(
            message, SELECTOR.encode(), b"cliente.example", site.key_pem, include_headers=headers
        )
        + message
    )


def send(site: Site, sender: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", site.port, timeout=30) as smtp:
        smtp.ehlo("mail.cliente.example")
        smtp.mail(sender)
        code, text = smtp.rcpt(MAILBOX)
        assert code == 250, text
        return smtp.data(data)


def test_a_forged_customer_opens_a_marked_ticket_the_signed_customer_joins(site: Site) -> None:
    assert send(site, CUSTOMER, signed(site, "Pedido 42 atrasado", 1))[0] == 250
    (first,) = wait_for_sync(lambda: site.query("SELECT ticket, raw FROM messages"), 30)
    ticket = int(first["ticket"])
    by_gateway = read_verdicts(first["raw"], HOST) is not None
    print(f"\nverdicts {'by the gateway' if by_gateway else 'inserted by the test'}")
    genuine_ar = b"" if by_gateway else GENUINE_AR.encode()
    forged_ar = b"" if by_gateway else FORGED_AR.encode()

    # The customer again, DKIM-signed by their domain, with the ticket's tag: joins.
    tagged = genuine_ar + signed(site, f"Re: [#{ticket}] Pedido 42 atrasado", 2)
    assert send(site, CUSTOMER, tagged)[0] == 250
    # A forgery of the customer's From: with the tag, unsigned, from another envelope sender,
    # carrying a header that claims our verdicts (the gateway removes it; it is not on top).
    forgery = (
        forged_ar
        + (
            f"Authentication-Results: {HOST}; dmarc=pass header.from=cliente.example\r\n"
            f"From: Cliente <{CUSTOMER}>\r\nTo: {MAILBOX}\r\n"
            f"Subject: [#{ticket}] mude o endereço de entrega\r\nDate: {formatdate()}\r\n"
            "Message-ID: <f1@evil.example>\r\n\r\nNovo endereço: Rua Falsa, 123.\r\n"
        ).encode()
    )
    code, reply = send(site, "eve@evil.example", forgery)
    assert code == 250, reply
    rows = wait_for_sync(
        lambda: (
            len(found := site.query("SELECT ticket, message_id FROM messages ORDER BY id")) == 3
            and found
        ),
        30,
        "three messages",
    )
    placed = {r["message_id"]: int(r["ticket"]) for r in rows}
    assert placed["<c2@cliente.example>"] == ticket
    marked = placed["<f1@evil.example>"]
    assert marked != ticket

    shown = site.show(ticket)
    assert "mude o endereço" not in shown
    assert shown.count("dmarc=pass (cliente.example, p=quarantine)") == (2 if by_gateway else 1)
    other = site.show(marked)
    print(other)
    assert "flags:      unverified claim" in other
    assert f"note:       claims to belong to #{ticket} — sender not verified" in other
    assert "Flags:      unverified sender" in other
    assert "dmarc=fail (cliente.example, p=quarantine)" in other


async def test_kill_9_with_clients_resending_files_each_message_once(site: Site) -> None:
    """Like tests/e2e/test_crash.py, but the clients resend the same message (same Message-ID,
    same bytes) whenever they did not get a 250, to two mailboxes of the tenant, and the store
    is killed too now and then."""
    accepted: list[str] = []
    attempts = Counter[str]()
    not_accepted = Counter[str]()
    kills = Counter[str]()
    done = asyncio.Event()
    running = asyncio.Event()
    running.set()
    rng = random.Random(int(os.environ.get("MXDESK_CRASH_SEED", "2026")))
    date = formatdate()

    async def client(worker: int) -> None:
        for i in range(worker, MESSAGES, PARALLEL):
            await running.wait()  # no new message while a daemon restarts (resends go on)
            data = (
                f"From: <c{i}@cliente.example>\r\nTo: {MAILBOX}, {VENDAS}\r\n"
                f"Subject: carga {i}\r\nDate: {date}\r\nMessage-ID: <m{i}@cliente.example>\r\n"
                f"\r\n{i}\r\n"
            ).encode()
            for attempt in range(2000):
                attempts["resent" if attempt else "sent"] += 1
                try:
                    reply = await send_message(
                        site.port, f"c{i}@cliente.example", [MAILBOX, VENDAS], data
                    )
                except (OSError, ConnectionError, TimeoutError) as exc:
                    not_accepted[type(exc).__name__] += 1
                    await asyncio.sleep(0.02)  # the client's own retry pause
                    continue
                if reply.startswith("250"):
                    accepted.append(reply.split()[-1])
                    break
                not_accepted[reply[:3]] += 1
                if reply.startswith("5"):
                    raise AssertionError(f"message {i} refused: {reply}")
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"message {i}: no 250 after 2000 attempts")

    async def killer() -> None:
        # Kills follow the load's progress, not the clock, so that a fast machine cannot
        # finish between two of them: one after each eighth of the messages has its 250, at
        # a random moment within it; the third and the sixth kill the store instead.
        for n in range(1, 8):
            mark = n * MESSAGES // 8 + rng.randrange(MESSAGES // 16)
            while len(accepted) < mark and not done.is_set():
                await asyncio.sleep(0.005)
            if done.is_set():
                break
            daemon = site.store if n % 3 == 0 else site.gateway
            # The gateway accepts while the store restarts: without a pause the load could
            # end before the next kill on a fast machine.
            running.clear()
            await asyncio.to_thread(daemon.kill9)
            kills[daemon.command] += 1
            await asyncio.to_thread(daemon.start)
            running.set()

    killing = asyncio.create_task(killer())
    try:
        await asyncio.gather(*(client(w) for w in range(PARALLEL)))
    finally:
        done.set()
        await killing
    spool = site.config.parent / "state" / "spool.db"
    await wait_for(lambda: not list_entries(spool), timeout=180, what="the spool to drain")

    rows = site.query("SELECT ticket, queue_id, message_id, recipient FROM messages")
    dups = site.query("SELECT queue_id, recipient FROM duplicates")
    per_id = Counter(r["message_id"] for r in rows)
    stored_ids = {r["queue_id"] for r in rows}
    dup_ids = {r["queue_id"] for r in dups}
    resent_copies = len(dup_ids - stored_ids)
    lost = [q for q in accepted if q not in stored_ids | dup_ids]
    report: dict[str, Any] = {
        "kills": dict(kills),
        "250": len(accepted),
        "attempts": dict(attempts),
        "not accepted": dict(not_accepted),
        "messages stored": len(rows),
        "tickets": len({r["ticket"] for r in rows}),
        "copies for the second mailbox": sum(r["recipient"] == VENDAS for r in dups),
        "resent copies filed once": resent_copies,
    }
    print(f"\nkill -9 with resending clients: {report}")
    assert kills["gateway"] >= 3
    assert not lost, f"{len(lost)} accepted messages neither stored nor recognised"
    assert set(per_id) == {f"<m{i}@cliente.example>" for i in range(MESSAGES)}
    assert [m for m, n in per_id.items() if n != 1] == []
    assert all(r["recipient"] == MAILBOX for r in rows)
