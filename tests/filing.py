"""After a load that broke the store on purpose: the gateway's spool drained into it, and each
message the gateway accepted filed on a ticket exactly once."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from conftest import wait_for
from wire import stored_messages

from mxdesk.gateway.queuectl import list_entries


async def drained_and_filed(root: Path, accepted: Iterable[str]) -> list[sqlite3.Row]:
    """Waits for the spool under root to drain into the store; checks that every queue id in
    accepted was filed once and none twice; returns what the store holds."""
    await wait_for(
        lambda: not list_entries(root / "state" / "spool.db"),
        timeout=120,
        what="the spool to drain into the store",
    )
    rows = stored_messages(root / "state" / "tickets.db")
    stored = Counter(r["queue_id"] for r in rows)
    missing = [q for q in accepted if stored[q] == 0]
    assert not missing, f"{len(missing)} accepted messages never filed"
    doubled = [q for q, n in stored.items() if n > 1]
    assert not doubled, f"{len(doubled)} messages filed twice"
    return rows


def deferred_deliveries(log: Path) -> int:
    """Deliveries the gateway's log says were deferred (the store down or answering 4xx)."""
    return len(re.findall(r" deferred for ", log.read_text(errors="replace")))
