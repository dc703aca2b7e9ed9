"""The state database: tenants, domains and mailboxes, shared by the CLI and the daemons."""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mxdesk.names import InvalidName, check_label, parse_address
from mxdesk.stateschema import SCHEMA

T = TypeVar("T")

PLANS = ("basic", "plus", "premium")
DOMAIN_STATES = ("pending", "publishing", "propagating", "active", "disabled")


class StateError(Exception):
    """A provisioning request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Tenant:
    slug: str
    owner: str
    plan: str
    created: float
    status: str = "active"  # or "disabled": its addresses refuse mail and it may not send


@dataclass(frozen=True)
class Domain:
    name: str
    tenant: str
    kind: str
    status: str
    created: float
    token: str = ""  # own domains: the ownership proof served at _mxdesk.<name>
    last_error: str = ""
    served: int = 0  # records x servers that served the plan at the last check
    expected: int = 0
    checked: float | None = None
    next_action: float = 0.0
    attempts: int = 0
    activated: float | None = None
    forced: bool = False
    owner_notified: bool = False
    health: str = "ok"  # of an active domain: "drift" or "healing" (mxdesk.dns.drift)
    drift_misses: int = 0  # consecutive rechecks that found a record missing or different
    drift_since: float | None = None
    drift_detail: str = ""  # one line per drifted record: expected and served values
    last_recheck: float | None = None
    drift_notified: bool = False  # the owner was mailed of this drift, not yet of its end
    dkim_delegated: bool = False  # its DKIM records are CNAMEs into [dns] dkim_zone

    @property
    def receives(self) -> bool:
        """Mail to it is accepted before it is active: its MX may point here already."""
        return self.status != "disabled"


@dataclass(frozen=True)
class Mailbox:
    address: str
    tenant: str
    name: str
    default_inbox: bool
    active: bool
    created: float
    operator_signatures: bool = True
    generic_signature: bool = True


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Opens the state database (WAL, so the CLI and the daemons can use it at once)."""
    try:
        return _open(path, readonly)
    except sqlite3.OperationalError:
        # SQLite's "unable to open database file" names no file: the one this user may not use.
        need = os.R_OK if readonly else os.R_OK | os.W_OK
        for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if file.exists() and not os.access(file, need):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file)) from None
        raise


def _open(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        migrate(conn)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection, schema: list[str] = SCHEMA) -> None:
    """Brings a database up to date: script N takes it to PRAGMA user_version N."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(schema[version:], start=version + 1):
        with transaction(conn):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")


# Commits made through transaction() in this process, on any connection: remembered answers
# look again at once after one (the gateway writes state.db on connections of its own: the
# DNS task's, the fetchers', the channels'; every write to state.db in mxdesk is made inside
# transaction()).
_local_commits = 0


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    global _local_commits
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    _local_commits += 1


def _check(value: str, what: str, reserved: frozenset[str]) -> str:
    try:
        return check_label(value, what, reserved)
    except InvalidName as exc:
        raise StateError(str(exc)) from None


def add_tenant(
    conn: sqlite3.Connection,
    base_domain: str,
    slug: str,
    owner: str,
    plan: str,
    reserved: frozenset[str],
) -> Tenant:
    """Creates a tenant and its default inbox <slug>@<base domain>."""
    slug = _check(slug, "tenant slug", reserved)
    if plan not in PLANS:
        raise StateError(f"plan {plan!r} is not one of {', '.join(PLANS)}")
    try:
        owner_addr = str(parse_address(owner))
    except InvalidName as exc:
        raise StateError(f"owner: {exc}") from None
    now = time.time()
    with transaction(conn):
        if conn.execute("SELECT 1 FROM tenants WHERE slug=?", (slug,)).fetchone():
            raise StateError(f"tenant {slug!r} already exists")
        inbox = f"{slug}@{base_domain}"
        if conn.execute("SELECT 1 FROM mailboxes WHERE address=?", (inbox,)).fetchone():
            raise StateError(f"address {inbox} is already taken")
        conn.execute(
            "INSERT INTO tenants (slug, owner, plan, created) VALUES (?,?,?,?)",
            (slug, owner_addr, plan, now),
        )
        conn.execute(
            "INSERT INTO mailboxes (address, tenant, name, default_inbox, active, created)"
            " VALUES (?,?,?,1,1,?)",
            (inbox, slug, slug, now),
        )
    return Tenant(slug, owner_addr, plan, now)


def get_tenant(conn: sqlite3.Connection, slug: str) -> Tenant:
    row = conn.execute("SELECT * FROM tenants WHERE slug=?", (slug,)).fetchone()
    if row is None:
        raise StateError(f"no tenant {slug!r}: see 'mxdesk tenant list'")
    return Tenant(**row)


def list_tenants(conn: sqlite3.Connection) -> list[Tenant]:
    return [Tenant(**r) for r in conn.execute("SELECT * FROM tenants ORDER BY slug")]


def add_domain(
    conn: sqlite3.Connection, name: str, tenant: str, kind: str, token: str = ""
) -> Domain:
    """Creates a domain of the tenant, pending: it becomes active only once its records are
    served (mxdesk.dns.lifecycle). Hosted subdomains need plus or up, own domains premium."""
    now = time.time()
    with transaction(conn):
        t = get_tenant(conn, tenant)
        if kind == "own" and t.plan != "premium":
            raise StateError(
                f"tenant {tenant!r} is on the {t.plan} plan: own domains need premium"
                f" (mxdesk tenant set {tenant} --plan premium)"
            )
        if kind == "hosted" and t.plan == "basic":
            raise StateError(
                f"tenant {tenant!r} is on the basic plan: hosted subdomains need plus or premium"
            )
        row = conn.execute("SELECT tenant FROM domains WHERE name=?", (name,)).fetchone()
        if row is not None:
            whose = "this tenant" if row["tenant"] == tenant else "another tenant"
            raise StateError(f"domain {name} is already taken by {whose}")
        conn.execute(
            "INSERT INTO domains (name, tenant, kind, status, created, token)"
            " VALUES (?,?,?,'pending',?,?)",
            (name, tenant, kind, now, token),
        )
    return Domain(name, tenant, kind, "pending", now, token)


def hosted_name(base_domain: str, label: str, reserved: frozenset[str]) -> str:
    return f"{_check(label, 'domain label', reserved)}.{base_domain}"


def add_hosted_domain(
    conn: sqlite3.Connection, base_domain: str, label: str, tenant: str, reserved: frozenset[str]
) -> Domain:
    """Creates the hosted subdomain <label>.<base domain> (pending) for the tenant."""
    return add_domain(conn, hosted_name(base_domain, label, reserved), tenant, "hosted")


def set_domain(conn: sqlite3.Connection, name: str, **fields: object) -> None:
    """Changes columns of one domain (the lifecycle's steps), in one transaction."""
    unknown = set(fields) - set(Domain.__dataclass_fields__)
    if unknown:
        raise ValueError(f"no domain column {sorted(unknown)}")
    columns = ", ".join(f"{k}=?" for k in fields)
    # A disabled domain leaves that state only through mxdesk.changes.enable_domain: a step of
    # the lifecycle that was under way when it was disabled must not bring it back.
    leaves = fields.get("status", "disabled") != "disabled"
    where = "name=? AND status!='disabled'" if leaves else "name=?"
    with transaction(conn):
        conn.execute(f"UPDATE domains SET {columns} WHERE {where}", (*fields.values(), name))


def list_domains(conn: sqlite3.Connection, tenant: str | None = None) -> list[Domain]:
    sql = "SELECT * FROM domains" + (" WHERE tenant=?" if tenant else "") + " ORDER BY name"
    return [Domain(**r) for r in conn.execute(sql, (tenant,) if tenant else ())]


def get_domain(conn: sqlite3.Connection, name: str) -> Domain | None:
    row = conn.execute("SELECT * FROM domains WHERE name=?", (name.lower(),)).fetchone()
    return Domain(**row) if row else None


def sender_name(name: str) -> str:
    """A mailbox's sender name as stored: one line, spaces collapsed, 1 to 100 characters."""
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise StateError('sender name: give 1 to 100 characters, e.g. "Suporte Marca"')
    return name


def add_mailbox(conn: sqlite3.Connection, base_domain: str, address: str, name: str) -> Mailbox:
    """Creates a mailbox on one of a tenant's active domains; the domain decides the tenant."""
    try:
        addr = parse_address(address)
    except InvalidName as exc:
        raise StateError(str(exc)) from None
    if "+" in addr.local:
        raise StateError(f"{address}: '+' is kept for sub-addresses (suporte+x reaches suporte)")
    name = sender_name(name)
    if addr.domain == base_domain:
        raise StateError(
            f"{base_domain} holds only the tenants' default inboxes: add a domain first"
        )
    now = time.time()
    with transaction(conn):
        domain = get_domain(conn, addr.domain)
        if domain is None:
            raise StateError(
                f"{addr.domain} is not a domain of any tenant: see 'mxdesk domain add'"
            )
        if conn.execute("SELECT 1 FROM mailboxes WHERE address=?", (str(addr),)).fetchone():
            raise StateError(f"mailbox {addr} already exists")
        conn.execute(
            "INSERT INTO mailboxes (address, tenant, name, default_inbox, active, created)"
            " VALUES (?,?,?,0,1,?)",
            (str(addr), domain.tenant, name, now),
        )
    return Mailbox(str(addr), domain.tenant, name, False, True, now)


def _mailbox(row: sqlite3.Row) -> Mailbox:
    return Mailbox(
        row["address"],
        row["tenant"],
        row["name"],
        bool(row["default_inbox"]),
        bool(row["active"]),
        row["created"],
        bool(row["operator_signatures"]),
        bool(row["generic_signature"]),
    )


def list_mailboxes(conn: sqlite3.Connection, tenant: str | None = None) -> list[Mailbox]:
    sql = "SELECT * FROM mailboxes" + (" WHERE tenant=?" if tenant else "")
    rows = conn.execute(sql + " ORDER BY tenant, address", (tenant,) if tenant else ())
    return [_mailbox(r) for r in rows]


def get_mailbox(conn: sqlite3.Connection, address: str) -> Mailbox | None:
    row = conn.execute("SELECT * FROM mailboxes WHERE address=?", (address.lower(),)).fetchone()
    return _mailbox(row) if row else None


def tenant_active(conn: sqlite3.Connection, slug: str) -> bool:
    """False when the tenant is disabled (or gone): its addresses neither receive nor send."""
    row = conn.execute("SELECT status FROM tenants WHERE slug=?", (slug,)).fetchone()
    return row is not None and row[0] == "active"


def receiving_mailbox(conn: sqlite3.Connection, address: str) -> Mailbox | None:
    """The mailbox at address when it and its tenant are enabled, else None."""
    box = get_mailbox(conn, address)
    return box if box is not None and box.active and tenant_active(conn, box.tenant) else None


class Remembered:
    """Answers computed from the state database, kept until it changes: SQLite's data_version
    moves whenever another connection commits (the CLI, another daemon), total_changes when
    conn itself does. Asking for both is one statement, where an answer takes two or three
    lookups; the gateway's policies ask per message. Another process's change is looked for
    at most once per `fresh` seconds (a millisecond): a statement on the event loop lets the
    gateway's other threads take the GIL, and getting it back cost more than the answer. A
    change this process makes (on conn, or in transaction() on another connection) is seen at
    once. At most `size` answers are kept (a dictionary attack asks for many addresses)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        size: int = 10_000,
        fresh: float = 0.001,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._size = size
        self._fresh = fresh
        self._clock = clock
        self._answers: dict[Hashable, Any] = {}
        self._version = (-1, -1)
        self._looked = -math.inf
        self._local = -1  # _local_commits when the version was last looked at

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        now = self._clock()
        if (
            now - self._looked >= self._fresh
            or self._conn.total_changes != self._version[1]
            or _local_commits != self._local
        ):
            self._looked, self._local = now, _local_commits
            data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            version = (int(data_version), self._conn.total_changes)
            if version != self._version:
                self._answers.clear()
                self._version = version
        if len(self._answers) >= self._size:
            self._answers.clear()
        try:
            answer: T = self._answers[key]
        except KeyError:
            answer = self._answers[key] = compute()
        return answer
