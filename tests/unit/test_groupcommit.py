"""The spool's group commit: commits made at the same time share transactions, a caller that
stops waiting does not stop its commit, a failed transaction fails each of its operations and
nothing else, and reads are not held up behind a long run of commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import wait_for

from mxdesk.gateway import groupcommit
from mxdesk.gateway.entries import DELIVERED, NewEntry, Recipient, SpoolEntry
from mxdesk.gateway.groupcommit import DRAIN_BATCHES
from mxdesk.gateway.spool import Spool, SpoolError

RCPT = Recipient("suporte@marca.example", "suporte@marca.example", "marca")


def entry(queue_id: str) -> NewEntry:
    return NewEntry(queue_id, "in", "192.0.2.1", "c@example.com", (RCPT,), b"Subject: x\r\n\r\nx")


def ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM entries")}


GATE_SECONDS = 10.0  # how long a transaction waits at the closed gate before it fails


class Counting:
    """An open spool whose transactions are counted, and can be held back or made to fail;
    taken: the entries it handed to the inbound runner."""

    def __init__(self, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.spool = spool
        self.taken: list[SpoolEntry] = []
        spool.on_new_entry(self.taken.append)
        self.batches: list[int] = []
        self.closed = False
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a transaction reached the gate
        self.gate_expired = False
        original = Spool._write_batch

        def write(spool_self: Spool, ops: list[object]) -> None:
            self.entered.set()
            if not self.gate.wait(GATE_SECONDS):
                self.gate_expired = True
                raise AssertionError(f"the gate stayed closed {GATE_SECONDS} s")
            self.batches.append(len(ops))
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
            original(spool_self, ops)  # type: ignore[arg-type]

        monkeypatch.setattr(Spool, "_write_batch", write)

    async def held(self) -> None:
        """Returns once a transaction is on the spool's thread, held at the closed gate."""
        entered = await asyncio.to_thread(self.entered.wait, GATE_SECONDS)
        assert entered, f"no transaction began within {GATE_SECONDS} s"

    async def queued(self, count: int) -> None:
        """Returns once count operations wait for the next transaction."""
        group = self.spool._group  # its list of pending operations is replaced at each drain
        await wait_for(lambda: len(group._pending) == count, what=f"{count} operations queued")

    async def idle(self) -> None:
        """Returns once the spool's thread has no transaction under way or to come."""
        group = self.spool._group
        await wait_for(lambda: not group.draining, what="the spool idle")

    async def close(self) -> None:
        """Closes the spool once: the commits under way and queued end first."""
        if not self.closed:
            self.closed = True
            await self.spool.close()


@pytest.fixture
async def counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Counting]:
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    counting = Counting(spool, monkeypatch)
    yield counting
    await counting.close()
    assert not counting.gate_expired, "a transaction gave up waiting at the gate"


async def test_commits_at_the_same_time_share_transactions(
    tmp_path: Path, counting: Counting
) -> None:
    spool = counting.spool
    counting.gate.clear()  # the first transaction waits: the others queue behind it
    first = asyncio.ensure_future(spool.commit(entry("Q0")))
    await counting.held()
    rest = [asyncio.ensure_future(spool.commit(entry(f"Q{i}"))) for i in range(1, 50)]
    await counting.queued(49)
    counting.gate.set()
    await asyncio.gather(first, *rest)
    await counting.close()
    assert ids(tmp_path / "spool.db") == {f"Q{i}" for i in range(50)}
    assert counting.batches == [1, 49]


async def test_a_caller_that_stops_waiting_does_not_stop_its_commit(
    tmp_path: Path, counting: Counting
) -> None:
    spool = counting.spool
    counting.gate.clear()
    waiting = asyncio.ensure_future(spool.commit(entry("Q1")))
    await counting.held()
    waiting.cancel()  # the client hung up after the final dot
    await wait_for(waiting.done, what="the caller to stop waiting")
    assert counting.batches == []  # before its transaction went on
    counting.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await counting.close()
    assert ids(tmp_path / "spool.db") == {"Q1"}
    # Committed, so handed to the inbound runner as if the caller had waited.
    assert [e.id for e in counting.taken] == ["Q1"]


async def test_a_result_waits_a_moment_for_company(
    tmp_path: Path, counting: Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery's result, which no client waits for, does not start a transaction of its
    own at once: alone it is committed after a moment, and a new message that comes meanwhile
    takes it along in its own transaction, at once. (The moment is stretched to 0.3 s here;
    for the result that the new message takes along, to 10 s, of which no pause of a loaded
    machine takes half.)"""
    moment, long_moment = 0.3, 10.0
    monkeypatch.setattr(groupcommit, "GATHER_SECONDS", moment)
    spool = counting.spool
    for queue_id in ("Q0", "Q1"):
        await spool.commit(entry(queue_id))
    await counting.idle()
    delivered = {RCPT.mailbox: (DELIVERED, "250 2.0.0 filed")}

    def result(taken: SpoolEntry) -> asyncio.Future[None]:
        return asyncio.ensure_future(
            spool.update(taken, delivered, retry_at=None, hold=False, error="")
        )

    began = time.monotonic()
    await result(counting.taken[0])
    # A timer may fire a clock tick early: the margin is for that, not for the machine.
    assert time.monotonic() - began >= moment - 0.01, "it did not wait for company"
    assert counting.batches == [1, 1, 1]
    await counting.idle()
    monkeypatch.setattr(groupcommit, "GATHER_SECONDS", long_moment)
    accompanied = result(counting.taken[1])
    await counting.queued(1)
    began = time.monotonic()
    await spool.commit(entry("Q2"))  # a client waits for this one: no waiting
    waited = time.monotonic() - began
    assert waited < long_moment / 2, f"the new message waited {waited:.1f} s for the moment"
    assert accompanied.done()
    assert counting.batches == [1, 1, 1, 2]
    await counting.close()
    assert ids(tmp_path / "spool.db") == {"Q2"}


async def test_a_failed_transaction_fails_its_operations_only(
    tmp_path: Path, counting: Counting
) -> None:
    spool = counting.spool
    counting.fail = True
    failed = await asyncio.gather(
        *(spool.commit(entry(f"F{i}")) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(f, SpoolError) for f in failed)
    counting.fail = False
    await spool.commit(entry("OK"))
    await counting.close()
    assert ids(tmp_path / "spool.db") == {"OK"}
    assert [e.id for e in counting.taken] == ["OK"]  # nothing failed is handed over


async def test_reads_get_their_turn_during_a_long_run_of_commits(
    tmp_path: Path, counting: Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = counting.spool
    original = Spool._write_batch

    def slow(spool_self: Spool, ops: list[object]) -> None:
        time.sleep(0.005)  # new commits arrive during every transaction
        original(spool_self, ops)  # type: ignore[arg-type]

    monkeypatch.setattr(Spool, "_write_batch", slow)
    commits: list[asyncio.Future[None]] = []
    stop = False

    async def producer() -> None:
        i = 0
        while not stop:
            commits.append(asyncio.ensure_future(spool.commit(entry(f"C{i}"))))
            i += 1
            await asyncio.sleep(0.001)

    running = asyncio.ensure_future(producer())
    await wait_for(lambda: len(counting.batches) >= 2, what="a run of commits under way")
    before = len(counting.batches)
    assert await spool.read(lambda conn: conn.execute("SELECT 1").fetchone()[0]) == 1
    waited = len(counting.batches) - before
    stop = True
    await running
    await asyncio.gather(*commits)
    await counting.close()
    assert len(ids(tmp_path / "spool.db")) == len(commits)
    # The read waited for at most one run of the thread's commits, not for all of them.
    assert waited <= DRAIN_BATCHES + 1


async def test_a_failing_hand_over_does_not_keep_the_others_waiting(counting: Counting) -> None:
    def broken(entry: SpoolEntry) -> None:
        if entry.id == "Q1":
            raise RuntimeError("the runner broke")

    counting.spool.on_new_entry(broken)
    counting.gate.clear()  # Q0's transaction waits: Q1 and Q2 share the next one
    commits = [asyncio.ensure_future(counting.spool.commit(entry("Q0")))]
    await counting.held()
    commits += [asyncio.ensure_future(counting.spool.commit(entry(f"Q{i}"))) for i in (1, 2)]
    await counting.queued(2)
    counting.gate.set()
    await asyncio.wait_for(asyncio.gather(*commits), 5)
    assert counting.batches == [1, 2]
    assert sorted(e.id for e in counting.taken) == ["Q0", "Q1", "Q2"]
