"""Stopping asyncio tasks for certain."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any], patience: float = 1.0) -> None:
    """Cancels the tasks and returns once every one has ended. A cancellation can be lost
    (before Python 3.12, asyncio.wait_for swallows one that arrives just as what it waits for
    completes, and the task goes on): a task still running after `patience` seconds is
    cancelled again, so that a stop never hangs."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: an error at the end is not logged as never retrieved
