"""The inbound runner against the real store: down, refusing, and coming back."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import MAILBOX, Running, make_config, provision, wait_for
from wire import send_message, stored_messages

from mxdesk import config as cfg
from mxdesk import state
from mxdesk.gateway.entries import INBOUND
from mxdesk.gateway.queuectl import list_entries
from mxdesk.gateway.spool import HELD, QUEUED, SpoolEntry


async def test_store_down_200_accepted_then_all_delivered_once(short_tmp: Path) -> None:
    config = make_config(short_tmp, inbound_retry={"initial": 0.05, "maximum": 0.3})
    provision(config)
    r = Running(config)
    await r.start_gateway()  # the store is not running
    try:
        sem = asyncio.Semaphore(10)

        async def one(i: int) -> str:
            async with sem:
                body = f"Subject: pedido {i}\r\n\r\ncorpo {i}\r\n".encode()
                return await send_message(r.port, f"c{i}@example.org", [MAILBOX], body)

        replies = await asyncio.gather(*(one(i) for i in range(200)))
        assert all(x.startswith("250 2.0.0") for x in replies)
        ids = {x.split()[-1] for x in replies}
        assert len(ids) == 200
        queued = list_entries(config.gateway.spool_path)
        assert len(queued) == 200
        assert all(e.state == QUEUED for e in queued)
        # The runner has tried the store that is down and says why.
        await wait_for(
            lambda: any(
                e.attempts and "cannot connect" in e.last_error
                for e in list_entries(config.gateway.spool_path)
            ),
            what="a failed attempt recorded",
        )

        await r.start_store()
        await wait_for(
            lambda: not list_entries(config.gateway.spool_path),
            timeout=60,
            what="the spool to drain",
        )
        rows = stored_messages(config.store.database)
        assert Counter(row["queue_id"] for row in rows) == Counter(ids)
        assert {row["subject"] for row in rows} == {f"pedido {i}" for i in range(200)}
    finally:
        await r.close()


def _set_active(config: cfg.Config, active: bool) -> None:
    conn = state.connect(config.general.state_db)
    conn.execute("UPDATE mailboxes SET active=? WHERE address=?", (int(active), MAILBOX))
    conn.close()


async def test_store_refusing_holds_the_entry_visibly(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    provision(config)
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    try:
        # A disabled mailbox is refused at RCPT.
        _set_active(config, False)
        refused = await send_message(r.port, "x@example.org", [MAILBOX], b"Subject: x\r\n\r\ny\r\n")
        # The gateway reads the state database on every RCPT, so it refuses too.
        assert refused.startswith("550 5.1.1")

        _set_active(config, True)
        assert r.gateway is not None
        await r.stop_store()
        reply = await send_message(
            r.port, "x@example.org", [MAILBOX], b"Subject: held\r\n\r\ny\r\n"
        )
        assert reply.startswith("250")
        # The mailbox is gone by the time of delivery (a disabled one would still get the mail
        # the gateway accepted for it before): the store refuses it for good.
        conn = state.connect(config.general.state_db)
        conn.execute("DELETE FROM mailboxes WHERE address=?", (MAILBOX,))
        conn.close()
        await r.start_store()
        entries = await wait_for(
            lambda: [e for e in list_entries(config.gateway.spool_path) if e.state == HELD],
            what="a held entry",
        )
        assert entries[0].recipients[0].status == "failed"
        assert entries[0].recipients[0].reply.startswith("550 5.1.1")
        assert "550 5.1.1" in entries[0].last_error
        # Held means held: no more attempts, nothing in the store.
        attempts = entries[0].attempts
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert list_entries(config.gateway.spool_path)[0].attempts == attempts
        assert stored_messages(config.store.database) == []
    finally:
        await r.close()


async def test_kept_lmtp_connection_to_a_restarted_store_is_replaced(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(short_tmp)
    provision(config)
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    try:
        body = b"Subject: um\r\n\r\nx\r\n"
        assert (await send_message(r.port, "x@example.org", [MAILBOX], body)).startswith("250")
        await wait_for(lambda: len(stored_messages(config.store.database)) == 1)
        assert r.gateway is not None and r.gateway.lmtp is not None
        assert r.gateway.lmtp._idle, "the connection is kept for the next delivery"
        await r.stop_store()  # closes the kept connection from the store's side
        await r.start_store()
        body = b"Subject: dois\r\n\r\nx\r\n"
        assert (await send_message(r.port, "x@example.org", [MAILBOX], body)).startswith("250")
        await wait_for(lambda: len(stored_messages(config.store.database)) == 2)
        # Delivered at the first attempt: the stale connection was replaced, not counted.
        assert not list_entries(config.gateway.spool_path)
        assert not [m for m in caplog.messages if "deferred" in m]
    finally:
        await r.close()


async def test_new_mail_goes_to_the_store_from_memory_the_rest_from_the_spool(
    short_tmp: Path,
) -> None:
    """The runner delivers what the MX just committed without reading it back while it has
    room; what finds it full waits in the spool and is read from there: each message once."""
    config = make_config(short_tmp, inbound_retry={"concurrency": 2})
    provision(config)
    r = Running(config)
    await r.start_store()
    gateway = await r.start_gateway()
    read: list[str] = []
    due = gateway.spool.due

    async def counted(kind: str, limit: int, exclude: set[str]) -> list[SpoolEntry]:
        entries = await due(kind, limit, exclude)
        read.extend(e.id for e in entries if e.kind == INBOUND)
        return entries

    gateway.spool.due = counted  # type: ignore[method-assign]
    try:
        one = await send_message(r.port, "a@example.org", [MAILBOX], b"Subject: 1\r\n\r\nx\r\n")
        await wait_for(lambda: len(stored_messages(config.store.database)) == 1, what="filed")
        assert read == [], "a message the runner had room for is not read back from the spool"
        sem = asyncio.Semaphore(10)

        async def send(i: int) -> str:
            async with sem:
                body = f"Subject: {i}\r\n\r\nx\r\n".encode()
                return await send_message(r.port, f"c{i}@example.org", [MAILBOX], body)

        replies = [one, *await asyncio.gather(*(send(i) for i in range(60)))]
        ids = [x.split()[-1] for x in replies]
        await wait_for(lambda: not list_entries(config.gateway.spool_path), what="drained")
        rows = stored_messages(config.store.database)
        assert Counter(row["queue_id"] for row in rows) == Counter(ids)
        assert len(set(read)) == len(read), "no entry was read for a second attempt"
        assert 0 < len(read) < len(ids)  # some found the runner full, most did not
    finally:
        await r.close()


async def test_an_entry_delivered_again_after_a_crash_is_filed_once(short_tmp: Path) -> None:
    """Should a crash bring back an entry the store already has (the gateway stopped between
    the store's 250 and the removal's commit), it is delivered again: the store recognises
    its queue id, answers 250 and keeps one copy."""
    config = make_config(short_tmp, inbound_retry={"initial": 0.05, "maximum": 0.3})
    provision(config)
    r = Running(config)
    await r.start_gateway()  # the store is not running: the entry waits in the spool
    spool_path = config.gateway.spool_path
    try:
        reply = await send_message(r.port, "a@example.org", [MAILBOX], b"Subject: 1\r\n\r\nx\r\n")
        queue_id = reply.split()[-1]
        with sqlite3.connect(spool_path) as conn:  # what a crash could bring back
            entry_row = conn.execute("SELECT * FROM entries WHERE id=?", (queue_id,)).fetchone()
            rcpt_rows = conn.execute(
                "SELECT * FROM recipients WHERE entry=?", (queue_id,)
            ).fetchall()
        await r.start_store()
        await wait_for(lambda: not list_entries(spool_path), what="delivered and removed")
        assert r.gateway is not None
        await r.gateway.close()
        r.gateway = None
        with sqlite3.connect(spool_path) as conn:
            conn.execute(
                f"INSERT INTO entries VALUES ({','.join('?' * len(entry_row))})", entry_row
            )
            conn.executemany(
                f"INSERT INTO recipients VALUES ({','.join('?' * len(rcpt_rows[0]))})", rcpt_rows
            )
        await r.start_gateway()
        await wait_for(lambda: not list_entries(spool_path), what="delivered again and removed")
        rows = stored_messages(config.store.database)
        assert [row["queue_id"] for row in rows] == [queue_id]
    finally:
        await r.close()
