"""[gateway] listener_processes: the sessions run in processes beside the gateway, which
accepts, counts the limits and delivers. Real daemons (gateway and store) from a config file."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from daemons import Daemon, free_port, provision, write_config
from wire import Wire, send_message, stored_messages

from mxdesk.gateway.queuectl import list_entries, show

MAILBOX = "suporte@marca.helpdesk.example"
PROCESSES = 2


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def signing_helpers(parents: list[int]) -> list[int]:
    """The signing helpers (`python -m mxdesk.gateway.signer`) these processes started."""
    found = []
    for pid in parents:
        for child in children_of(pid) if Path(f"/proc/{pid}").exists() else []:
            if b"mxdesk.gateway.signer" in _command(child):
                found.append(child)
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of pids still running (a zombie has ended)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics_port = free_port()
        self.config = write_config(
            root,
            gateway_extra=f"listener_processes = {PROCESSES}\nmax_connections_per_client = 3",
        )
        self.config.write_text(
            self.config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
        )
        provision(self.config)
        self.port = int(self.config.read_text().split("127.0.0.1:")[1].split('"')[0])
        self.store = Daemon(self.config, "store", root / "store.log")
        self.gateway = Daemon(self.config, "gateway", root / "gateway.log")
        self.tickets = root / "state" / "tickets.db"
        self.spool = root / "state" / "spool.db"

    def listeners(self) -> list[int]:
        """The gateway's listener processes (its other child is the signing helper)."""
        assert self.gateway.proc is not None
        return [
            pid
            for pid in children_of(self.gateway.proc.pid)
            if b"mxdesk.gateway.listener" in _command(pid)
        ]

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def site(short_tmp: Path) -> Iterator[Site]:
    s = Site(short_tmp)
    s.store.start()
    s.gateway.start()
    try:
        yield s
    finally:
        s.gateway.close()
        s.store.close()


async def sizes_are(sizes: Callable[[], Awaitable[set[int]]], wanted: set[int]) -> bool:
    return await sizes() == wanted


def source(n: int) -> str:
    """The loads come from 20 loopback addresses (3 connections each at most)."""
    return f"127.0.0.{10 + n % 20}"


def message(n: int) -> bytes:
    return (
        f"From: cliente{n}@example.org\r\nTo: {MAILBOX}\r\nSubject: pedido {n}\r\n"
        f"Message-ID: <pedido-{n}@example.org>\r\n\r\nOla, pedido {n}.\r\n"
    ).encode()


async def test_listener_processes_serve_the_mx_and_the_submission_socket(site: Site) -> None:
    children = site.listeners()
    assert len(children) == PROCESSES, children
    # They sign nothing (replies are signed as they leave): the gateway's one helper does.
    gateway = site.gateway.proc.pid if site.gateway.proc else 0
    await wait_for(lambda: len(signing_helpers([gateway])) == 1, what="the signing helper")
    helpers = signing_helpers([gateway])
    assert signing_helpers(children) == []
    # 120 messages from 12 clients at a time: every one a ticket, counted by the metrics.
    sem = asyncio.Semaphore(12)

    async def one(n: int) -> str:
        async with sem:
            sender = f"cliente{n}@example.org"
            return await send_message(site.port, sender, [MAILBOX], message(n), source(n))

    replies = await asyncio.gather(*(one(n) for n in range(120)))
    assert all(r.startswith("250") for r in replies), [r for r in replies if r[:3] != "250"]
    await wait_for(lambda: len(stored_messages(site.tickets)) == 120, what="120 tickets")
    assert site.metric('mxdesk_messages_accepted_total{listener="mx"}') == 120
    # The per-client limit (3) is the gateway's, exact across the processes: the 4th is
    # refused, and a slot freed in a listener process is free again at once.
    open_ = [await Wire.open(site.port) for _ in range(3)]
    for w in open_:
        assert (await w.reply()).startswith("220 ")
    fourth = await Wire.open(site.port)
    assert (await fourth.reply()).startswith("421 4.7.0 Error: too many connections from your")
    await fourth.close()
    await open_[0].cmd("QUIT")
    await open_[0].close()

    async def admitted() -> bool:
        w = await Wire.open(site.port)
        try:
            return (await w.reply()).startswith("220 ")
        finally:
            await w.close()

    await wait_for(admitted, what="a slot free again after QUIT")
    for w in open_[1:]:
        await w.close()
    assert site.metric('mxdesk_smtp_refusals_total{code="421",enhanced="4.7.0",listener="mx"}') >= 1
    # The submission socket: a reply committed by a listener process (signed as it leaves).
    socket_path = site.root / "run" / "gateway" / "submit.sock"
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    w = Wire(reader, writer)
    await w.hello()
    assert (await w.cmd(f"MAIL FROM:<{MAILBOX}>")).startswith("250")
    assert (await w.cmd("RCPT TO:<um@example.com>")).startswith("250")
    assert (await w.cmd("DATA")).startswith("354")
    await w.send(
        f"From: {MAILBOX}\r\nTo: um@example.com\r\nSubject: resposta\r\n\r\nOi\r\n.\r\n".encode()
    )
    assert (await w.reply()).startswith("250")
    await w.close()
    out = [e for e in list_entries(site.spool) if e.kind == "out"]
    assert len(out) == 1
    assert site.metric('mxdesk_messages_accepted_total{listener="submission"}') == 1
    # Signed as it leaves, by the gateway: not while it waits out the send delay.
    assert b"DKIM-Signature" not in show(site.spool, out[0].id).data
    assert site.metric('mxdesk_dkim_signatures_total{algorithm="rsa-sha256"}') == 0
    # SIGHUP reaches the listener processes: the next sessions advertise the new SIZE.
    limit = "max_connections_per_client = 3"
    text = site.config.read_text().replace(limit, f"{limit}\nmax_message_size = 12345")
    site.config.write_text(text)
    assert site.gateway.proc is not None
    site.gateway.proc.send_signal(signal.SIGHUP)

    async def sizes() -> set[int]:
        found = set()
        for _ in range(4):
            w = await Wire.open(site.port)
            try:
                ehlo = await w.hello()
                found.add(int(ehlo.split("SIZE ")[1].split()[0]))
            finally:
                await w.close()
        return found

    await wait_for(lambda: sizes_are(sizes, {12345}), what="SIZE 12345 from every session")
    assert site.gateway.terminate() == 0
    assert not any(Path(f"/proc/{c}").exists() for c in children), "listener processes left"
    await wait_for(lambda: not alive(helpers), what="the signing helpers to end", timeout=15)


async def test_a_listener_process_killed_under_load_loses_nothing(site: Site) -> None:
    """kill -9 of a listener process while 12 clients send 400 messages, each sent again
    until it gets its 250 (as an MTA does): every message answered 250 is a ticket, once;
    the gateway starts another listener process."""
    total, done = 400, set[int]()
    pending = list(range(total))
    random.shuffle(pending)
    resent = 0

    async def client(address: str) -> None:
        nonlocal resent
        while pending:
            n = pending.pop()
            try:
                reply = await send_message(
                    site.port, f"cliente{n}@example.org", [MAILBOX], message(n), address
                )
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                reply = "lost"
            if reply.startswith("250"):
                done.add(n)
            else:
                resent += 1
                pending.insert(0, n)
                await asyncio.sleep(0.05)

    victims: list[int] = []

    async def killer() -> None:
        while len(done) < total // 3:
            await asyncio.sleep(0.01)
        victim = site.listeners()[0]
        os.kill(victim, signal.SIGKILL)
        victims.append(victim)

    await asyncio.gather(*(client(source(i)) for i in range(12)), killer())
    assert done == set(range(total))
    await wait_for(lambda: len(stored_messages(site.tickets)) >= total, what="every ticket")
    rows = stored_messages(site.tickets)
    subjects = [r["subject"] for r in rows]
    assert len(rows) == total and len(set(subjects)) == total, (len(rows), len(set(subjects)))
    log = site.gateway.log.read_text()
    assert f"(pid {victims[0]}) ended (signal 9)" in log, log[-3000:]
    await wait_for(lambda: len(site.listeners()) == PROCESSES, what="a new listener process")
    print(f"\n{total} messages, 1 listener process killed, {resent} sent again, {total} tickets")
    assert site.gateway.terminate() == 0


async def test_listener_processes_end_with_a_killed_gateway(site: Site) -> None:
    children = site.listeners()
    assert site.gateway.proc is not None
    gateway = site.gateway.proc.pid
    await wait_for(lambda: len(signing_helpers([gateway])) == 1, what="the signing helper")
    helpers = signing_helpers([gateway])
    site.gateway.proc.kill()
    site.gateway.proc.wait()
    await wait_for(
        lambda: not any(Path(f"/proc/{c}").exists() for c in children),
        what="the listener processes to end",
        timeout=15,
    )
    # The gateway's signing helper ends too (nothing is left holding the spool).
    await wait_for(lambda: not alive(helpers), what="the signing helpers to end", timeout=15)
    # A new gateway on the same spool starts (the old ones hold nothing) and serves mail.
    again = Daemon(site.config, "gateway", site.root / "again.log")
    try:
        again.start()
        reply = await send_message(site.port, "c@example.org", [MAILBOX], message(1))
        assert reply.startswith("250"), reply
        assert again.terminate() == 0
    finally:
        again.close()
