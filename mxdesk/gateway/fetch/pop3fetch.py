"""One POP3 look at a mailbox: every UIDL not committed yet into the spool, then DELE (taking
effect at QUIT) when the channel deletes."""

from __future__ import annotations

import sqlite3
import time
from email.utils import parsedate_to_datetime

from mxdesk.gateway.fetch import ledger
from mxdesk.gateway.fetch.ledger import Fetched
from mxdesk.gateway.fetch.pop3 import Pop3Client
from mxdesk.gateway.fetch.session import SessionContext, fetched, log
from mxdesk.gateway.senders import header_values


def _date(head: bytes) -> float | None:
    for value in header_values(head, b"date")[:1]:
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None


class Pop3Fetch:
    """A POP3 mailbox is a snapshot per session: each look is one session, ended by QUIT."""

    def __init__(self, ctx: SessionContext, client: Pop3Client) -> None:
        self.ctx = ctx
        self.client = client

    async def run(self) -> None:
        ctx, spool, client = self.ctx, self.ctx.spool, self.client
        listing = await client.uidl()
        sizes = await client.sizes()
        st = await spool.read(lambda c: ledger.get_state(c, ctx.name))
        seen = await spool.read(lambda c: ledger.uidls(c, ctx.name))
        # Only what the spool has is owed a DELE: the UIDLs seen also name the mailbox's past
        # (first look) and messages too big to fetch, which stay for a person.
        owed = set(await spool.read(lambda c: ledger.owed(c, ctx.name, 0)))
        first = st is None or st.started < ctx.view.created
        delete = ctx.view.after == "delete"
        todo: list[tuple[int, str]] = []
        deleted: list[str] = []
        for number, uidl in sorted(listing.items()):
            if uidl in seen:
                if delete and uidl in owed:
                    await client.dele(number)  # committed before; its DELE did not reach QUIT
                    deleted.append(uidl)
            else:
                todo.append((number, uidl))
        if first:
            todo = await self._first_look(todo)
        batch: list[Fetched] = []
        taken: list[tuple[int, str]] = []  # in the spool: only these may be deleted
        skipped = 0
        for number, uidl in todo:
            size = sizes.get(number, 0)
            if size > ctx.max_message_size:
                # Remembered as seen, never deleted: it stays in the mailbox for a person.
                skipped += 1
                batch.append(Fetched(uidl, f"skipped:{uidl}", None))
                await ctx.skipped(uidl, size)
                continue
            data = await client.retr(number, ctx.max_message_size)
            batch.append(await fetched(ctx, uidl, data))
            taken.append((number, uidl))
            if len(batch) >= ctx.batch:
                await self._commit(batch, skipped)
                batch, skipped = [], 0
        await self._commit(batch, skipped)
        if delete:
            # DELE only marks; the server deletes at QUIT, after every commit above.
            for number, uidl in taken:
                await client.dele(number)
                deleted.append(uidl)
        await client.quit()
        present = set(listing.values())

        def settle(c: sqlite3.Connection) -> None:
            ledger.forget_uidls(c, ctx.name, present)
            # Deleted at QUIT, or gone from the mailbox otherwise: owed nothing any more.
            ledger.settle(c, ctx.name, 0, [*deleted, *(owed - present)])

        await spool.transact(settle, new=False)

    async def _first_look(self, todo: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """What is in the mailbox at the first look is the past: only --since DAYS of it is
        imported (by its Date: header, read with TOP), the rest only remembered."""
        ctx = self.ctx
        take: list[tuple[int, str]] = []
        if ctx.view.since_days:
            floor = time.time() - ctx.view.since_days * 86400
            for number, uidl in todo:
                when = _date(await self.client.top(number))
                if when is None or when >= floor:
                    take.append((number, uidl))
        past = [Fetched(u, f"past:{u}", None) for n, u in todo if (n, u) not in take]

        def start(c: sqlite3.Connection) -> None:
            ledger.commit_batch(c, ctx.name, past, uidvalidity=0, last_uid=None, owe=False)
            ledger.set_position(c, ctx.name, 0, 0)

        await ctx.spool.transact(start, new=False)
        log.info(
            "channel=%s first look: %d messages there, %d imported", ctx.name, len(todo), len(take)
        )
        return take

    async def _commit(self, batch: list[Fetched], skipped: int) -> None:
        if not batch:
            return
        ctx = self.ctx
        counts: list[int] = []

        # A message in the spool is owed its DELE (--after delete) until a QUIT confirms it.
        owe = ctx.view.after == "delete"
        stays = [f for f in batch if f.key.startswith("skipped:")]
        spooled = [f for f in batch if not f.key.startswith("skipped:")]

        def commit(c: sqlite3.Connection) -> None:
            ledger.commit_batch(c, ctx.name, stays, uidvalidity=0, last_uid=None, owe=False)
            counts.append(
                ledger.commit_batch(
                    c, ctx.name, spooled, uidvalidity=0, last_uid=None, owe=owe, skipped=skipped
                )
            )

        await ctx.spool.transact(commit, new=any(f.entry is not None for f in batch))
        ctx.committed(counts[0] if counts else 0)
