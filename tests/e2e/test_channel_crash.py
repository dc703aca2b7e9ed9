"""Exactly once from a company mailbox: 500 messages arrive while the fetcher runs with --after
delete, the gateway is killed -9 at random moments and Dovecot kicks its sessions in between;
every message becomes one ticket, and none leaves the mailbox before the spool has it."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_real, wait_for_sync
from daemons import Daemon, cli, provision, write_config
from dovecot_mail import REQUIRED_PROGRAMS, MailServer
from wire import stored_messages

MESSAGES = int(os.environ.get("MXDESK_FETCH_CRASH_MESSAGES", "500"))
USER = "carga@empresa.example"
PASSWORD = "s3nha-carga"
CHANNELS = """
[channels]
poll_interval = 0.5
idle_heartbeat = 30
timeout = 5
retry_initial = 0.1
retry_max = 0.5
batch = 20
"""

pytestmark = pytest.mark.real


@pytest.fixture
def mail() -> Iterator[MailServer]:
    for program in REQUIRED_PROGRAMS:
        require_real(program)
    with MailServer({USER: PASSWORD}) as srv:
        yield srv


def spooled_ids(spool: Path) -> set[str]:
    """Message-IDs of the inbound entries the spool holds right now."""
    if not spool.exists():
        return set()
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT data FROM entries WHERE kind='in'").fetchall()
    finally:
        conn.close()
    found = set()
    for (data,) in rows:
        for line in bytes(data).split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                found.add(line.split(b":", 1)[1].strip().decode())
    return found


def test_kill_9_and_kicks_while_fetching_with_delete(short_tmp: Path, mail: MailServer) -> None:
    config = write_config(short_tmp)
    config.write_text(config.read_text() + CHANNELS)
    provision(config)
    cli(
        config,
        *("channel", "add", "--tenant", "marca", "--address", USER, "--host", "127.0.0.1"),
        *("--port", str(mail.imaps_port), "--ca-file", str(mail.ca_file), "--after", "delete"),
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    store = Daemon(config, "store", short_tmp / "store.log")
    gateway = Daemon(config, "gateway", short_tmp / "gateway.log")
    store.start()
    gateway.start()
    spool = short_tmp / "state" / "spool.db"
    tickets = short_tmp / "state" / "tickets.db"
    wait_for_sync(lambda: spooled_started(spool), 30, "the channel's first look")
    injected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    violations: list[str] = []

    def inject() -> None:
        for i in range(MESSAGES):
            mid = f"<carga{i}@cliente.example>"
            head = f"From: c{i}@cliente.example\r\nSubject: carga {i}\r\nMessage-ID: {mid}\r\n"
            body = f"{head}\r\n{i}\r\n"
            mail.deliver(USER, body.encode())
            with lock:
                injected.append(mid)

    def audit() -> None:
        # Read the mailbox first, then spool and tickets: a message missing from the mailbox
        # at the first read must have been in the spool by then, and stays in spool or store.
        while not stop.is_set():
            with lock:
                before = list(injected)
            present = set(mail.message_ids(USER))
            kept = spooled_ids(spool) | {r["message_id"] for r in stored_messages(tickets)}
            for mid in before:
                if mid not in present and mid.strip("<>") not in {k.strip("<>") for k in kept}:
                    violations.append(mid)
            time.sleep(0.2)

    rng = random.Random(int(os.environ.get("MXDESK_CRASH_SEED", "2026")))
    injector = threading.Thread(target=inject)
    auditor = threading.Thread(target=audit)
    injector.start()
    auditor.start()
    kills = kicks = 0
    try:
        while injector.is_alive():
            time.sleep(rng.uniform(0.3, 1.2))
            if (kills + kicks) % 2 == 0:
                gateway.kill9()
                kills += 1
                gateway.start()
            else:
                mail.kick(USER)
                kicks += 1
        injector.join()
        wait_for_sync(lambda: len(stored_messages(tickets)) >= MESSAGES, 240, f"{MESSAGES} tickets")
        wait_for_sync(lambda: mail.status(USER)["messages"] == 0, 60, "an empty mailbox")
    finally:
        stop.set()
        auditor.join()
        gateway.terminate()
        store.terminate()
        gateway.close()
        store.close()
    stored = Counter(r["message_id"] for r in stored_messages(tickets))
    doubled = {m: n for m, n in stored.items() if n > 1}
    print(f"fetch crash: {MESSAGES} messages, {kills} kill -9, {kicks} kicks, {len(stored)} stored")
    assert not violations, f"deleted before the spool had them: {violations[:5]}"
    assert not doubled, f"stored twice: {list(doubled)[:5]}"
    assert len(stored) == MESSAGES


def spooled_started(spool: Path) -> bool:
    from mxdesk.gateway.fetch.ledger import read_statuses

    return any(s.get("last_success") for s in read_statuses(spool).values())
