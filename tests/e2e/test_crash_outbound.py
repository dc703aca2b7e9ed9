"""kill -9 of the gateway while it delivers replies: every submitted message reaches the sink.

Invariant 2 on the outbound side: an entry leaves the spool only after the remote 250; a kill
between that 250 and the spool's record of it may deliver a message twice, never zero times.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections import Counter
from pathlib import Path

import aiosmtplib
from conftest import require_real, wait_for
from daemons import Daemon, activate, cli, write_config
from dns_server import DnsServer
from sink import Sink

from mxdesk.config import OUTBOUND_RETRY
from mxdesk.gateway.queuectl import list_entries

MESSAGES = int(os.environ.get("MXDESK_CRASH_OUT_MESSAGES", "1000"))
SENDER = "suporte@marca.helpdesk.example"
CLIENTS = 10


async def submit(socket_path: Path, i: int) -> None:
    """One reply, submitted like the store does; retried while the gateway is down."""
    body = f"From: {SENDER}\r\nTo: c{i}@example.com\r\nSubject: carga {i}\r\n\r\n{i}\r\n"
    for _ in range(600):
        try:
            smtp = aiosmtplib.SMTP(socket_path=str(socket_path), timeout=10)
            await smtp.connect()
            try:
                await smtp.sendmail(SENDER, [f"c{i}@example.com"], body.encode())
            finally:
                smtp.close()
            return
        except (OSError, aiosmtplib.SMTPException):
            await asyncio.sleep(0.05)
    raise AssertionError(f"message {i} never accepted")


async def submit_all(socket_path: Path, count: int, clients: int, pause: float = 0.0) -> None:
    """count replies "carga 0" to "carga count-1", clients at a time, each client pausing
    between its messages."""
    sem = asyncio.Semaphore(clients)

    async def one(i: int) -> None:
        async with sem:
            await submit(socket_path, i)
            await asyncio.sleep(pause)

    await asyncio.gather(*(one(i) for i in range(count)))


async def test_kill_9_while_delivering_loses_no_reply(short_tmp: Path) -> None:
    require_real("smtp-sink")
    dns = DnsServer()
    dns.add("example.com", "MX", "10 mx.example.com.").add("mx.example.com", "A", "127.0.0.1")
    sink = Sink(short_tmp)
    config = write_config(short_tmp)
    config.write_text(
        config.read_text() + f"\n[gateway.outbound]\nsend_delay = 0.0\nsmtp_port = {sink.port}\n"
        f'nameservers = ["127.0.0.1:{dns.port}"]\n'
        "\n[gateway.outbound_retry]\ninitial = 0.2\nmaximum = 0.5\n"
    )
    for args in (
        ("init",),
        ("tenant", "add", "marca", "--owner", "dono@marca.example", "--plan", "plus"),
        ("domain", "add", "marca", "--tenant", "marca"),
        ("mailbox", "add", SENDER, "--name", "Suporte Marca"),
    ):
        cli(config, *args)
    activate(config, "marca.helpdesk.example")
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    gateway.start()
    socket_path = short_tmp / "run" / "gateway" / "submit.sock"
    kills = 0
    done = asyncio.Event()
    rng = random.Random(int(os.environ.get("MXDESK_CRASH_SEED", "2026")))

    async def killer() -> None:
        nonlocal kills
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            if done.is_set():
                return
            gateway.kill9()
            kills += 1
            await asyncio.to_thread(gateway.start)

    try:
        chaos = asyncio.create_task(killer())
        await submit_all(socket_path, MESSAGES, CLIENTS)
        done.set()
        await chaos
        spool = short_tmp / "state" / "spool.db"
        await wait_for(lambda: not list_entries(spool), timeout=120, what="the spool to drain")
        received = Counter(
            m[1].decode()
            for dump in sink.messages()
            if (m := re.search(rb"^Subject: (carga \d+)$", dump, re.M))
        )
        missing = [i for i in range(MESSAGES) if received[f"carga {i}"] == 0]
        twice = sum(n - 1 for n in received.values() if n > 1)
        print(
            f"\n{kills} kills, {MESSAGES} submitted, {sum(received.values())} received, "
            f"{len(missing)} missing, {twice} received twice"
        )
        assert kills >= 2
        assert missing == []
        # A second copy comes only from a delivery in flight at a kill (at most the outbound
        # concurrency) or a client that resends after its 250 was lost (at most the clients).
        assert twice <= kills * (OUTBOUND_RETRY.concurrency + CLIENTS)
    finally:
        done.set()
        gateway.close()
        sink.close()
        dns.close()
