"""What `mxdesk status` reports: each daemon up or down, the spool, the last hour's deliveries
and the domains not active; read-only, so it works whether the daemons run or not."""

from __future__ import annotations

import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from mxdesk import state
from mxdesk.config import Config
from mxdesk.gateway import history
from mxdesk.gateway.entries import spool_counts

PROBE_TIMEOUT = 1.0
GREETING_LIMIT = 512


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    socket: Path
    up: bool
    detail: str


@dataclass(frozen=True)
class SpoolCount:
    kind: str
    state: str
    entries: int


@dataclass(frozen=True)
class SpoolStatus:
    entries: int = 0
    oldest_age_seconds: int | None = None
    counts: list[SpoolCount] = field(default_factory=list)
    # Deliveries in the last hour per kind (in, out) and result (delivered, deferred, failed).
    last_hour: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class InactiveDomain:
    name: str
    tenant: str
    status: str
    last_error: str


@dataclass(frozen=True)
class FailingChannel:
    name: str
    tenant: str
    failing_since: float
    last_error: str


@dataclass(frozen=True)
class Status:
    ok: bool  # both daemons up
    daemons: list[DaemonStatus]
    spool: SpoolStatus
    domains_not_active: list[InactiveDomain]
    domains_error: str = ""
    channels_failing: list[FailingChannel] = field(default_factory=list)


def _greeting(path: Path, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        line = b""
        while b"\n" not in line and len(line) < GREETING_LIMIT:
            chunk = sock.recv(GREETING_LIMIT)
            if not chunk:
                break
            line += chunk
        if line.startswith(b"220"):
            sock.sendall(b"QUIT\r\n")
        return line.split(b"\r\n", 1)[0]


def probe(name: str, path: Path, timeout: float = PROBE_TIMEOUT) -> DaemonStatus:
    """Up when the daemon's Unix socket answers 220 within timeout."""

    def down(why: str) -> DaemonStatus:
        return DaemonStatus(name, path, False, why)

    if not path.exists():
        return down(f"no socket at {path}: 'mxdesk {name}' is not running")
    try:
        greeting = _greeting(path, timeout)
    except PermissionError:
        return down(f"{path}: permission denied: run as the daemons' user or a member of its group")
    except ConnectionRefusedError:
        return down(f"{path}: connection refused: 'mxdesk {name}' is not running")
    except TimeoutError:
        return down(f"{path}: no greeting within {timeout:g} s")
    except OSError as exc:
        return down(f"{path}: {exc.strerror or exc}")
    text = greeting.decode("utf-8", "replace")
    if not text.startswith("220"):
        return down(f"{path} answered {text!r}" if text else f"{path} closed without a greeting")
    return DaemonStatus(name, path, True, f"{path} answers {text[:80]}")


def spool_status(path: Path, now: float) -> SpoolStatus:
    if not path.exists():
        return SpoolStatus(error=f"no spool at {path}: the gateway has not run yet")
    try:
        conn = state.connect(path, readonly=True)
        try:
            counts, oldest = spool_counts(conn)
            last_hour = history.recent_results(conn, now - 3600)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return SpoolStatus(error=f"cannot read {path} ({exc}): run as the daemons' user")
    return SpoolStatus(
        entries=sum(n for _, _, n in counts),
        oldest_age_seconds=None if oldest is None else max(0, int(now - oldest)),
        counts=[SpoolCount(*c) for c in counts],
        last_hour=last_hour,
    )


def inactive_domains(path: Path) -> list[InactiveDomain]:
    """Domains whose status is not active (pending, publishing, propagating, disabled)."""
    if not path.exists():
        return []
    conn = state.connect(path, readonly=True)
    try:
        rows = conn.execute(
            "SELECT name, tenant, status, last_error FROM domains WHERE status != 'active'"
            " ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    return [InactiveDomain(*row) for row in rows]


def failing_channels(state_db: Path, spool: Path) -> list[FailingChannel]:
    """Channels whose last attempts failed (as the gateway last recorded it)."""
    from mxdesk.gateway.fetch.ledger import FAILING, read_statuses

    if not state_db.exists():
        return []
    statuses = read_statuses(spool)
    conn = state.connect(state_db, readonly=True)
    try:
        rows = conn.execute("SELECT name, tenant FROM channels WHERE paused=0 ORDER BY name")
        found = []
        for name, tenant in rows.fetchall():
            row = statuses.get(name, {})
            if row.get("status") == FAILING:
                since = float(row.get("failing_since") or 0)  # type: ignore[arg-type]
                found.append(FailingChannel(name, tenant, since, str(row.get("last_error", ""))))
        return found
    finally:
        conn.close()


def status(config: Config, timeout: float = PROBE_TIMEOUT) -> Status:
    daemons = [
        probe("gateway", config.submission.socket, timeout),
        probe("store", config.store.lmtp_socket, timeout),
    ]
    domains: list[InactiveDomain] = []
    channels: list[FailingChannel] = []
    domains_error = ""
    state_db = config.general.state_db
    try:
        domains = inactive_domains(state_db)
        channels = failing_channels(state_db, config.gateway.spool_path)
    except sqlite3.Error as exc:
        domains_error = f"cannot read {state_db} ({exc}): run as the daemons' user"
    if not state_db.exists():
        domains_error = f"no state database at {state_db}: run 'mxdesk init' first"
    return Status(
        ok=all(d.up for d in daemons),
        daemons=daemons,
        spool=spool_status(config.gateway.spool_path, time.time()),
        domains_not_active=domains,
        domains_error=domains_error,
        channels_failing=channels,
    )
