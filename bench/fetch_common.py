"""The mailbox, the store and the checks both sides of bench/fetch_rate.py share: the messages,
a private Dovecot filled as a delivery agent fills it, a provisioned mxdesk with its store, and
what a run must find in tickets.db."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from accept_rate import new_dir
from daemons import Daemon, provision, write_config
from dovecot_mail import MailServer
from ticketsdb import message_rows

USER = "caixa@empresa.example"  # the company mailbox, a Dovecot login
PASSWORD = "s3nha-caixa"
# Where fetchmail delivers: a mailbox provision() creates (the store answers 550 for others).
STORE_MAILBOX = "suporte@marca.helpdesk.example"
# The certificate of tests/dovecot_mail.py is for this name; fetchmail checks only DNS names.
SERVER_NAME = "localhost"
# The [channels] section of the gateway; poll_interval matters for POP3 only (IMAP: IDLE).
CHANNELS = """
[channels]
poll_interval = {poll}
timeout = 30
retry_initial = 0.1
retry_max = 1
"""
ROOT_WARNING = "Running as root is discouraged"


@dataclass
class Run:
    side: str  # "fetchmail" or "mxdesk"
    messages: int
    seconds: float  # start → the last message filed
    fetcher_cpu_ms: float  # fetchmail's or the gateway's CPU time per message
    store_cpu_ms: float
    problems: int
    busy: float  # share of all the machine's CPUs busy (anyone's work) during the run, %
    first_s: float = 0.0  # mxdesk: start → the first message read from the mailbox
    fetched_s: float = 0.0  # mxdesk: start → the last message read (then committed)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


# -- the mailbox -----------------------------------------------------------------------------


def message(i: int, size: int) -> bytes:
    """Message i of every run: distinct Message-ID, sender and subject (a ticket each), LF line
    ends as a local delivery agent stores them in a Maildir, padded to about size bytes."""
    head = (
        f"Return-Path: <cliente{i}@cliente.example>\n"
        f"From: Cliente {i} <cliente{i}@cliente.example>\n"
        f"To: Empresa <{USER}>\n"
        f"Subject: Pedido {i:05d}: a impressora nao imprime\n"
        f"Date: Wed, 02 Dec 2026 10:{i // 60 % 60:02d}:{i % 60:02d} +0000\n"
        f"Message-ID: <pedido{i}@cliente.example>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
    )
    line = f"Linha do pedido {i:05d}: a impressora do andar 3 nao imprime desde ontem.\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


def expected_ids(count: int) -> set[str]:
    return {f"<pedido{i}@cliente.example>" for i in range(count)}


class Mailbox:
    """The company mailbox: one user of a fresh private Dovecot, whose Maildir the bench fills
    itself the way a delivery agent does (write into tmp/, rename into new/). doveadm save
    takes 30-50 ms a message, minutes for thousands; 2000 renames take about 80 ms."""

    def __init__(self) -> None:
        self.server = MailServer({USER: PASSWORD})
        self.maildir = self.server.root / "home" / USER / "Maildir"
        self._staged: list[tuple[Path, Path]] = []

    def start(self) -> None:
        self.server.start()
        owner = self.server.owner
        for path in (self.maildir.parent, self.maildir, *self._subdirs()):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, owner.uid, owner.gid)

    def _subdirs(self) -> list[Path]:
        return [self.maildir / name for name in ("tmp", "new", "cur")]

    def stage(self, count: int, size: int) -> None:
        """Writes the messages into tmp/, where Dovecot does not look."""
        owner = self.server.owner
        now, pid = int(time.time()), os.getpid()
        for i in range(count):
            data = message(i, size)
            # Dovecot reads the file size from S= instead of a stat.
            name = f"{now}.M{i}P{pid}.bench,S={len(data)}"
            tmp = self.maildir / "tmp" / name
            tmp.write_bytes(data)
            os.chown(tmp, owner.uid, owner.gid)
            self._staged.append((tmp, self.maildir / "new" / name))

    def publish(self) -> None:
        """The staged messages arrive: renamed into new/, as a delivery agent does."""
        for tmp, new in self._staged:
            os.rename(tmp, new)
        self._staged.clear()

    def count(self) -> int:
        return self.server.status(USER)["messages"]

    def problems(self) -> list[str]:
        return [
            line
            for line in self.server.log_text().splitlines()
            if " Error: " in line or " Warning: " in line or " Fatal: " in line
        ]

    def close(self) -> None:
        self.server.close()


# -- what both sides share -----------------------------------------------------------------


def filed(database: Path) -> list[tuple[str | None, str | None, float]]:
    """(queue id, Message-ID, created) of every message in tickets.db."""
    return message_rows(database, "queue_id, message_id, created")


def check_once(rows: list[tuple[str | None, str | None, float]], count: int) -> None:
    """Every message of the mailbox is in tickets.db, and only once."""
    ids = [mid for _, mid, _ in rows]
    if len(ids) != count or set(ids) != expected_ids(count):
        missing = len(expected_ids(count) - set(ids))
        raise RuntimeError(f"{len(ids)} messages filed for {count} ({missing} missing)")


def log_problems(*logs: Path) -> list[str]:
    return [
        line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line or "duplicate delivery" in line
    ]


@contextmanager
def mxdesk_instance(args: argparse.Namespace) -> Iterator[tuple[Path, Daemon]]:
    """A provisioned mxdesk root (config, state) with its store running; removed afterwards."""
    root = new_dir(args, "mx")
    config = write_config(root)
    channels = CHANNELS.format(poll=args.poll_interval) + batch_setting(args)
    config.write_text(config.read_text() + channels)
    provision(config)
    store = Daemon(config, "store", root / "store.log")
    try:
        store.start()
        yield root, store
    finally:
        store.close()
        if not args.keep_dirs:
            shutil.rmtree(root, ignore_errors=True)


def batch_setting(args: argparse.Namespace) -> str:
    return f"batch = {args.batch}\n" if args.batch else ""


def stop(*daemons: Daemon) -> None:
    codes = [d.terminate() for d in daemons]
    if any(codes):
        raise RuntimeError(f"{[d.command for d in daemons]} exited {codes}")


def pid_of(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid
