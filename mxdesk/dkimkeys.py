"""Each domain's DKIM keys: 0600 files listed in state.db, each in one phase of its life.

A key is pending (published, not signing yet), active (signing), retiring (still published
for mail in transit, no longer signing), revoked (published as an empty p=, RFC 6376 §3.6.1)
or removing (its record being deleted). mxdesk.dns.rotation moves keys from one phase to the
next; only active keys ever sign.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from mxdesk.config import DkimConfig
from mxdesk.state import StateError, transaction

if TYPE_CHECKING:
    from mxdesk.gateway.dkimkey import DkimKey

PENDING, ACTIVE, RETIRING, REVOKED, REMOVING = (
    "pending",
    "active",
    "retiring",
    "revoked",
    "removing",
)
PUBLISHED = (PENDING, ACTIVE, RETIRING, REVOKED)  # the phases whose record is in the plan
REVOKED_TXT = "v=DKIM1; p="
RSA, ED25519 = "rsa-sha256", "ed25519-sha256"
# A delegated domain's customer publishes one CNAME per slot once; rotations alternate.
SLOTS = ("mxa", "mxb")


@dataclass(frozen=True)
class KeyRecord:
    domain: str
    selector: str
    algorithm: str
    path: str
    created: float
    state: str = ACTIVE
    served_since: float | None = None  # pending: since when every server serves its record
    activated: float | None = None  # when it began to sign
    retired: float | None = None  # when it stopped signing (retiring, revoked)
    note: str = ""  # why a step waits (publishing failed, a server does not serve it …)


_COLUMNS = tuple(f.name for f in fields(KeyRecord))


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def _kinds(cfg: DkimConfig, algorithms: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(key kind, algorithm) to create: RSA always, Ed25519 when enabled or already in use."""
    wanted = {RSA, *algorithms}
    if cfg.ed25519:
        wanted.add(ED25519)
    return [(k, a) for k, a in (("rsa", RSA), ("ed25519", ED25519)) if a in wanted]


def _suffix(algorithm: str) -> str:
    return "e" if algorithm == ED25519 else ""


def new_selectors(
    taken: set[str], algorithms: list[str], *, delegated: bool, now: float
) -> list[str]:
    """Selectors for new keys, one per algorithm. A delegated domain uses the slot its keys do
    not hold (mxa, mxb: the customer's CNAMEs point at both); others are dated mxYYYYMMDD,
    with b, c … when one is taken the same day."""
    if delegated:
        free = [s for s in SLOTS if not any(s + _suffix(a) in taken for a in algorithms)]
        if not free:
            raise StateError(
                "both DKIM slots (mxa, mxb) hold a key: the previous rotation's old key is"
                " still published; see 'mxdesk dkim status'"
            )
        return [free[0] + _suffix(a) for a in algorithms]
    day = time.strftime("%Y%m%d", time.gmtime(now))
    for letter in ["", *string.ascii_lowercase[1:]]:
        names = [f"mx{day}{letter}{_suffix(a)}" for a in algorithms]
        if not taken.intersection(names):
            return names
    raise StateError("too many DKIM keys made today for this domain")


def _insert(conn: sqlite3.Connection, records: list[KeyRecord]) -> None:
    placeholders = ",".join("?" * len(_COLUMNS))
    with transaction(conn):
        conn.executemany(
            f"INSERT OR IGNORE INTO dkim_keys ({','.join(_COLUMNS)}) VALUES ({placeholders})",
            [tuple(getattr(r, c) for c in _COLUMNS) for r in records],
        )


def _make(
    cfg: DkimConfig, domain: str, kinds: list[tuple[str, str]], selectors: list[str], state: str
) -> list[KeyRecord]:
    now = time.time()
    records = []
    for (kind, algorithm), selector in zip(kinds, selectors, strict=True):
        path = cfg.keys_dir / domain / f"{selector}.pem"
        if not path.exists():  # else a file a killed run wrote but never listed
            from mxdesk.gateway.dkimkey import generate_key

            _write_private(path, generate_key(kind))
        activated = now if state == ACTIVE else None
        records.append(
            KeyRecord(domain, selector, algorithm, str(path), now, state, None, activated)
        )
    return records


def create_keys(
    conn: sqlite3.Connection, cfg: DkimConfig, domain: str, *, delegated: bool = False
) -> list[KeyRecord]:
    """Creates the domain's first keys (RSA-2048, and Ed25519 when enabled) unless it has
    keys: they sign once the domain is active (its records are served)."""
    existing = keys_of(conn, domain)
    if existing:
        return existing
    kinds = _kinds(cfg)
    if delegated:
        selectors = [SLOTS[0] + _suffix(a) for _, a in kinds]
    else:
        month = time.strftime("%Y%m", time.gmtime())
        selectors = [f"mx{month}{_suffix(a)}" for _, a in kinds]
    records = _make(cfg, domain, kinds, selectors, ACTIVE)
    _insert(conn, records)
    return records


def add_pending(
    conn: sqlite3.Connection, cfg: DkimConfig, domain: str, *, delegated: bool
) -> list[KeyRecord]:
    """The new keys of a rotation, one per algorithm the domain signs with: pending until
    every authoritative server has served them for [dkim] publish_lag."""
    existing = keys_of(conn, domain)
    if any(k.state == PENDING for k in existing):
        raise StateError(f"{domain} is rotating already: see 'mxdesk dkim status {domain}'")
    kinds = _kinds(cfg, (k.algorithm for k in existing if k.state == ACTIVE))
    taken = {k.selector for k in existing}
    selectors = new_selectors(taken, [a for _, a in kinds], delegated=delegated, now=time.time())
    records = _make(cfg, domain, kinds, selectors, PENDING)
    _insert(conn, records)
    return records


def keys_of(
    conn: sqlite3.Connection, domain: str, states: Iterable[str] | None = None
) -> list[KeyRecord]:
    rows = conn.execute(
        "SELECT * FROM dkim_keys WHERE domain=? ORDER BY algorithm DESC, created, selector",
        (domain,),
    )
    wanted = None if states is None else set(states)
    keys = [KeyRecord(**r) for r in rows]
    return [k for k in keys if wanted is None or k.state in wanted]


def get_key(conn: sqlite3.Connection, domain: str, selector: str) -> KeyRecord | None:
    row = conn.execute(
        "SELECT * FROM dkim_keys WHERE domain=? AND selector=?", (domain, selector)
    ).fetchone()
    return KeyRecord(**row) if row else None


def set_key(conn: sqlite3.Connection, domain: str, selector: str, **changes: object) -> None:
    unknown = set(changes) - set(_COLUMNS)
    if unknown:
        raise ValueError(f"no dkim_keys column {sorted(unknown)}")
    columns = ", ".join(f"{k}=?" for k in changes)
    with transaction(conn):
        conn.execute(
            f"UPDATE dkim_keys SET {columns} WHERE domain=? AND selector=?",
            (*changes.values(), domain, selector),
        )


def forget_key(conn: sqlite3.Connection, key: KeyRecord) -> None:
    """Deletes a key whose record is gone: its row, then its file."""
    with transaction(conn):
        conn.execute(
            "DELETE FROM dkim_keys WHERE domain=? AND selector=?", (key.domain, key.selector)
        )
    Path(key.path).unlink(missing_ok=True)


def load_signing_keys(conn: sqlite3.Connection, domain: str) -> list[DkimKey]:
    """The domain's active keys, ready to sign; raises DkimKeyError on a weak or broken key."""
    return [load(r) for r in keys_of(conn, domain, (ACTIVE,))]


def load(record: KeyRecord) -> DkimKey:
    # Here, not at the top: listing domains loads no cryptography.
    from mxdesk.gateway.dkimkey import load_key

    return load_key(Path(record.path).read_bytes(), record.domain, record.selector)


def record_txt(record: KeyRecord) -> str:
    """What the key's TXT record holds: the public key, or an empty p= once revoked."""
    return REVOKED_TXT if record.state == REVOKED else load(record).dns_txt()


def delegation_label(domain: str) -> str:
    """The label under [dns] dkim_zone that holds an own domain's keys: marca.com.br ->
    marca-com-br (a name too long for one label is shortened and made unique by a hash)."""
    label = domain.replace(".", "-")
    if len(label) > 63:
        label = label[:50] + "-" + hashlib.sha256(domain.encode()).hexdigest()[:12]
    return label
