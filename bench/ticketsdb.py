"""What a bench reads from the store's tickets.db: the messages filed, and when."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def filed(database: Path) -> list[tuple[str, float]]:
    """(queue id, created) of every message in tickets.db."""
    return message_rows(database, "queue_id, created")


def message_rows(database: Path, columns: str) -> list[Any]:
    """The given columns of every message in tickets.db, read-only; none before the store
    made it."""
    if not database.exists():
        return []
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(f"SELECT {columns} FROM messages").fetchall()
    except sqlite3.OperationalError:  # the store has not made its schema yet
        return []
    finally:
        conn.close()
