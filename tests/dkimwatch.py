"""Watching a DKIM rotation from outside: what each authoritative server serves over time, a
steady stream of replies into the gateway, and each reply at smtp-sink checked against the
records that were served the moment it arrived."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import dkim
from authdns import query, txt_values
from dnssite import KnotSite

_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)")


def cname_target(knot: KnotSite, name: str) -> str:
    response = query(knot.primary.host, knot.primary.port, name, "CNAME")
    for rrset in response.answer:
        if rrset.rdtype == 5:  # CNAME
            return str(rrset[0].target.to_text(omit_final_dot=True))
    return ""


def served_anywhere(knot: KnotSite, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(primary's TXT values, secondary's) at name, following a CNAME as a resolver would."""
    target = cname_target(knot, name) or name
    return tuple(tuple(txt_values(s.host, s.port, target)) for s in (knot.primary, knot.secondary))  # type: ignore[return-value]


@dataclass
class ServedLog:
    """What both servers serve for <selector>._domainkey.<domain>, polled every 50 ms."""

    knot: KnotSite
    domain: str
    selectors: set[str] = field(default_factory=set)
    history: list[tuple[float, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]] = field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = {}
            for selector in sorted(self.selectors):
                try:
                    snap[selector] = served_anywhere(
                        self.knot, f"{selector}._domainkey.{self.domain}"
                    )
                except Exception:
                    continue
            self.history.append((time.time(), snap))
            time.sleep(0.05)

    def at(self, moment: float) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """The last snapshot taken at or before moment."""
        before = [snap for when, snap in self.history if when <= moment]
        assert before, "no snapshot before the message arrived"
        return before[-1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def signatures(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature field (a dump with LF or CRLF line endings)."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = message.split(b"\r\n\r\n", 1)[0]
    head = re.sub(rb"\r\n[ \t]+", b" ", head)
    return [
        {k: v.strip() for k, v in _TAG.findall(line.split(b":", 1)[1])}
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"dkim-signature:")
    ]


@dataclass
class Verdicts:
    by_selector: Counter[str] = field(default_factory=Counter)
    unsigned: int = 0
    unpublished: list[str] = field(default_factory=list)  # selector not served by every server
    failed: list[str] = field(default_factory=list)


def check_received(
    dumps: Path, log: ServedLog, domain: str, subject_prefix: bytes = b"carga"
) -> Verdicts:
    """Each reply at smtp-sink: signed for domain with a selector both servers served when it
    arrived (the dump's mtime), and verified by dkimpy against exactly that record."""
    found = Verdicts()
    for dump in sorted(dumps.iterdir()):
        raw = dump.read_bytes()
        if not raw or subject_prefix not in raw:
            continue
        message = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        arrived = dump.stat().st_mtime
        ours = [s for s in signatures(message) if s.get(b"d", b"").decode() == domain]
        if not ours:
            found.unsigned += 1
            continue
        selector = ours[0][b"s"].decode()
        found.by_selector[selector] += 1
        primary, secondary = log.at(arrived).get(selector, ((), ()))
        if len(primary) != 1 or primary != secondary or primary[0].endswith("p="):
            found.unpublished.append(f"{dump.name}: {selector} served {primary} / {secondary}")
            continue
        record = primary[0].encode()

        prefix = f"{selector}._domainkey.".encode()

        def dnsfunc(
            name: bytes, timeout: int = 5, record: bytes = record, prefix: bytes = prefix
        ) -> bytes:
            return record if name.startswith(prefix) else b""

        if not dkim.verify(message, dnsfunc=dnsfunc):
            found.failed.append(dump.name)
    return found


class Replies:
    """Replies submitted one after another on the gateway's socket, retried while it is down
    (kill -9), until stop()."""

    def __init__(self, socket_path: Path, sender: str) -> None:
        self.socket_path = socket_path
        self.sender = sender
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _one(self, i: int) -> None:
        body = (
            f"From: {self.sender}\r\nTo: c{i}@example.com\r\nSubject: carga {i}\r\n\r\n{i}\r\n"
        ).encode()
        while True:
            try:
                smtp = aiosmtplib.SMTP(socket_path=str(self.socket_path), timeout=10)
                await smtp.connect()
                try:
                    await smtp.sendmail(self.sender, [f"c{i}@example.com"], body)
                finally:
                    smtp.close()
                return
            except (OSError, aiosmtplib.SMTPException):
                await asyncio.sleep(0.05)

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._one(self.sent)
            self.sent += 1
            await asyncio.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(60)
        time.sleep(0.2)  # the last reply's trip to smtp-sink is seen by the served log
        return self.sent


def key_states(state_db: Path, domain: str) -> dict[str, tuple[str, float | None]]:
    """selector -> (phase, served_since), read from state.db as the gateway leaves it."""
    with sqlite3.connect(state_db) as conn:
        rows = conn.execute(
            "SELECT selector, state, served_since FROM dkim_keys WHERE domain=?", (domain,)
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def phase(state_db: Path, domain: str) -> str:
    states = key_states(state_db, domain).values()
    kinds = {s for s, _ in states}
    if "pending" in kinds:
        served = all(since is not None for s, since in states if s == "pending")
        return "waiting" if served else "publishing"
    for name in ("retiring", "revoked", "removing"):
        if name in kinds:
            return name
    return "steady"


def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
