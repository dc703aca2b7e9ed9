"""Operators, their signatures, the tenant's generic signature and which one a reply carries."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from mxdesk import state
from mxdesk.state import StateError, transaction

MAX_SIGNATURE = 10_000
MAX_NAME = 100


@dataclass(frozen=True)
class Operator:
    tenant: str
    name: str
    signature: str
    created: float


def clean_signature(text: str) -> str:
    """A signature as stored: bounded, LF line endings, no trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
    if len(text) > MAX_SIGNATURE:
        raise StateError(f"signature is {len(text)} characters long: at most {MAX_SIGNATURE}")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise StateError("signature has control characters: give plain text")
    return text


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME:
        raise StateError(f"operator name: give 1 to {MAX_NAME} characters")
    return name


def add_operator(conn: sqlite3.Connection, tenant: str, name: str, signature: str) -> Operator:
    name = _clean_name(name)
    signature = clean_signature(signature)
    now = time.time()
    with transaction(conn):
        state.get_tenant(conn, tenant)
        if conn.execute(
            "SELECT 1 FROM operators WHERE tenant=? AND name=?", (tenant, name)
        ).fetchone():
            raise StateError(f"operator {name!r} already exists in tenant {tenant!r}")
        conn.execute("INSERT INTO operators VALUES (?,?,?,?)", (tenant, name, signature, now))
    return Operator(tenant, name, signature, now)


def list_operators(conn: sqlite3.Connection, tenant: str | None = None) -> list[Operator]:
    sql = "SELECT * FROM operators" + (" WHERE tenant=?" if tenant else "")
    return [
        Operator(**r)
        for r in conn.execute(sql + " ORDER BY tenant, name", (tenant,) if tenant else ())
    ]


def get_operator(conn: sqlite3.Connection, tenant: str, name: str) -> Operator:
    row = conn.execute(
        "SELECT * FROM operators WHERE tenant=? AND name=?", (tenant, name)
    ).fetchone()
    if row is None:
        raise StateError(f"no operator {name!r} in tenant {tenant!r}: see 'mxdesk operator list'")
    return Operator(**row)


def set_operator(
    conn: sqlite3.Connection,
    tenant: str,
    name: str,
    *,
    new_name: str | None = None,
    signature: str | None = None,
) -> Operator:
    """Renames an operator or changes their signature ("" removes it; None: unchanged).
    Replies already written keep the name and signature they were written with."""
    new_name = None if new_name is None else _clean_name(new_name)
    signature = None if signature is None else clean_signature(signature)
    with transaction(conn):
        state.get_tenant(conn, tenant)
        op = get_operator(conn, tenant, " ".join(name.split()))
        if (
            new_name is not None
            and new_name != op.name
            and conn.execute(
                "SELECT 1 FROM operators WHERE tenant=? AND name=?", (tenant, new_name)
            ).fetchone()
        ):
            raise StateError(f"operator {new_name!r} already exists in tenant {tenant!r}")
        conn.execute(
            "UPDATE operators SET name=?, signature=? WHERE tenant=? AND name=?",
            (
                new_name or op.name,
                op.signature if signature is None else signature,
                tenant,
                op.name,
            ),
        )
    return get_operator(conn, tenant, new_name or op.name)


def remove_operator(conn: sqlite3.Connection, tenant: str, name: str) -> Operator:
    """Removes an operator; the replies they wrote keep their name on the tickets."""
    with transaction(conn):
        state.get_tenant(conn, tenant)
        op = get_operator(conn, tenant, " ".join(name.split()))
        conn.execute("DELETE FROM operators WHERE tenant=? AND name=?", (tenant, op.name))
    return op


def set_generic_signature(conn: sqlite3.Connection, tenant: str, signature: str) -> str:
    signature = clean_signature(signature)
    with transaction(conn):
        state.get_tenant(conn, tenant)
        conn.execute(
            "INSERT INTO generic_signatures VALUES (?,?) ON CONFLICT(tenant)"
            " DO UPDATE SET signature=excluded.signature",
            (tenant, signature),
        )
    return signature


def generic_signature(conn: sqlite3.Connection, tenant: str) -> str:
    row = conn.execute(
        "SELECT signature FROM generic_signatures WHERE tenant=?", (tenant,)
    ).fetchone()
    return str(row[0]) if row else ""


def signature_for(
    operator_signature: str, generic: str, use_operator: bool, use_generic: bool
) -> str:
    """The operator's own signature when they have one and the mailbox allows it, else the
    generic one when the mailbox allows that, else none ("")."""
    if use_operator and operator_signature:
        return operator_signature
    if use_generic and generic:
        return generic
    return ""
