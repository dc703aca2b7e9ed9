"""What a mail server owes its users when the disk fails: the gateway daemon under write and
fsync errors injected at the system-call boundary, on a full filesystem, and started on a spool
a crash or a bad disk left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import require_real, wait_for
from daemons import Daemon, cli, config_with_remote_mx, free_port, provision, write_config
from dns_server import DnsServer
from fiu_control import FailureInjection
from sink import Sink
from spoolfiles import damaged_entries, seed_entry
from wire import Wire, send_message, stored_messages

from mxdesk.gateway.queuectl import list_entries

MAILBOX = "suporte@marca.helpdesk.example"
CLIENTS = 24


@dataclass
class Phase:
    """The replies to the messages sent wholly inside one period of the injection."""

    name: str
    replies: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, str] = field(default_factory=dict)  # subject → queue id
    refused: set[str] = field(default_factory=set)  # subjects


async def test_write_and_fsync_failures_at_commit_answer_451_never_250(short_tmp: Path) -> None:
    """Invariant 1 under libfiu: pwrite, write, fsync and fdatasync of the running gateway
    fail (SQLite commits with pwrite64 and fdatasync), first always, then at random, while
    clients keep sending. A message is 250 only if it is in the store afterwards, once."""
    fiu = FailureInjection(short_tmp)
    port = free_port()
    # All clients come from 127.0.0.1: the per-client cap must not be what refuses them.
    config = write_config(short_tmp, port, "max_connections_per_client = 100")
    provision(config)
    spool = short_tmp / "state" / "spool.db"
    store = Daemon(config, "store", short_tmp / "store.log")
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log", env=fiu.env)
    store.start()
    gateway.start()
    assert gateway.proc is not None
    pid = gateway.proc.pid
    phases: list[Phase] = []
    current: Phase | None = None  # None between two phases: replies then are not counted
    sent = 0
    samples = damaged = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal sent
        while not stop.is_set():
            n, phase = sent, current
            sent += 1
            subject = f"falha {n}"
            body = f"Subject: {subject}\r\nMessage-ID: <f{n}@cliente.example>\r\n\r\n{n}\r\n"
            reply = await send_message(port, f"c{n}@cliente.example", [MAILBOX], body.encode())
            if phase is None or current is not phase:
                continue
            phase.replies[reply[:9]] += 1
            if reply.startswith("250"):
                phase.accepted[subject] = reply.split()[-1]
            else:
                phase.refused.add(subject)

    async def inspector() -> None:
        # Whatever the failures, spool.db never holds half an entry.
        nonlocal samples, damaged
        while not stop.is_set():
            damaged += len(await asyncio.to_thread(damaged_entries, spool))
            samples += 1
            await asyncio.sleep(0.1)

    async def run_phase(name: str, seconds: float, *commands: str) -> None:
        nonlocal current
        if commands:
            await asyncio.to_thread(fiu.control, pid, *commands)
        current = Phase(name)
        phases.append(current)
        await asyncio.sleep(seconds)  # the length of the period under load, not a wait
        current = None
        assert gateway.proc is not None and gateway.proc.poll() is None, f"died in {name}"

    sync_points = ("posix/io/sync/fsync", "posix/io/sync/fdatasync")
    random_points = {
        "posix/io/rw/pwrite": 0.02,
        "posix/io/rw/pwrite/reduce": 0.02,
        "posix/io/rw/write": 0.05,
        "posix/io/sync/fsync": 0.1,
        "posix/io/sync/fdatasync": 0.1,
    }
    tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    tasks.append(asyncio.create_task(inspector()))
    try:
        await run_phase("before", 2)
        await run_phase("fsync fails", 3, *(f"enable name={p}" for p in sync_points))
        await asyncio.to_thread(
            fiu.control,
            pid,
            *(f"disable name={p}" for p in sync_points),
            *(f"enable_random name={p},probability={q}" for p, q in random_points.items()),
        )
        await run_phase("random failures", 5)
        await asyncio.to_thread(fiu.control, pid, *(f"disable name={p}" for p in random_points))
        await run_phase("after", 3)
        stop.set()
        await asyncio.gather(*tasks)
        await wait_for(lambda: not list_entries(spool), timeout=120, what="the spool to drain")
        rows = stored_messages(short_tmp / "state" / "tickets.db")
        stored = Counter(r["subject"] for r in rows)
        by_queue_id = Counter(r["queue_id"] for r in rows)
        print()
        for p in phases:
            print(f"fiu {p.name}: {dict(p.replies)}")
        print(f"fiu: {sent} messages sent, {len(rows)} stored, {samples} spool samples")
        before, always, randomly, after = phases
        # fsync failing always: not one 250.
        assert always.refused and not always.accepted
        assert set(always.replies) == {"451 4.3.0"}
        # At random: some of each, and nothing but 250 and 451.
        assert randomly.accepted and randomly.refused
        assert set(randomly.replies) == {"250 2.0.0", "451 4.3.0"}
        # Before and after: all accepted, so the gateway recovered by itself.
        for p in (before, after):
            assert p.accepted and not p.refused, p.replies
        for p in phases:
            lost = [s for s in p.accepted if stored[s] == 0]
            assert not lost, f"{p.name}: {len(lost)} messages answered 250 and not stored"
            assert all(by_queue_id[q] == 1 for q in p.accepted.values())
            filed = [s for s in p.refused if stored[s]]
            assert not filed, f"{p.name}: {len(filed)} messages answered 451 but stored"
        assert all(n == 1 for n in stored.values())
        assert samples > 20 and damaged == 0
        assert damaged_entries(spool) == []
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        assert gateway.terminate() == 0
        assert store.terminate() == 0
        gateway.close()
        store.close()


@contextlib.contextmanager
def tmpfs(path: Path, megabytes: int) -> Iterator[Path]:
    """A small filesystem of its own at path, mounted for the test (root only)."""
    if os.geteuid() != 0:
        if os.environ.get("MXDESK_REQUIRE_REAL") == "1":
            pytest.fail("mounting a tmpfs needs root (MXDESK_REQUIRE_REAL=1)")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("MXDESK_REQUIRE_REAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def mail_from(port: int, *options: str) -> str:
    w = await Wire.open(port)
    try:
        await w.hello()
        return await w.cmd(" ".join(["MAIL FROM:<c@cliente.example>", *options]))
    finally:
        await w.close()


async def test_spool_filesystem_below_reserve_answers_452_at_mail_from(short_tmp: Path) -> None:
    reserve = 8  # MiB
    port = free_port()
    with tmpfs(short_tmp / "spool", 32) as spool_dir:
        config = write_config(
            short_tmp,
            port,
            f'spool_path = "{spool_dir}/spool.db"\nmin_free_mb = {reserve}',
        )
        provision(config)
        store = Daemon(config, "store", short_tmp / "store.log")
        gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
        store.start()
        gateway.start()
        ballast = spool_dir / "ballast"
        try:
            body = b"Subject: antes\r\n\r\nx\r\n"
            assert (await send_message(port, "c@cliente.example", [MAILBOX], body))[:3] == "250"
            await wait_for(lambda: not list_entries(spool_dir / "spool.db"), what="delivery")
            # Free space 2 MiB over the reserve: a declared SIZE (RFC 1870) that would take
            # it under is refused, one that leaves the reserve whole is not (the bound).
            ballast.write_bytes(b"\0" * (free_bytes(spool_dir) - (reserve + 2) * 2**20))
            room = free_bytes(spool_dir) - reserve * 2**20
            over = await wait_for(
                lambda: _refused(port, f"SIZE={room + 1}"),
                what="452 for a SIZE over the room left",
            )
            assert over.startswith("452 4.3.1")
            assert (await mail_from(port, f"SIZE={room}")).startswith("250 2.1.0")
            # Under the reserve: every MAIL FROM gets 452 4.3.1, and nothing follows.
            with ballast.open("ab") as f:
                f.write(b"\0" * (3 * 2**20))
            refused = await wait_for(
                lambda: _refused(port), what="452 at MAIL FROM under the reserve"
            )
            print(f"\nfull disk: {free_bytes(spool_dir) // 1024} KiB free: {refused!r}")
            assert refused.startswith("452 4.3.1")
            w = await Wire.open(port)
            await w.hello()
            assert (await w.cmd("MAIL FROM:<c@cliente.example>")).startswith("452 4.3.1")
            assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("503")
            await w.close()
            # Space freed: accepted again, and delivered.
            ballast.unlink()
            await wait_for(lambda: _accepted(port), what="250 at MAIL FROM once space is freed")
            body = b"Subject: depois\r\n\r\nx\r\n"
            assert (await send_message(port, "c@cliente.example", [MAILBOX], body))[:3] == "250"
            await wait_for(
                lambda: (
                    {r["subject"] for r in stored_messages(short_tmp / "state" / "tickets.db")}
                    == {"antes", "depois"}
                ),
                what="both messages filed",
            )
        finally:
            assert gateway.terminate() == 0
            assert store.terminate() == 0
            gateway.close()
            store.close()


def test_free_space_is_measured_at_most_once_a_second(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAIL FROM stays cheap: thousands of them in a second make one statvfs."""
    from mxdesk.gateway import diskspace

    now = [100.0]
    calls: list[str] = []
    real, free = os.statvfs, free_bytes(short_tmp)

    def counted(path: str | Path) -> os.statvfs_result:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(diskspace.os, "statvfs", counted)
    reserve = diskspace.SpaceReserve(short_tmp, 1, clock=lambda: now[0])
    for _ in range(1000):
        assert not reserve.low()
    now[0] += diskspace.MEASURE_EVERY - 0.001
    assert not reserve.low()
    assert calls == [str(short_tmp)]
    now[0] += 0.001
    assert reserve.low(free + 2**30)  # a SIZE over all that is free leaves no reserve
    assert len(calls) == 2
    assert not diskspace.SpaceReserve(short_tmp, 0).low(free * 2)  # 0: no reserve


async def _refused(port: int, *options: str) -> str | None:
    """The reply to MAIL FROM if it refused, else None (the gateway has not measured yet)."""
    reply = await mail_from(port, *options)
    return reply if not reply.startswith("250") else None


async def _accepted(port: int) -> bool:
    return (await mail_from(port)).startswith("250")


SENDER = "suporte@marca.helpdesk.example"
OTHER = "vendas@marca.helpdesk.example"


def _message(subject: str, to: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@marca.helpdesk.example>\r\n\r\nOi\r\n"
    ).encode()


async def test_spool_left_by_a_crash_and_a_bad_disk(short_tmp: Path) -> None:
    """Entries written into spool.db before the gateway starts: a truncated one and one
    without recipients are held and never sent; one a dead gateway had claimed is delivered;
    ones delivered to some recipients go only to the others."""
    require_real("smtp-sink")
    sink, dns = Sink(short_tmp), DnsServer()
    config = config_with_remote_mx(short_tmp, sink.port, dns)
    cli(config, "mailbox", "add", OTHER, "--name", "Vendas Marca")
    spool = short_tmp / "state" / "spool.db"
    pending, delivered = "pending", "delivered"
    truncated = seed_entry(
        spool, "in", "c@cliente.example", [(MAILBOX, "marca", pending)],
        b"Subject: cortada\r\n\r\n" + b"x" * 80, size=4096,
    )  # fmt: skip
    no_rcpts = seed_entry(spool, "in", "c@cliente.example", [], b"Subject: sem destino\r\n\r\nx")
    claimed = seed_entry(
        spool, "out", SENDER, [("um@example.com", "marca", pending)],
        _message("reclamada", "um@example.com"), state="delivering",
    )  # fmt: skip
    half_out = seed_entry(
        spool, "out", SENDER,
        [("dois@example.com", "marca", delivered), ("tres@example.com", "marca", pending)],
        _message("metade fora", "dois@example.com, tres@example.com"),
    )  # fmt: skip
    half_in = seed_entry(
        spool, "in", "c@cliente.example",
        [(MAILBOX, "marca", delivered), (OTHER, "marca", pending)],
        b"Subject: metade dentro\r\nMessage-ID: <metade@cliente.example>\r\n\r\nOi\r\n",
    )  # fmt: skip
    store = Daemon(config, "store", short_tmp / "store.log")
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    store.start()
    gateway.start()
    try:
        await wait_for(
            lambda: {e.id for e in list_entries(spool)} == {truncated, no_rcpts},
            timeout=30,
            what="the deliverable entries delivered",
        )
        left = {e.id: e for e in list_entries(spool)}
        assert all(e.state == "held" for e in left.values())
        assert left[truncated].last_error == "damaged: 100 of its 4096 bytes in the spool"
        assert left[no_rcpts].last_error == "damaged: no recipients recorded"
        listed = cli(config, "queue", "list").stdout
        assert truncated in listed and no_rcpts in listed and "damaged" in listed
        # The store got the half-delivered message for the remaining mailbox only, and
        # nothing of the damaged ones.
        conn = sqlite3.connect(short_tmp / "state" / "tickets.db")
        filed = conn.execute("SELECT queue_id, recipient FROM messages").fetchall()
        conn.close()
        assert filed == [(half_in, OTHER)]
        # The remote side got the claimed reply once, and the half-sent one for tres@ only.
        dumps = await wait_for(lambda: len(sink.messages()) == 2 and sink.messages())
        rcpts = sorted(
            (
                re.findall(rb"^X-Rcpt-Args: <([^>]+)>", d, re.M),
                re.findall(rb"^Subject: (.+)$", d, re.M),
            )
            for d in dumps
        )
        assert rcpts == [
            ([b"tres@example.com"], [b"metade fora"]),
            ([b"um@example.com"], [b"reclamada"]),
        ]
        history = cli(config, "queue", "history", claimed).stdout
        assert "stopped during an attempt" in history
        # Released by a person, a damaged entry is held again, not sent.
        cli(config, "queue", "release", truncated)
        await wait_for(
            lambda: [e.state for e in list_entries(spool) if e.id == truncated] == ["held"],
            what="the released damaged entry held again",
        )
        print(f"\nseeded spool: held {sorted(left)}, delivered {half_in}, {claimed}, {half_out}")
    finally:
        assert gateway.terminate() == 0
        assert store.terminate() == 0
        gateway.close()
        store.close()
        sink.close()
        dns.close()


async def test_a_second_gateway_leaves_the_claims_of_the_running_one_alone(
    short_tmp: Path,
) -> None:
    """A claim dies with the process that made it, and only then: a second gateway started
    on the same spool by mistake must not put the running one's claimed reply back in the
    queue, where `queue cancel` would take it while it is being sent."""
    connected = asyncio.Event()
    peers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)  # a remote MX that accepts and never greets
        connected.set()

    remote = await asyncio.start_server(silent, "127.0.0.1", 0)
    dns = DnsServer()
    config = config_with_remote_mx(short_tmp, remote.sockets[0].getsockname()[1], dns)
    spool = short_tmp / "state" / "spool.db"
    entry = seed_entry(
        spool, "out", SENDER, [("um@example.com", "marca", "pending")],
        _message("em envio", "um@example.com"),
    )  # fmt: skip
    first = Daemon(config, "gateway", short_tmp / "gateway.log")
    second = Daemon(config, "gateway", short_tmp / "second.log")
    first.start()
    try:
        await asyncio.wait_for(connected.wait(), 30)
        assert [e.state for e in list_entries(spool)] == ["delivering"]
        with pytest.raises(AssertionError, match="exited 3"):
            second.start()
        assert f"the gateway spool {spool} is in use by a running gateway" in (
            second.log.read_text()
        )
        assert [e.state for e in list_entries(spool)] == ["delivering"]
        refused = cli(config, "queue", "cancel", entry, check=False)
        assert refused.returncode != 0, refused.stdout
        assert [e.id for e in list_entries(spool)] == [entry]
    finally:
        for writer in peers:
            writer.close()  # the delivery fails at once, so the gateway stops quickly
            await writer.wait_closed()
        remote.close()
        assert first.terminate() == 0
        first.close()
        second.close()
        dns.close()
