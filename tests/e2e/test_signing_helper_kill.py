"""kill -9 of the gateway's DKIM signing helper, each time one has started again, while replies
are submitted and delivered: every reply is accepted, delivered once and signed with a
signature that verifies (by the helper, or on a worker thread while there is none)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from pathlib import Path

import dkim
from conftest import require_real, wait_for
from daemons import Daemon, cli, provision, write_config
from dns_server import DnsServer
from sink import Sink
from test_crash_outbound import submit_all

from mxdesk.gateway.queuectl import list_entries

MESSAGES = int(os.environ.get("MXDESK_SIGNER_KILL_MESSAGES", "400"))
CLIENTS = 10


def helper_pid(gateway: int) -> int | None:
    children = Path(f"/proc/{gateway}/task/{gateway}/children").read_text().split()
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"mxdesk.gateway.signer" in command:
            return int(child)
    return None


async def test_kill_9_of_the_signing_helper_loses_and_leaves_unsigned_nothing(
    short_tmp: Path,
) -> None:
    require_real("smtp-sink")
    dns = DnsServer()
    dns.add("example.com", "MX", "10 mx.example.com.").add("mx.example.com", "A", "127.0.0.1")
    sink = Sink(short_tmp)
    try:
        await run(short_tmp, dns, sink)
    finally:
        sink.close()
        dns.close()


async def run(short_tmp: Path, dns: DnsServer, sink: Sink) -> None:
    config = write_config(short_tmp)
    config.write_text(
        config.read_text() + f"\n[gateway.outbound]\nsend_delay = 0.0\nsmtp_port = {sink.port}\n"
        f'nameservers = ["127.0.0.1:{dns.port}"]\n'
    )
    provision(config)  # marca.helpdesk.example active, suporte@ its mailbox
    shown = json.loads(cli(config, "domain", "show", "marca.helpdesk.example", "--json").stdout)
    txt = {f"{r['name']}.".encode(): r["txt"].encode() for r in shown["dkim"]}
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    gateway.start()
    assert gateway.proc is not None
    socket_path = short_tmp / "run" / "gateway" / "submit.sock"
    kills = 0
    done = asyncio.Event()

    async def killer() -> None:
        nonlocal kills
        while not done.is_set():
            await asyncio.sleep(0.15)
            pid = helper_pid(gateway.proc.pid)  # type: ignore[union-attr]
            if pid is not None and not done.is_set():
                os.kill(pid, signal.SIGKILL)
                kills += 1

    try:
        chaos = asyncio.create_task(killer())
        # 12 s in all: a new helper starts 5 s after the last one was killed.
        await submit_all(socket_path, MESSAGES, CLIENTS, pause=0.3)
        done.set()
        await chaos
        spool = short_tmp / "state" / "spool.db"
        await wait_for(lambda: not list_entries(spool), timeout=120, what="the spool to drain")
        dumps = sink.messages()
        received = Counter(
            m[1].decode() for d in dumps if (m := re.search(rb"^Subject: (carga \d+)\r?$", d, re.M))
        )
        verified = sum(
            bool(
                dkim.verify(
                    d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
                    dnsfunc=lambda n, timeout=5: txt.get(n),
                )
            )
            for d in dumps
        )
        log = gateway.log.read_text()
        print(f"\n{kills} helper kills, {len(dumps)} received, {verified} verified")
        assert kills >= 3
        assert log.count("DKIM signing helper (pid") >= 3  # each end said, with what follows
        # No session was answered with an error meanwhile: the threads signed.
        assert "internal error" not in log and " refused" not in log
        assert sorted(received) == sorted(f"carga {i}" for i in range(MESSAGES))
        assert set(received.values()) == {1}
        assert verified == len(dumps) == MESSAGES
        assert gateway.proc.poll() is None  # the gateway itself never stopped
    finally:
        done.set()
        gateway.close()
