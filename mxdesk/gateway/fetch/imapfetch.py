"""One IMAP session of a fetcher: new mail by UID into the spool, then the after-action, then
IDLE (or a poll) until there is more."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from mxdesk.gateway.fetch import ledger
from mxdesk.gateway.fetch.errors import CommandFailed
from mxdesk.gateway.fetch.imap import FolderStatus, ImapClient, MessageInfo
from mxdesk.gateway.fetch.ledger import Fetched
from mxdesk.gateway.fetch.session import SessionContext, fetched, log

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(when: float) -> str:
    """An IMAP search date (RFC 3501 §9 date-text), one day early: SINCE has day granularity
    and the server's idea of a day is in its own time zone."""
    t = time.gmtime(when - 86400)
    return f"{t.tm_mday}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year}"


class ImapFetch:
    """Runs until the connection fails (it raises) or the task is cancelled."""

    def __init__(
        self,
        ctx: SessionContext,
        client: ImapClient,
        slot: Callable[[], AbstractAsyncContextManager[None]],
        waiting: Callable[[str], Awaitable[None]],
        heartbeat: float,
        poll_interval: float,
    ) -> None:
        """slot: the per-server bound, held while fetching (not while idle); waiting(status):
        records that the channel is idle or polling and that the look succeeded."""
        self.ctx = ctx
        self.client = client
        self._slot = slot
        self._waiting = waiting
        self._heartbeat = heartbeat
        self._poll = poll_interval
        self._folder: FolderStatus | None = None

    async def run(self) -> None:
        view = self.ctx.view
        async with self._slot():
            self._folder = await self.client.select(view.folder, readonly=view.after == "keep")
            await self.sync()
        push = "IDLE" in self.client.capabilities
        while True:
            if push:
                await self._waiting(ledger.IDLE)
                news = await self.client.idle(self._heartbeat)
                if not news:
                    # A heartbeat: real servers drop an idle connection silently after minutes.
                    await self.client.noop()
            else:
                await self._waiting(ledger.POLLING)
                await asyncio.sleep(self._poll)
                await self.client.noop()
            async with self._slot():
                await self.sync()

    async def sync(self) -> None:
        """Everything new since the last committed UID, in batches of ctx.batch."""
        assert self._folder is not None
        ctx, spool, view = self.ctx, self.ctx.spool, self.ctx.view
        folder = self._folder
        st = await spool.read(lambda c: ledger.get_state(c, ctx.name))
        if st is None or st.started < view.created:
            # The first look: what is there already is the past; import from now on, or
            # the last --since days of it.
            now = time.time()
            last = 0 if view.since_days else max(folder.uidnext - 1, 0)
            floor = now - view.since_days * 86400 if view.since_days else 0.0
            await spool.transact(
                lambda c: ledger.set_position(
                    c, ctx.name, folder.uidvalidity, last, floor=floor, started=now
                ),
                new=False,
            )
            log.info("channel=%s first look: from UID %d on", ctx.name, last + 1)
        elif st.uidvalidity != folder.uidvalidity:
            log.warning(
                "channel=%s UIDVALIDITY changed from %d to %d: every UID is new; the ledger"
                " keeps what was fetched from being fetched twice",
                ctx.name,
                st.uidvalidity,
                folder.uidvalidity,
            )
            # INTERNALDATE has whole seconds: a second early, the ledger drops the rest.
            floor = int(st.started) - 1 - view.since_days * 86400

            def restart(c: sqlite3.Connection) -> None:
                ledger.drop_owed(c, ctx.name, folder.uidvalidity)
                ledger.set_position(c, ctx.name, folder.uidvalidity, 0, floor=floor)

            await spool.transact(restart, new=False)
        st = await spool.read(lambda c: ledger.get_state(c, ctx.name))
        assert st is not None
        await self._settle_owed(folder.uidvalidity)
        uids = await self.client.search_uids(f"UID {st.last_uid + 1}:*")
        uids = [u for u in uids if u > st.last_uid]
        floor = st.floor
        if floor:
            # By date: SINCE narrows it to days, INTERNALDATE (in _batch) to the second.
            since = set(await self.client.search_uids(f"SINCE {imap_date(floor)}"))
            todo = [u for u in uids if u in since]
        else:
            todo = uids
        for start in range(0, len(todo), ctx.batch):
            missing = await self._batch(todo[start : start + ctx.batch], folder.uidvalidity, floor)
            if missing:
                # Not a silent stall: the channel fails (reconnects, and after alert_after
                # the owner hears of it) until the server sends the message.
                raise CommandFailed(
                    f"the server lists UID {missing} in {view.folder} but does not send it"
                )
        if floor:
            end = max(uids, default=st.last_uid)
            await spool.transact(
                lambda c: ledger.set_position(c, ctx.name, folder.uidvalidity, end, floor=0.0),
                new=False,
            )

    async def _batch(self, uids: Sequence[int], uidvalidity: int, floor: float) -> int:
        """Fetches and commits uids; the first UID the server left out, or 0."""
        ctx = self.ctx
        infos = {i.uid: i for i in await self.client.fetch_info(uids)}
        take: list[MessageInfo] = []
        too_big: list[MessageInfo] = []
        for info in infos.values():
            if info.internaldate < floor:
                continue
            (too_big if info.size > ctx.max_message_size else take).append(info)
        bodies: dict[int, Fetched] = {}
        if take:
            async for uid, data in self.client.fetch_bodies(sorted(i.uid for i in take)):
                if uid in infos:
                    bodies[uid] = await fetched(ctx, str(uid), data)
        # The position moves past a UID only when it is settled: committed, skipped as too
        # big, before the floor, or gone from the mailbox. A message the server listed but did
        # not send stops it, so the next look asks again.
        last = missing = 0
        wanted = {i.uid for i in take}
        for uid in sorted(uids):
            if uid in wanted and uid not in bodies:
                missing = uid
                break
            last = uid
        batch = [bodies[u] for u in sorted(bodies) if u <= last]
        owe = ctx.view.after != "keep"
        big = [i for i in too_big if i.uid <= last]
        if last == 0:
            return missing

        def commit(c: sqlite3.Connection) -> None:
            added = ledger.commit_batch(
                c,
                ctx.name,
                batch,
                uidvalidity=uidvalidity,
                last_uid=last,
                owe=owe,
                skipped=len(big),
            )
            counts.append(added)

        counts: list[int] = []
        await ctx.spool.transact(commit, new=bool(batch))
        ctx.committed(counts[0] if counts else 0)
        for info in big:
            await ctx.skipped(str(info.uid), info.size)
        if owe and batch:
            await self._after([int(f.uid) for f in batch], uidvalidity)
        return missing

    async def _settle_owed(self, uidvalidity: int) -> None:
        """After-actions a previous session committed but could not finish."""
        ctx = self.ctx
        if ctx.view.after == "keep":
            return
        owed = await ctx.spool.read(lambda c: ledger.owed(c, ctx.name, uidvalidity))
        if owed:
            await self._after([int(u) for u in owed], uidvalidity)

    async def _after(self, uids: list[int], uidvalidity: int) -> None:
        """The --after action, once the spool has the messages (DESIGN invariant 8)."""
        ctx, client = self.ctx, self.client
        action, _, target = ctx.view.after.partition(":")
        if action == "seen":
            await client.add_flags(uids, "\\Seen")
        elif action == "move":
            try:
                await client.move(uids, target)
            except CommandFailed:
                await client.create(target)
                await client.move(uids, target)
        elif action == "delete":
            await client.add_flags(uids, "\\Deleted")
            if "UIDPLUS" in client.capabilities:
                # Only these UIDs: a message another client flagged \Deleted stays.
                await client.uid_expunge(uids)
        done = [str(u) for u in uids]
        await ctx.spool.transact(
            lambda c: ledger.settle(c, ctx.name, uidvalidity, done),
            new=False,
        )
