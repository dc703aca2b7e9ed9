"""The gateway's fetchers: one task per channel in state.db, started, restarted and stopped as the
CLI adds, changes, pauses and removes channels."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mxdesk import channels, state
from mxdesk.config import Config
from mxdesk.gateway.fetch import ledger
from mxdesk.gateway.fetch.alerts import Alerts
from mxdesk.gateway.fetch.fetcher import Fetcher, FetcherDeps
from mxdesk.gateway.fetch.session import log
from mxdesk.gateway.fetch.tokens import TokenSource
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.spool import Spool
from mxdesk.metrics import GatewayMetrics
from mxdesk.secrets import SecretsError, secrets_key
from mxdesk.tasks import cancel_and_wait

RESCAN = 3.0  # seconds between two looks at state.db for changed channels
PRUNE_EVERY = 3600.0


class ChannelManager:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        metrics: GatewayMetrics,
        tokens: TokenSource,
        verifier: InboundVerifier | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self._conn: sqlite3.Connection | None = None
        self._tasks: dict[str, tuple[float, bool, asyncio.Task[None]]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        cfg = config.channels
        self.alerts = Alerts(spool, self._state, config)
        self.deps = FetcherDeps(
            config=cfg,
            spool=spool,
            host_name=config.general.host_name,
            max_message_size=config.gateway.max_message_size,
            alerts=self.alerts,
            tokens=tokens,
            verifier=verifier,
            slot=self._slot,
            committed=lambda n: self.metrics.accepted.labels("channel").inc(n) if n else None,
        )

    def _state(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = state.connect(Path(self.config.general.state_db))
        return self._conn

    def key(self) -> bytes:
        return secrets_key(self.config.general)

    @contextlib.asynccontextmanager
    async def _slot(self, host: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(
            host, asyncio.Semaphore(self.config.channels.connections_per_server)
        )
        async with slot:
            yield

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channels")

    async def stop(self) -> None:
        tasks = [t for _, _, t in self._tasks.values()]
        if self._task is not None:
            tasks.append(self._task)
        await cancel_and_wait(*tasks)
        self._tasks.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        while True:
            try:
                await self.rescan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the channels cannot be read from the state database")
            await asyncio.sleep(RESCAN)

    async def rescan(self) -> None:
        conn = self._state()
        views = {v.name: v for v in channels.list_channels(conn)}
        for name, (updated, paused, task) in list(self._tasks.items()):
            view = views.get(name)
            if view is None or view.updated != updated or view.paused != paused or task.done():
                await cancel_and_wait(task)
                del self._tasks[name]
        for name, view in views.items():
            if name in self._tasks:
                continue
            if view.paused:
                self._tasks[name] = (view.updated, True, asyncio.create_task(self._paused(name)))
                continue
            try:
                settings = channels.load_channel(conn, secrets_key(self.config.general), name)
            except SecretsError as exc:
                log.error("channel=%s cannot decrypt its secret: %s", name, exc)
                continue
            fetcher = Fetcher(settings, self.deps)
            task = asyncio.create_task(fetcher.run(), name=f"channel {name}")
            self._tasks[name] = (view.updated, False, task)
            log.info("channel=%s started (%s %s:%d)", name, view.protocol, view.host, view.port)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY
            names = set(views)
            await self.spool.transact(lambda c: ledger.prune(c, names), new=False)

    async def _paused(self, name: str) -> None:
        await self.spool.transact(
            lambda c: ledger.set_status(c, name, status=ledger.PAUSED), new=False
        )
        await asyncio.Event().wait()
