"""Clients that hold connections open: 200 trickling a byte every few seconds, one address
opening 300 at once. The gateway daemon ends each at its deadline or refuses it, serves everyone
else meanwhile, and its memory stays bounded."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

from conftest import wait_for
from daemons import Daemon, free_port, provision, write_config
from wire import Wire, send_message, stored_messages

MAILBOX = "suporte@marca.helpdesk.example"
IDLE, SESSION = 3.0, 10.0  # [gateway] idle_timeout and session_timeout of these tests
TRICKLE = 2.0  # seconds between two bytes of a slow client
LATE = 3.0  # how late a deadline may be kept on a loaded machine


def rss_kib(pid: int) -> int:
    """The resident set size of a process, from /proc (kB as the kernel counts them)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def start_daemons(root: Path, port: int, extra: str) -> tuple[Daemon, Daemon]:
    config = write_config(root, port, extra)
    provision(config)
    store = Daemon(config, "store", root / "store.log")
    gateway = Daemon(config, "gateway", root / "gateway.log")
    store.start()
    gateway.start()
    return store, gateway


def stop_daemons(store: Daemon, gateway: Daemon) -> None:
    assert gateway.terminate() == 0
    assert store.terminate() == 0
    gateway.close()
    store.close()
    assert "Traceback" not in gateway.log.read_text()


async def slow_client(
    port: int, source: str, in_data: bool, trickling: list[str]
) -> tuple[float, str]:
    """Trickles a command, or a message after DATA, one byte every TRICKLE seconds, until the
    gateway ends the session; returns when it did (seconds after connecting) and its reply.
    Its source is in trickling from when its session is in that state (EHLO, or DATA,
    answered) to when it ends."""
    started = time.monotonic()
    w = await Wire.open(port, source=source)
    await w.hello()
    trickled = b"NOOP\r\n"
    if in_data:
        assert (await w.cmd("MAIL FROM:<lento@cliente.example>")).startswith("250")
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
        assert (await w.cmd("DATA")).startswith("354")
        trickled = b"Subject: devagar\r\n\r\n" + b"x" * 1000
    trickling.append(source)

    async def trickle() -> None:
        for byte in itertools.cycle(trickled):
            await asyncio.sleep(TRICKLE)  # the client's pace
            w.writer.write(bytes([byte]))
            try:
                await w.writer.drain()
            except ConnectionError:
                return

    task = asyncio.create_task(trickle())
    try:
        reply = await w.reply(timeout=SESSION + 2 * LATE)
    except ConnectionError:
        reply = "closed without a reply"
    ended = time.monotonic() - started
    trickling.remove(source)
    task.cancel()
    await w.close()
    return ended, reply


async def test_slow_clients_end_at_their_deadline_and_others_are_served(
    short_tmp: Path,
) -> None:
    port = free_port()
    store, gateway = start_daemons(
        short_tmp, port, f"idle_timeout = {IDLE}\nsession_timeout = {SESSION}"
    )
    assert gateway.proc is not None
    pid = gateway.proc.pid
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.2)

    try:
        for i in range(20):  # warm up: every code path of a session has run once
            body = f"Subject: aquecimento {i}\r\n\r\nx\r\n".encode()
            assert (await send_message(port, "c@cliente.example", [MAILBOX], body))[:3] == "250"
        baseline = rss_kib(pid)
        sampler = asyncio.create_task(sample())
        # 100 trickle a command (each from its own address, as a botnet would), 100 a message.
        trickling: list[str] = []
        slow = [
            asyncio.create_task(
                slow_client(port, f"127.0.{1 + i % 2}.{1 + i // 2}", i % 2 == 1, trickling)
            )
            for i in range(200)
        ]
        # The normal client comes among them: once all 200 are in their sessions, trickling.
        await wait_for(
            lambda: len(trickling) == len(slow) or any(t.done() for t in slow),
            timeout=IDLE + LATE,
            what="the 200 slow clients in their sessions",
        )
        assert not [t.result() for t in slow if t.done()], "a slow session ended too soon"
        latencies = []
        loads = []  # slow sessions open as each normal message began
        for i in range(20):
            began = time.monotonic()
            loads.append(len(trickling))
            body = f"Subject: normal {i}\r\n\r\nx\r\n".encode()
            reply = await send_message(port, "c@cliente.example", [MAILBOX], body)
            latencies.append(time.monotonic() - began)
            assert reply.startswith("250"), reply
        ended = await asyncio.gather(*slow)
        sampling = False
        await sampler
        after = rss_kib(pid)
        in_command = [e for i, e in enumerate(ended) if i % 2 == 0]
        in_data = [e for i, e in enumerate(ended) if i % 2 == 1]
        print(
            f"\nslow clients: RSS {baseline} kB before, {peak} kB peak with 200 slow sessions, "
            f"{after} kB after; normal client {len(latencies)} messages, slowest "
            f"{max(latencies) * 1000:.0f} ms among {min(loads)}-{max(loads)} slow sessions; "
            f"commands ended after "
            f"{min(t for t, _ in in_command):.1f}-{max(t for t, _ in in_command):.1f} s "
            f"{Counter(r for _, r in in_command)}, messages after "
            f"{min(t for t, _ in in_data):.1f}-{max(t for t, _ in in_data):.1f} s "
            f"{Counter(r for _, r in in_data)}"
        )
        # A command that never ends: idle_timeout after the last complete command.
        for t, reply in in_command:
            assert reply == "421 4.4.2 Error: timeout exceeded"
            assert IDLE - 0.5 <= t <= IDLE + LATE
        # A message that keeps coming is not idle (RFC 5321 §4.5.3.2: the timeouts are per
        # read): session_timeout ends it.
        for t, reply in in_data:
            assert reply == "421 4.4.2 Error: session time limit exceeded"
            assert SESSION - 0.5 <= t <= SESSION + LATE
        assert max(latencies) < 2.0
        # Served among them: the 100 in DATA at least (the commands' sessions may time out
        # meanwhile on a slow machine), all 200 as the first message began.
        assert loads[0] == len(slow) and min(loads) >= len(slow) // 2, loads
        assert peak - baseline < 64 * 1024, "200 slow sessions took over 64 MiB"
        await wait_for(
            lambda: len(stored_messages(short_tmp / "state" / "tickets.db")) == 40,
            what="the 40 whole messages filed",
        )
        subjects = {r["subject"] for r in stored_messages(short_tmp / "state" / "tickets.db")}
        assert "devagar" not in subjects
    finally:
        sampling = False
        stop_daemons(store, gateway)


async def test_one_address_opening_300_connections_gets_421_past_its_cap(
    short_tmp: Path,
) -> None:
    cap = 20
    port = free_port()
    store, gateway = start_daemons(short_tmp, port, f"max_connections_per_client = {cap}")
    assert gateway.proc is not None
    pid = gateway.proc.pid
    baseline = rss_kib(pid)
    flood = "127.0.3.1"

    async def first_reply(w: Wire) -> str:
        try:
            return await w.reply()
        except ConnectionError:
            return "closed without a reply"

    try:
        opened = await asyncio.gather(*(Wire.open(port, source=flood) for _ in range(300)))
        replies = await asyncio.gather(*(first_reply(w) for w in opened))
        counts = Counter(r[:3] for r in replies)
        peak = rss_kib(pid)
        # Another address is served meanwhile, and so is a session under the cap.
        body = b"Subject: outro cliente\r\n\r\nx\r\n"
        assert (await send_message(port, "c@cliente.example", [MAILBOX], body))[:3] == "250"
        admitted = [w for w, r in zip(opened, replies, strict=True) if r.startswith("220")]
        w = admitted[0]
        assert (await w.cmd("EHLO flood.example")).startswith("250")
        assert (await w.cmd("MAIL FROM:<flood@cliente.example>")).startswith("250")
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
        assert (await w.cmd("DATA")).startswith("354")
        await w.send(b"Subject: dentro do limite\r\n\r\nx\r\n.\r\n")
        assert (await w.reply()).startswith("250")
        for w in opened:
            await w.close()

        async def cap_free_again() -> bool:
            # Every slot of the address is given back: cap sessions at once, again.
            again = [await Wire.open(port, source=flood) for _ in range(cap)]
            ok = all(r.startswith("220") for r in [await first_reply(x) for x in again])
            for x in again:
                await x.close()
            return ok

        await wait_for(cap_free_again, what="the address's slots released")
        print(
            f"\n300 connections from one address: {dict(counts)}; RSS {baseline} kB before, "
            f"{peak} kB with them, {rss_kib(pid)} kB after"
        )
        assert counts == {"220": cap, "421": 300 - cap}
        assert all(
            r == "421 4.7.0 Error: too many connections from your address"
            for r in replies
            if r.startswith("421")
        )
        assert gateway.proc.poll() is None
        await wait_for(
            lambda: len(stored_messages(short_tmp / "state" / "tickets.db")) == 2,
            what="both messages filed",
        )
    finally:
        stop_daemons(store, gateway)
