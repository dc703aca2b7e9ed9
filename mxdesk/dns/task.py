"""The shape of the gateway's DNS tasks: a state.db connection of their own and a pass again
and again (`tick`), a failing pass logged and tried again at the next one."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from mxdesk import state
from mxdesk.config import Config
from mxdesk.tasks import cancel_and_wait

TICK_SECONDS = 2.0


class StateTask:
    config: Config
    name = "task"
    _task: asyncio.Task[None] | None = None
    _conn: sqlite3.Connection | None = None

    def start(self) -> None:
        self._conn = state.connect(self.config.general.state_db)
        self._task = asyncio.create_task(self._run(self._conn))

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._conn is not None:
            self._conn.close()

    async def _run(self, conn: sqlite3.Connection) -> None:
        log = logging.getLogger(f"mxdesk.dns.{self.name}")
        while True:
            try:
                await self.tick(conn)
            except Exception as exc:
                log.exception("%s pass failed: %s", self.name, exc)
            await asyncio.sleep(min(self.config.dns.check_interval, TICK_SECONDS))

    async def tick(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError
