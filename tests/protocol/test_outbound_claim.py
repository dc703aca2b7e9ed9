"""A reply that may leave at once is claimed as it is committed and delivered from memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import wait_for
from test_submission import BlockingDeliverer, outbound_config, start, submit

from mxdesk.gateway import entries, queuectl
from mxdesk.gateway.queuectl import QueueControlError, list_entries
from mxdesk.gateway.service import GatewayService
from mxdesk.gateway.spool import SpoolEntry


def count_reads(service: GatewayService) -> list[str]:
    """The ids of the replies the outbound runner reads from the spool (due()), as they go."""
    read: list[str] = []
    due = service.spool.due

    async def counted(kind: str, limit: int, exclude: set[str]) -> list[SpoolEntry]:
        found = await due(kind, limit, exclude)
        read.extend(e.id for e in found if e.kind == "out")
        return found

    service.spool.due = counted  # type: ignore[method-assign]
    return read


def states(spool: Path) -> dict[str, str]:
    return {e.id: e.state for e in list_entries(spool) if e.kind == "out"}


async def test_claimed_at_commit_while_the_runner_has_room(short_tmp: Path) -> None:
    """Without a send delay a reply is already being delivered when its 250 comes (no read,
    no claim of its own; `queue cancel` refuses it, as a moment later anyway); one that finds
    the runner full is queued, cancellable, and read from the spool when there is room."""
    config = outbound_config(short_tmp, retry={"concurrency": 2})
    deliverer = BlockingDeliverer()
    service = await start(config, deliverer)
    spool = config.gateway.spool_path
    read = count_reads(service)
    try:
        first = (await submit(config)).split()[-1]
        assert states(spool) == {first: "delivering"}
        with pytest.raises(QueueControlError, match="being delivered right now"):
            queuectl.cancel(spool, first)
        second = (await submit(config)).split()[-1]
        third = (await submit(config)).split()[-1]
        fourth = (await submit(config)).split()[-1]
        assert states(spool) == {
            first: "delivering",
            second: "delivering",
            third: "queued",
            fourth: "queued",
        }
        queuectl.cancel(spool, fourth)
        await wait_for(lambda: len(deliverer.attempts) == 2, what="two attempts under way")
        deliverer.release.set()
        await wait_for(lambda: not states(spool), what="the replies delivered")
        assert sorted(e.id for e in deliverer.attempts) == sorted([first, second, third])
        assert read == [third], "only the reply that found the runner full is read back"
    finally:
        deliverer.release.set()
        await service.close()


async def test_a_failed_commit_gives_the_room_back(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room reserved for a reply whose transaction failed (451) goes back to the runner:
    the next reply is claimed at its commit as if the first had never come."""
    config = outbound_config(short_tmp, retry={"concurrency": 1})
    deliverer = BlockingDeliverer()
    deliverer.release.set()
    service = await start(config, deliverer)
    spool = config.gateway.spool_path
    read = count_reads(service)
    insert = entries.insert_entry
    failures = 0

    def failing_once(conn: sqlite3.Connection, e: entries.NewEntry, *a: object, **kw: bool) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        insert(conn, e, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("mxdesk.gateway.spool.insert_entry", failing_once)
    try:
        with pytest.raises(Exception, match="451"):
            await submit(config)
        assert failures == 1 and not states(spool)
        queue_id = (await submit(config)).split()[-1]
        await wait_for(lambda: deliverer.attempts, what="the attempt")
        assert [e.id for e in deliverer.attempts] == [queue_id]
        assert read == [], "the reply found the runner's room and was not read back"
    finally:
        await service.close()
