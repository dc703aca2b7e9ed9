"""kill -9 of the store at random moments under load: every message the gateway accepted is
filed on a ticket exactly once.

The store answers 250 only after the commit that holds a delivery; a kill during a commit (or
while a batch gathers) loses that transaction, the gateway keeps the entry and delivers it again
once the store is back, and the store recognises a queue id it filed before the kill.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from daemons import Daemon, mx_port, provision, write_config
from filing import deferred_deliveries, drained_and_filed
from wire import send_message

MESSAGES = int(os.environ.get("MXDESK_CRASH_STORE_MESSAGES", "1500"))
PARALLEL = 20
KILLS = 7
MAILBOX = "suporte@marca.helpdesk.example"


async def test_kill_9_of_the_store_under_load_files_each_message_once(short_tmp: Path) -> None:
    config = write_config(short_tmp)  # the store retried within half a second
    provision(config)
    port = mx_port(config)
    store = Daemon(config, "store", short_tmp / "store.log")
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    store.start()
    gateway.start()
    accepted: dict[str, int] = {}  # queue id → message number
    kills = 0
    rng = random.Random(int(os.environ.get("MXDESK_CRASH_SEED", "2026")))

    async def client(worker: int) -> None:
        for i in range(worker, MESSAGES, PARALLEL):
            body = f"Subject: carga {i}\r\nMessage-ID: <s{i}@cliente.example>\r\n\r\n{i}\r\n"
            reply = await send_message(port, f"c{i}@cliente.example", [MAILBOX], body.encode())
            assert reply.startswith("250"), reply  # the gateway is never down here
            accepted[reply.split()[-1]] = i

    async def killer() -> None:
        # Seven kills, each after the store ran a random moment: during the load, and while
        # the backlog of the kills before drains into the restarted store.
        nonlocal kills
        while kills < KILLS:
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            await asyncio.to_thread(store.kill9)
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # the store stays down a moment
            await asyncio.to_thread(store.start)

    try:
        killing = asyncio.create_task(killer())
        await asyncio.gather(*(client(w) for w in range(PARALLEL)))
        await killing
        rows = await drained_and_filed(short_tmp, accepted)
        deferred = deferred_deliveries(short_tmp / "gateway.log")
        print(
            f"\nstore kill -9: {kills} kills, {len(accepted)} x 250, {deferred} deliveries"
            f" deferred while the store was down, {len(rows)} messages filed"
        )
        assert kills == KILLS
        assert sorted(r["subject"] for r in rows) == sorted(f"carga {i}" for i in range(MESSAGES))
        assert deferred > 0  # the kills did land while deliveries were under way
    finally:
        assert gateway.terminate() == 0
        assert store.terminate() == 0
        gateway.close()
        store.close()
