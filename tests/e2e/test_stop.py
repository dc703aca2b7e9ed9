"""Stopping the gateway while its peers do not answer: the stop is bounded, nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import wait_for
from daemons import Daemon, config_with_remote_mx
from dns_server import DnsServer
from spoolfiles import seed_entry
from wire import filing_lmtp_server

from mxdesk.config import load
from mxdesk.gateway.queuectl import list_entries
from mxdesk.gateway.runner import STOP_GRACE

MAILBOX = "suporte@marca.helpdesk.example"
Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter


async def test_sigterm_interrupts_deliveries_to_peers_that_stopped_answering(
    short_tmp: Path,
) -> None:
    """A store that accepted the LMTP connection and a remote MX that accepted the SMTP
    connection, neither ever answering (the LMTP timeout is 60 s, the SMTP one 300 s): SIGTERM
    stops the gateway within STOP_GRACE and a few seconds, with exit 0, both entries still
    in the spool; the next start hands the inbound one to a store that answers."""
    peers: list[asyncio.StreamWriter] = []
    silent_lmtp, silent_mx = asyncio.Event(), asyncio.Event()

    def silent(connected: asyncio.Event) -> Callable[[Reader, Writer], Awaitable[None]]:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer)  # accepts, never greets, never reads
            connected.set()

        return accept

    remote = await asyncio.start_server(silent(silent_mx), "127.0.0.1", 0)
    dns = DnsServer()
    config = config_with_remote_mx(short_tmp, remote.sockets[0].getsockname()[1], dns)
    lmtp_socket = load(config).store.lmtp_socket
    lmtp_socket.parent.mkdir(parents=True, exist_ok=True)
    store = await asyncio.start_unix_server(silent(silent_lmtp), str(lmtp_socket))
    spool = short_tmp / "state" / "spool.db"
    inbound = seed_entry(
        spool, "in", "c@cliente.example", [(MAILBOX, "marca", "pending")],
        b"From: c@cliente.example\r\nSubject: para o suporte\r\n\r\nOi\r\n",
    )  # fmt: skip
    outbound = seed_entry(
        spool, "out", MAILBOX, [("um@example.com", "marca", "pending")],
        f"From: {MAILBOX}\r\nTo: um@example.com\r\nSubject: resposta\r\n\r\nOi\r\n".encode(),
    )  # fmt: skip
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    try:
        gateway.start()
        await asyncio.wait_for(asyncio.gather(silent_lmtp.wait(), silent_mx.wait()), 30)
        started = time.monotonic()
        assert gateway.terminate(timeout=STOP_GRACE + 20) == 0
        took = time.monotonic() - started
        assert took < STOP_GRACE + 10, f"the stop took {took:.1f}s"
        log = gateway.log.read_text()
        for runner in ("inbound", "outbound"):
            assert f"gateway.{runner}: stopping: 1 delivery still waiting" in log, log[-2000:]
        assert sorted(e.id for e in list_entries(spool)) == sorted([inbound, outbound])
        print(f"\nstopped in {took:.1f}s with two deliveries waiting on silent peers")
    finally:
        gateway.close()
        for writer in peers:
            writer.close()
        store.close()
        remote.close()
    # The next start: the inbound entry reaches a store that answers.
    lmtp_socket.unlink(missing_ok=True)
    delivered: list[bytes] = []

    answering = filing_lmtp_server(b"250-store\r\n250 PIPELINING\r\n", delivered)

    store = await asyncio.start_unix_server(answering, str(lmtp_socket))
    again = Daemon(config, "gateway", short_tmp / "again.log")
    try:
        again.start()
        await wait_for(lambda: bool(delivered), what="the inbound entry delivered")
        assert f"X-Mxdesk-Queue-Id: {inbound}".encode() in delivered[0]
        await wait_for(
            lambda: [e.id for e in list_entries(spool) if e.kind == "in"] == [],
            what="the inbound entry gone from the spool",
        )
    finally:
        assert again.terminate() == 0
        again.close()
        store.close()
        dns.close()
