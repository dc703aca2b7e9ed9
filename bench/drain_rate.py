"""Accept → ticket without the accept: how fast a backlog in the spool becomes tickets, against
Postfix's accept rate.

The second half of the way from a client's DATA to a ticket, measured alone: the gateway's
inbound runner hands every entry to the store over LMTP, the store files it on a ticket and the
entry leaves the spool (with its fsyncs on both sides). It shows whether the store and the
hand-over keep up with an accept rate (`accept_rate.py` measures both halves together, where the
slower one sets the pace).

  a) Postfix accepts ``--messages`` from smtp-source as in `accept_rate.py` (its accept rate);
  b) the gateway's spool is filled with as many inbound entries, due at once, each as the MX
     commits it (its Received: and Authentication-Results fields, ~4 KiB); then ``mxdesk store``
     and ``mxdesk gateway`` start and the backlog drains. The rate is the messages filed per
     second between the first ticket and the last (tickets.db's own times), so the daemons'
     start-up is not in it.

    .venv/bin/python bench/drain_rate.py [--messages N] [--size 4096] [--repeat 2]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from pathlib import Path

from accept_rate import (
    DOMAIN,
    MAILBOX,
    SENDER,
    Run,
    add_load_arguments,
    new_dir,
    print_reproduce,
    run_interleaved,
    run_postfix,
    stop_checked,
)
from daemons import Daemon, provision, write_config
from machine import machine, tree_seconds, wait_until
from ticketsdb import filed

from mxdesk.gateway.entries import INBOUND, SCHEMA, NewEntry, Recipient, insert_entry, new_queue_id
from mxdesk.state import migrate

HOST = f"mx.{DOMAIN}"


def message(i: int, queue_id: str, size: int) -> bytes:
    """An inbound message as the MX commits it: its verdicts and trace fields on top of what
    smtp-source sends."""
    head = (
        f"Authentication-Results: {HOST};\r\n\tspf=pass smtp.mailfrom=cliente.example;\r\n"
        "\tdkim=none;\r\n\tdmarc=pass (p=none) header.from=cliente.example\r\n"
        f"Received: from cliente.example ([127.0.0.1])\r\n\tby {HOST} (mxdesk) with ESMTP id"
        f" {queue_id}\r\n\tfor <{MAILBOX}>;\r\n\tThu, 3 Dec 2026 20:00:00 +0000\r\n"
        f"From: <{SENDER}>\r\nTo: <{MAILBOX}>\r\nDate: Thu, 3 Dec 2026 20:00:00 +0000\r\n"
        f"Message-Id: <{i}.bench@cliente.example>\r\nSubject: carga {i}\r\n\r\n"
    ).encode()
    line = b"La La La La La La La La La La La La La La La La La La La La La La La La La\r\n"
    return head + line * max(1, size // len(line))


def seed(spool: Path, count: int, size: int) -> None:
    """count inbound entries for MAILBOX, due now, in the spool at spool (the gateway is down)."""
    conn = sqlite3.connect(spool, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, SCHEMA)
        conn.execute("BEGIN")
        rcpt = Recipient(MAILBOX, MAILBOX, "marca")
        for i in range(count):
            queue_id = new_queue_id()
            data = message(i, queue_id, size)
            insert_entry(conn, NewEntry(queue_id, INBOUND, "127.0.0.1", SENDER, (rcpt,), data))
        conn.execute("COMMIT")
    finally:
        conn.close()


def run_drain(args: argparse.Namespace) -> Run:
    root = new_dir(args, "dr")
    config = write_config(root, gateway_extra="inbound_auth = { enabled = false }")
    provision(config)
    seed(root / "state" / "spool.db", args.messages, args.size)
    store = Daemon(config, "store", root / "store.log")
    gateway = Daemon(config, "gateway", root / "gateway.log")
    database = root / "state" / "tickets.db"
    try:
        store.start()
        assert store.proc is not None
        store_before = tree_seconds(store.proc.pid)
        started = time.monotonic()
        gateway.start()
        assert gateway.proc is not None
        wait_until(
            lambda: len(filed(database)) >= args.messages,
            args.timeout,
            "every entry to be filed on a ticket",
        )
        seconds = time.monotonic() - started
        cpu_ms = (
            1000 * tree_seconds(gateway.proc.pid) / args.messages,  # its start-up included
            1000 * (tree_seconds(store.proc.pid) - store_before) / args.messages,
        )
        rows, problems = stop_checked(gateway, store, database, args.messages, root)
    finally:
        gateway.close()
        store.close()
    shutil.rmtree(root, ignore_errors=True)
    created = sorted(c for _, c in rows)
    return Run(
        "gateway",
        args.messages,
        seconds,
        [],
        filing_rate=(len(created) - 1) / (created[-1] - created[0]),
        problems=problems,
        cpu_ms=cpu_ms,
    )


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    postfix = [r for r in runs if r.side == "postfix"]
    drains = [r for r in runs if r.side == "gateway"]
    best_p = max(postfix, key=lambda r: r.rate)
    best_d = max(drains, key=lambda r: r.filing_rate)
    print()
    print(f"{args.messages} messages of {args.size} bytes")
    for line in machine(args):
        print(line)
    print()
    print(f"{'run':<5}{'side':<9}{'accepted/s':>12}{'filed/s':>9}{'CPUs busy':>11}{'problems':>10}")
    for i, r in enumerate(runs, start=1):
        accepted = f"{r.rate:.0f}" if r.side == "postfix" else "-"
        filing = f"{r.filing_rate:.0f}" if r.filing_rate else "-"
        busy = f"{r.busy:.0f}%" if r.busy else "-"
        print(f"{i:<5}{r.side:<9}{accepted:>12}{filing:>9}{busy:>11}{r.problems:>10}")
    print()
    print(f"Postfix accept rate (best of {len(postfix)}):       {best_p.rate:8.0f} msg/s")
    print(f"spool → ticket, backlog (best of {len(drains)}):     {best_d.filing_rate:8.0f} msg/s")
    print(f"ratio spool→ticket / Postfix accept: {best_d.filing_rate / best_p.rate:8.2f}")
    gateway_cpu = sum(r.cpu_ms[0] for r in drains) / len(drains)
    store_cpu = sum(r.cpu_ms[1] for r in drains) / len(drains)
    print(
        f"CPU per message, mean of the drains: gateway {gateway_cpu:.2f} ms (its start-up"
        f" included), store {store_cpu:.2f} ms"
    )
    print_reproduce("bench/drain_rate.py", args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_load_arguments(parser, "parallel SMTP sessions of smtp-source (Postfix's side)")
    args = parser.parse_args()
    report(args, run_interleaved(args, run_postfix, run_drain))


if __name__ == "__main__":
    main()
