"""The store daemon's composition root: tickets.db, mailbox lookups, the LMTP socket and the
hand-over of replies to the gateway."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from mxdesk import state
from mxdesk.config import Config
from mxdesk.secrets import installation_key
from mxdesk.smtpfast import SessionFactory
from mxdesk.state import Mailbox
from mxdesk.store.db import open_tickets
from mxdesk.store.lmtp import LmtpHandler, LmtpSession, listen_unix
from mxdesk.store.submitter import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    POLL_INTERVAL,
    Outbox,
    Submitter,
)
from mxdesk.store.tickets import Delivery, Filed, TicketStore

log = logging.getLogger("mxdesk.store")
# Deliveries filed in one transaction at most: one batch stays well under a second.
MAX_BATCH = 64
# While deliveries keep coming (a batch committed less than BUSY_SECONDS ago), a batch of fewer
# than GATHER waits GATHER_SECONDS for more before its commit: a commit's fixed cost (some 17
# pages to the WAL, its fsync) is then shared by more messages. An idle store files at once.
GATHER, GATHER_SECONDS, BUSY_SECONDS = 8, 0.001, 0.005
# The gateway adds its own header lines to a message it accepted at its size limit.
HEADER_HEADROOM = 1024 * 1024


class StateMailboxes:
    """Looks recipients up in the state database through one read-only connection; an answer
    is remembered until the database changes (the CLI adds, disables or moves a mailbox), as
    the gateway's recipient policy does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._answers: state.Remembered | None = None

    def find(self, address: str) -> Mailbox | None:
        if self._conn is None or self._answers is None:
            self._conn = conn = state.connect(self.path, readonly=True)
            self._answers = state.Remembered(conn)
        conn = self._conn
        try:
            return self._answers.get(address, lambda: state.get_mailbox(conn, address))
        except sqlite3.Error:
            self.close()  # reopen on the next lookup: the file may have been replaced
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._answers = None


class ThreadedFiler:
    """Runs the ticket store in a worker thread with group commit: the deliveries that arrive
    while one batch is being committed are filed together in the next (one transaction, one
    fsync), so the store keeps up with a gateway delivering on many connections at once. A
    delivery is answered only after the commit that holds it."""

    def __init__(self, store: TicketStore, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._last_commit = -BUSY_SECONDS  # loop.time() when the last batch was committed
        self.running: set[asyncio.Future[None]] = set()
        self._waiting: list[tuple[Delivery, asyncio.Future[list[Filed | None]]]] = []
        self._batches: asyncio.Future[None] | None = None

    async def file(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]:
        answer: asyncio.Future[list[Filed | None]] = asyncio.get_running_loop().create_future()
        self._waiting.append(((raw, envelope_from, list(mailboxes)), answer))
        # done(), not membership of running: a task that has just returned leaves running
        # only at a later turn of the loop, and this delivery would wait for nobody.
        if self._batches is None or self._batches.done():
            self._batches = asyncio.ensure_future(self._commit_batches())
            self.running.add(self._batches)
            self._batches.add_done_callback(self.running.discard)
        # A client that hangs up does not stop a commit half-way; its retry finds it stored.
        return await asyncio.shield(answer)

    async def _commit_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            if len(self._waiting) < GATHER and loop.time() - self._last_commit < BUSY_SECONDS:
                await asyncio.sleep(GATHER_SECONDS)
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            deliveries = [d for d, _ in batch]
            try:
                results = await asyncio.to_thread(self.store.file_many, deliveries)
            except Exception:  # file_many answers None itself: this guards against its bugs
                log.exception("filing %d messages failed", len(batch))
                results = [[None] * len(d[2]) for d in deliveries]
            self._last_commit = loop.time()
            for (_, answer), filed in zip(batch, results, strict=True):
                if not answer.done():
                    answer.set_result(filed)

    async def drain(self) -> None:
        while self.running:
            await asyncio.gather(*self.running, return_exceptions=True)


class StoreService:
    """The running store: close() stops accepting, lets database work finish, then closes."""

    def __init__(
        self,
        server: asyncio.Server,
        sessions: set[LmtpSession],
        filer: ThreadedFiler,
        mailboxes: StateMailboxes,
        socket_path: Path,
        submitter: Submitter,
        renew: Callable[[Config], None],
    ) -> None:
        self.server = server
        self.sessions = sessions
        self.filer = filer
        self.mailboxes = mailboxes
        self.socket_path = socket_path
        self.submitter = submitter
        self._renew = renew

    def prepare_reload(self, config: Config) -> Callable[[], None]:
        """Message size and recipient limits for the LMTP sessions that start from then on."""
        return lambda: self._renew(config)

    async def close(self) -> None:
        await self.submitter.close()
        self.submitter.outbox.db.close()
        self.server.close()
        await self.filer.drain()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        await self.filer.drain()
        await self.server.wait_closed()
        self.filer.store.close()
        self.mailboxes.close()
        self.socket_path.unlink(missing_ok=True)
        log.info("store stopped")


async def start_store(
    config: Config,
    poll_interval: float = POLL_INTERVAL,
    backoff: tuple[float, float] = (BACKOFF_INITIAL, BACKOFF_MAX),
) -> StoreService:
    """Opens tickets.db, serves LMTP on the configured Unix socket and starts handing replies
    over to the gateway (poll_interval and backoff in seconds; tests make them short)."""
    store = TicketStore(
        await asyncio.to_thread(open_tickets, config.store.database),
        message_id_key=installation_key(config.general.state_dir),
        # The gateway's verdicts carry its host name; the store trusts only that header.
        host_name=config.general.host_name,
        duplicate_window=config.store.duplicate_window_days * 86400,
    )
    # Its own connection: the hand-over and the LMTP filing are separate SQLite writers.
    outbox = Outbox(await asyncio.to_thread(open_tickets, config.store.database), backoff=backoff)
    mailboxes = StateMailboxes(config.general.state_db)
    filer = ThreadedFiler(store)
    handler = LmtpHandler(mailboxes, filer, config.gateway.max_recipients)
    sessions: set[LmtpSession] = set()
    factory = SessionFactory(_template(handler, sessions, config))

    def renew(new: Config) -> None:
        handler.max_recipients = new.gateway.max_recipients
        factory.renew(_template(handler, sessions, new))

    try:
        server = await listen_unix(config.store.lmtp_socket, factory, config.store.socket_group)
    except BaseException:
        store.close()
        outbox.db.close()
        raise
    log.info("store listening on %s", config.store.lmtp_socket)
    submitter = Submitter(
        outbox, config.submission.socket, config.general.host_name, poll_interval=poll_interval
    )
    submitter.start()
    return StoreService(
        server, sessions, filer, mailboxes, config.store.lmtp_socket, submitter, renew
    )


def _template(
    handler: LmtpHandler, sessions: set[LmtpSession], config: Config
) -> Callable[[], LmtpSession]:
    def template() -> LmtpSession:
        return LmtpSession(
            handler,
            sessions,
            hostname=config.general.host_name,
            ident="mxdesk store",
            data_size_limit=config.gateway.max_message_size + HEADER_HEADROOM,
        )

    return template
