"""The store under write and fsync errors injected at the system-call boundary (libfiu) while
the gateway keeps handing it mail: a delivery is answered 250 only once it is filed, a failed
commit is answered 451 and the gateway delivers it again, and once the disk behaves every
message the gateway accepted is on a ticket exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from daemons import Daemon, mx_port, provision, write_config
from filing import deferred_deliveries, drained_and_filed
from fiu_control import FailureInjection
from wire import send_message

MAILBOX = "suporte@marca.helpdesk.example"
CLIENTS = 10
SYNC_POINTS = ("posix/io/sync/fsync", "posix/io/sync/fdatasync")
# SQLite writes its WAL frames with pwrite64; the store's sockets and log are left alone.
RANDOM_POINTS = {
    "posix/io/rw/pwrite": 0.02,
    "posix/io/rw/pwrite/reduce": 0.02,
    "posix/io/sync/fsync": 0.1,
    "posix/io/sync/fdatasync": 0.1,
}


async def test_store_write_and_fsync_failures_lose_and_double_nothing(short_tmp: Path) -> None:
    fiu = FailureInjection(short_tmp)
    config = write_config(short_tmp)  # the gateway retries the store within half a second
    provision(config)
    port = mx_port(config)
    store = Daemon(config, "store", short_tmp / "store.log", env=fiu.env)
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    store.start()
    gateway.start()
    assert store.proc is not None
    pid = store.proc.pid
    accepted: dict[str, str] = {}  # queue id → subject
    stop = asyncio.Event()
    sent = 0

    async def client() -> None:
        nonlocal sent
        while not stop.is_set():
            n = sent
            sent += 1
            body = f"Subject: disco {n}\r\nMessage-ID: <d{n}@cliente.example>\r\n\r\n{n}\r\n"
            reply = await send_message(port, f"c{n}@cliente.example", [MAILBOX], body.encode())
            assert reply.startswith("250"), reply  # the gateway's own disk is fine
            accepted[reply.split()[-1]] = f"disco {n}"

    async def phase(seconds: float, *commands: str) -> None:
        if commands:
            await asyncio.to_thread(fiu.control, pid, *commands)
        await asyncio.sleep(seconds)  # the length of the period under load, not a wait
        assert store.proc is not None and store.proc.poll() is None, "the store died"

    def deferred() -> int:
        return deferred_deliveries(short_tmp / "gateway.log")

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        await phase(1.5)
        before = deferred()
        await phase(2, *(f"enable name={p}" for p in SYNC_POINTS))
        always = deferred() - before
        await phase(
            3,
            *(f"disable name={p}" for p in SYNC_POINTS),
            *(f"enable_random name={p},probability={q}" for p, q in RANDOM_POINTS.items()),
        )
        await phase(1.5, *(f"disable name={p}" for p in RANDOM_POINTS))
        stop.set()
        await asyncio.gather(*clients)
        rows = await drained_and_filed(short_tmp, accepted)
        errors = (short_tmp / "store.log").read_text(errors="replace").count(" ERROR ")
        print(
            f"\nstore under libfiu: {len(accepted)} accepted, {len(rows)} filed, {always}"
            f" deliveries deferred while every fsync failed, {deferred()} in all,"
            f" {errors} errors in the store's log"
        )
        assert always > 0, "no commit failed while every fsync did"
        assert Counter(r["subject"] for r in rows) == Counter(accepted.values())
    finally:
        stop.set()
        for task in clients:
            task.cancel()
        assert gateway.terminate() == 0
        assert store.terminate() == 0
        gateway.close()
        store.close()
