"""Each domain's DKIM keys: created with the domain, kept as 0600 files, listed in state.db."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from mxdesk.config import DkimConfig
from mxdesk.gateway.dkim import DkimKey, generate_key, load_key
from mxdesk.state import transaction


@dataclass(frozen=True)
class KeyRecord:
    domain: str
    selector: str
    algorithm: str
    path: str
    created: float


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_keys(conn: sqlite3.Connection, cfg: DkimConfig, domain: str) -> list[KeyRecord]:
    """Creates the domain's keys (RSA-2048, and Ed25519 when enabled) unless it has them."""
    existing = keys_of(conn, domain)
    if existing:
        return existing
    month = time.strftime("%Y%m", time.gmtime())
    kinds = [("rsa", f"mx{month}", "rsa-sha256")]
    if cfg.ed25519:
        kinds.append(("ed25519", f"mx{month}e", "ed25519-sha256"))
    records = []
    for kind, selector, algorithm in kinds:
        path = cfg.keys_dir / domain / f"{selector}.pem"
        if not path.exists():
            _write_private(path, generate_key(kind))
        records.append(KeyRecord(domain, selector, algorithm, str(path), time.time()))
    with transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO dkim_keys VALUES (?,?,?,?,?)",
            [(r.domain, r.selector, r.algorithm, r.path, r.created) for r in records],
        )
    return records


def keys_of(conn: sqlite3.Connection, domain: str) -> list[KeyRecord]:
    rows = conn.execute(
        "SELECT * FROM dkim_keys WHERE domain=? ORDER BY algorithm DESC, selector", (domain,)
    )
    return [KeyRecord(**r) for r in rows]


def load_signing_keys(conn: sqlite3.Connection, domain: str) -> list[DkimKey]:
    """The domain's keys, ready to sign; raises DkimKeyError on a weak or broken key file."""
    return [
        load_key(Path(r.path).read_bytes(), r.domain, r.selector) for r in keys_of(conn, domain)
    ]
