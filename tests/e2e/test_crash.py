"""kill -9 of the gateway at random moments under load: no message that got 250 is lost."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from collections import Counter
from pathlib import Path

from conftest import wait_for
from daemons import Daemon, provision, write_config
from wire import send_message, stored_messages

from mxdesk.gateway.queuectl import list_entries

MESSAGES = int(os.environ.get("MXDESK_CRASH_MESSAGES", "2000"))
PARALLEL = 20
MAILBOX = "suporte@marca.helpdesk.example"


async def test_kill_9_under_load_loses_nothing(short_tmp: Path) -> None:
    port_config = write_config(short_tmp)
    provision(port_config)
    port = int(port_config.read_text().split("127.0.0.1:")[1].split('"')[0])
    store = Daemon(port_config, "store", short_tmp / "store.log")
    gateway = Daemon(port_config, "gateway", short_tmp / "gateway.log")
    store.start()
    gateway.start()
    accepted: list[str] = []
    refused = Counter[str]()
    kills = 0
    done = asyncio.Event()
    rng = random.Random(int(os.environ.get("MXDESK_CRASH_SEED", "2026")))

    async def client(worker: int) -> None:
        # Like a sending MTA: a message is retried until it gets 250 or a 5xx.
        for i in range(worker, MESSAGES, PARALLEL):
            body = f"Subject: carga {i}\r\nMessage-ID: <m{i}@cliente.example>\r\n\r\n{i}\r\n"
            for _ in range(400):
                try:
                    reply = await send_message(
                        port, f"c{i}@cliente.example", [MAILBOX], body.encode()
                    )
                except (OSError, ConnectionError, TimeoutError) as exc:
                    refused[type(exc).__name__] += 1
                    await asyncio.sleep(0.02)  # the client's own retry pause
                    continue
                if reply.startswith("250"):
                    accepted.append(reply.split()[-1])
                    break
                refused[reply[:3]] += 1
                if reply.startswith("5"):
                    break

    async def killer() -> None:
        # Kills follow the load's progress, not the clock (a fast machine could finish the
        # load between two): one within each eighth of the messages, at a random moment.
        nonlocal kills
        for n in range(1, 8):
            mark = n * MESSAGES // 8 + rng.randrange(MESSAGES // 16)
            while len(accepted) < mark and not done.is_set():
                await asyncio.sleep(0.005)
            if done.is_set():
                break
            await asyncio.to_thread(gateway.kill9)
            kills += 1
            await asyncio.to_thread(gateway.start)

    try:
        killing = asyncio.create_task(killer())
        await asyncio.gather(*(client(w) for w in range(PARALLEL)))
        done.set()
        await killing
        await wait_for(
            lambda: not list_entries(short_tmp / "state" / "spool.db"),
            timeout=120,
            what="the spool to drain",
        )
        db = short_tmp / "state" / "tickets.db"
        rows = stored_messages(db)
        stored = Counter(r["queue_id"] for r in rows)
        # A client that lost its 250 in a kill sends again; that copy has its own queue id
        # (SMTP's duplicate problem, RFC 1047) and the store recognises it: filed once.
        recognised = _queue_ids(db, "duplicates")
        missing = [q for q in accepted if stored[q] == 0 and q not in recognised]
        doubled = [q for q, n in stored.items() if n > 1]
        tickets = _count(db, "tickets")
        print(
            f"\nkill -9: {kills} kills, {len(accepted)} x 250, {sum(refused.values())} not "
            f"accepted {dict(refused)}, {len(rows)} messages stored, {len(recognised)} resent "
            f"after a lost 250 and recognised, {tickets} tickets"
        )
        assert kills >= 3
        assert not missing, f"{len(missing)} accepted messages lost"
        assert not doubled, f"{len(doubled)} messages stored twice"
        # Every message reached a ticket, exactly once.
        assert sorted(r["subject"] for r in rows) == sorted(f"carga {i}" for i in range(MESSAGES))
    finally:
        assert gateway.terminate() == 0
        assert store.terminate() == 0
        gateway.close()
        store.close()


def _queue_ids(db: Path, table: str) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {str(q) for (q,) in conn.execute(f"SELECT queue_id FROM {table}")}
    finally:
        conn.close()


def _count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()
