"""The store daemon's hand-over of outbound messages to the gateway: SMTP on its Unix socket.

`mxdesk ticket reply|new` only writes a message with status 'new' (like Postfix's maildrop);
this loop (like pickup) claims it, submits it with DSN parameters (RFC 3461) and records the
gateway's queue id, or a permanent refusal, or a retry time. A message left 'submitting' by a
crash is submitted again at the next start: when the gateway had already said 250, the
recipients get it twice, which is the price of never losing a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosmtplib

from mxdesk.gateway.retry import RetryPolicy
from mxdesk.state import transaction
from mxdesk.store import db as tickets_db
from mxdesk.store.db import FAILED, NEW, PENDING, QUEUED, SUBMITTING
from mxdesk.store.queries import Outgoing, get_outgoing
from mxdesk.tasks import cancel_and_wait

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger("mxdesk.store.submitter")
T = TypeVar("T")

POLL_INTERVAL = 0.5
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
BATCH = 20
TIMEOUT = 60.0
NOTIFY = "NOTIFY=SUCCESS,FAILURE,DELAY"
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9._-]{1,64})")


@dataclass(frozen=True)
class Claimed:
    """A message this daemon is handing over, and the recipients still to be accepted."""

    id: int
    ticket: int
    mail_from: str
    envid: str
    raw: bytes = field(repr=False)
    recipients: tuple[str, ...]
    attempts: int


@dataclass
class Result:
    """The gateway's answer to one message: a queue id, refused recipients, or try later."""

    queue_id: str | None = None
    refused: dict[str, str] = field(default_factory=dict)
    retry: str | None = None


class Outbox:
    """The hand-over's statements on tickets.db, through the daemon's own connection."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        backoff: tuple[float, float] = (BACKOFF_INITIAL, BACKOFF_MAX),
    ) -> None:
        self.db = db
        self.clock = clock
        # The gateway's retry rule (one place says how back-off grows); a reply is never
        # given up on here: it waits for the gateway however long that takes.
        self.backoff = RetryPolicy(backoff[0], backoff[1], 2.0, math.inf)

    def recover(self) -> int:
        """Puts back messages a crash left half handed over; returns how many."""
        with transaction(self.db.conn):
            return int(
                self.db.execute(
                    "UPDATE messages SET status = ?, next_submit = ? WHERE status = ?",
                    [NEW, self.clock(), SUBMITTING],
                ).rowcount
            )

    def claim(self, limit: int = BATCH) -> list[Claimed]:
        now = self.clock()
        due = "FROM messages WHERE status = ? AND next_submit <= ?"
        # A read first: most polls find nothing and need no write lock.
        if not list(self.db.query(f"SELECT 1 {due} LIMIT 1", [NEW, now])):
            return []
        claimed = []
        with transaction(self.db.conn):
            rows = self.db.query(
                "SELECT id, ticket, envelope_from, envid, raw, submit_attempts"
                f" {due} ORDER BY next_submit, id LIMIT ?",
                [NEW, now, limit],
            )
            for r in list(rows):
                self.db.execute(
                    "UPDATE messages SET status = ? WHERE id = ? AND status = ?",
                    [SUBMITTING, r["id"], NEW],
                )
                recipients = self.db.query(
                    "SELECT recipient FROM deliveries WHERE message = ? AND status = ?"
                    " ORDER BY rowid",
                    [r["id"], PENDING],
                )
                claimed.append(
                    Claimed(
                        id=r["id"],
                        ticket=r["ticket"],
                        mail_from=r["envelope_from"],
                        envid=r["envid"],
                        raw=r["raw"],
                        recipients=tuple(d["recipient"] for d in recipients),
                        attempts=r["submit_attempts"],
                    )
                )
        return claimed

    def finish(self, c: Claimed, result: Result) -> str:
        """Records a queue id and refused recipients; returns the message's new status."""
        now = self.clock()
        with transaction(self.db.conn):
            for recipient, reply in result.refused.items():
                tickets_db.set_delivery(self.db, c.id, recipient, FAILED, reply, now)
            # 'queued' stands until the deliveries say more (every recipient refused: failed).
            self.db.execute(
                "UPDATE messages SET status = ?, queue_id = ?, status_detail = '',"
                " submit_attempts = submit_attempts + 1 WHERE id = ? AND status = ?",
                [QUEUED, result.queue_id, c.id, SUBMITTING],
            )
            return tickets_db.refresh_status(self.db, c.id)

    def retry(self, c: Claimed, detail: str) -> float:
        """Puts the message back for a later attempt; returns the delay in seconds."""
        delay = self.backoff.delay(c.attempts + 1)
        with transaction(self.db.conn):
            self.db.execute(
                "UPDATE messages SET status = ?, status_detail = ?, next_submit = ?,"
                " submit_attempts = submit_attempts + 1 WHERE id = ? AND status = ?",
                [NEW, detail[: tickets_db.MAX_DETAIL], self.clock() + delay, c.id, SUBMITTING],
            )
        return delay


async def submit(smtp: aiosmtplib.SMTP, c: Claimed) -> Result:
    """One message on an open connection. Connection errors propagate: the caller retries."""
    if not c.recipients:
        return Result()  # all refused earlier: the deliveries say failed
    options = ["RET=HDRS", f"ENVID={c.envid}"]
    if not c.raw.isascii():
        options.append("BODY=8BITMIME")
    try:
        await smtp.mail(c.mail_from, options=options)
    except aiosmtplib.SMTPResponseException as exc:
        return _refusal(exc, c.recipients)
    refused: dict[str, str] = {}
    for recipient in c.recipients:
        try:
            await smtp.rcpt(recipient, options=[NOTIFY])
        except aiosmtplib.SMTPResponseException as exc:
            if not 500 <= exc.code < 600:
                await smtp.rset()
                return Result(retry=f"gateway deferred it: {_reply(exc)}")
            refused[recipient] = _reply(exc)
    if len(refused) == len(c.recipients):
        await smtp.rset()
        return Result(refused=refused)
    try:
        response = await smtp.data(c.raw)
    except aiosmtplib.SMTPResponseException as exc:
        accepted = [r for r in c.recipients if r not in refused]
        return _refusal(exc, accepted, refused)
    match = _QUEUED_AS.search(response.message)
    return Result(queue_id=match[1] if match else "", refused=refused)


def _refusal(
    exc: aiosmtplib.SMTPResponseException,
    recipients: tuple[str, ...] | list[str],
    refused: dict[str, str] | None = None,
) -> Result:
    if 500 <= exc.code < 600:
        return Result(refused={**(refused or {}), **dict.fromkeys(recipients, _reply(exc))})
    return Result(retry=f"gateway deferred it: {_reply(exc)}")


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return " ".join(f"{exc.code} {exc.message}".split())


class Submitter:
    """Polls the outbox and hands due messages to the gateway; one connection per batch."""

    def __init__(
        self,
        outbox: Outbox,
        socket_path: Path,
        host_name: str,
        poll_interval: float = POLL_INTERVAL,
        timeout: float = TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.socket_path = socket_path
        self.host_name = host_name
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._db_work: set[asyncio.Future[Any]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mxdesk-submitter")

    async def close(self) -> None:
        """Stops the loop, waits for its database work, and puts claimed messages back."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        while self._db_work:
            await asyncio.gather(*self._db_work, return_exceptions=True)
        await asyncio.to_thread(self.outbox.recover)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        # Shielded: a cancelled loop must not close the connection under a running statement.
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._db_work.add(work)
        work.add_done_callback(self._db_work.discard)
        return await asyncio.shield(work)

    async def _run(self) -> None:
        recovered = await self._db(self.outbox.recover)
        if recovered:
            log.warning(
                "%d messages were being handed over at a crash: submitting again", recovered
            )
        while True:
            try:
                batch = await self._db(self.outbox.claim)
                if batch:
                    await self._submit_batch(batch)
                    continue
            except Exception:
                log.exception("outbox: database error; trying again shortly")
                # Nothing is in flight now: what this loop claimed goes back (maybe twice).
                with contextlib.suppress(Exception):
                    await self._db(self.outbox.recover)
            await asyncio.sleep(self.poll_interval)

    async def _submit_batch(self, batch: list[Claimed]) -> None:
        smtp = aiosmtplib.SMTP(
            socket_path=str(self.socket_path),
            hostname=None,
            local_hostname=self.host_name,
            timeout=self.timeout,
            start_tls=False,
        )
        pending = list(batch)
        try:
            await smtp.connect()
            await smtp.ehlo()
            while pending:
                result = await submit(smtp, pending[0])
                await self._record(pending.pop(0), result)
            await smtp.quit()
        except (OSError, aiosmtplib.SMTPException) as exc:
            detail = f"gateway not reachable: {_describe(exc)}"
            for c in pending:
                await self._record(c, Result(retry=detail))
        finally:
            smtp.close()

    async def _record(self, c: Claimed, result: Result) -> None:
        if result.retry is not None:
            delay = await self._db(self.outbox.retry, c, result.retry)
            log.warning(
                "ticket=%d message=%d not handed over (%s); next try in %.0fs",
                c.ticket,
                c.id,
                result.retry,
                delay,
            )
            return
        status = await self._db(self.outbox.finish, c, result)
        for recipient, reply in result.refused.items():
            log.warning(
                "ticket=%d message=%d rcpt=%s refused: %s", c.ticket, c.id, recipient, reply
            )
        log.info(
            "ticket=%d message=%d queue_id=%s envid=%s status=%s",
            c.ticket,
            c.id,
            result.queue_id or "-",
            c.envid,
            status,
        )


def _describe(exc: BaseException) -> str:
    # aiosmtplib wraps a failed connect ("Error connecting to None on port None: …"): the
    # operating system's reason says more.
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc) or type(exc).__name__


def store_listening(lmtp_socket: Path) -> bool | None:
    """Whether a store daemon answers on its socket: True, False, or None (cannot tell)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(lmtp_socket))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError as exc:
        return False if exc.errno in (errno.ENOENT, errno.ECONNREFUSED) else None
    finally:
        probe.close()
    return True


def wait_handed_over(
    db: Database,
    message: int,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outgoing:
    """Message `message` once the store daemon handed it over or tried to (the gateway was
    not reachable), or as it is after `timeout` seconds."""
    deadline = clock() + timeout
    while True:
        out = get_outgoing(db, message)
        tried = out.status == NEW and out.submit_attempts > 0
        if out.status not in (NEW, SUBMITTING) or tried or clock() >= deadline:
            return out
        sleep(0.05)
