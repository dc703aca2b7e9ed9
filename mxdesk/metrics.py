"""The gateway's Prometheus metrics: what is counted and measured, and their text exposition."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mxdesk.gateway.dkimkey import DkimKey

# The classic text format (every Prometheus reads it); generate_latest writes it for our names,
# which need none of the escaping that the library's newer default content type announces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LISTENERS = ("mx", "submission")
KINDS = ("in", "out")
RESULTS = ("delivered", "deferred", "failed")
STATES = ("queued", "deferred", "delivering", "held")
# Inbound: the store answers in milliseconds; retries (the store down) take minutes to hours.
INBOUND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14400)
# Outbound: the send delay (10 s by default) comes first; retries back off to hours and days.
OUTBOUND_BUCKETS = (1, 5, 10, 15, 30, 60, 120, 300, 900, 3600, 14400, 86400, 432000)
_REPLY = re.compile(r"^([2-5]\d\d)[ -](?:([2-5]\.\d{1,3}\.\d{1,3})(?: |$))?")


def reply_codes(reply: str) -> tuple[str, str]:
    """The reply code and the enhanced status code (RFC 3463) of an SMTP reply ("" if none)."""
    match = _REPLY.match(reply)
    if match is None:
        return "", ""
    return match.group(1), match.group(2) or ""


class GatewayMetrics:
    """Counters and histograms the gateway updates as mail moves; the spool gauges are set
    from the spool when scraped. One registry per gateway (tests run several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.accepted = Counter(
            "mxdesk_messages_accepted",
            "Messages committed to the spool and answered 250, by listener.",
            ["listener"],
            registry=r,
        )
        self.refused = Counter(
            "mxdesk_smtp_refusals",
            "4xx and 5xx replies to SMTP clients, by listener, reply code and enhanced code.",
            ["listener", "code", "enhanced"],
            registry=r,
        )
        self.attempts = Counter(
            "mxdesk_delivery_attempts",
            "Delivery attempts per recipient, by kind (in: to the store, out: to remote"
            " servers) and result (delivered, deferred: a 4xx or no answer, failed).",
            ["kind", "result"],
            registry=r,
        )
        self.signatures = Counter(
            "mxdesk_dkim_signatures",
            "DKIM signatures made on outbound messages as they leave (each attempt), by algorithm",
            ["algorithm"],
            registry=r,
        )
        self.spool = Gauge(
            "mxdesk_spool_entries",
            "Entries in the spool, by kind and state (queued, deferred, delivering, held).",
            ["kind", "state"],
            registry=r,
        )
        self.oldest = Gauge(
            "mxdesk_spool_oldest_entry_age_seconds",
            "Age of the oldest entry in the spool (0 when it is empty).",
            registry=r,
        )
        self.inbound = Histogram(
            "mxdesk_inbound_delivery_seconds",
            "From the 250 to the sending server to the store's 250, per recipient.",
            buckets=INBOUND_BUCKETS,
            registry=r,
        )
        self.outbound = Histogram(
            "mxdesk_outbound_delivery_seconds",
            "From the submission's 250 to the remote server's 250, per recipient (the send"
            " delay included).",
            buckets=OUTBOUND_BUCKETS,
            registry=r,
        )
        # Every series that can be listed is there from the start, at 0 (a rate over a series
        # that appears late misses its first increase).
        for listener in LISTENERS:
            self.accepted.labels(listener)
        for kind in KINDS:
            for result in RESULTS:
                self.attempts.labels(kind, result)
        self.set_spool([], None)

    def accept(self, listener: str) -> None:
        self.accepted.labels(listener).inc()

    def refuse(self, listener: str, reply: str) -> None:
        code, enhanced = reply_codes(reply)
        self.refused.labels(listener, code, enhanced).inc()

    def signed(self, keys: Sequence[DkimKey]) -> None:
        for key in keys:
            self.signatures.labels(key.algorithm.decode()).inc()

    def attempted(
        self,
        kind: str,
        created: float,
        results: Mapping[str, tuple[str, str]],
        deferred: int,
    ) -> None:
        """One attempt of an entry: results maps each recipient to (status, reply)."""
        latency = self.inbound if kind == "in" else self.outbound
        for status, _ in results.values():
            self.attempts.labels(kind, status).inc()
            if status == "delivered":
                latency.observe(max(0.0, time.time() - created))
        if deferred:
            self.attempts.labels(kind, "deferred").inc(deferred)

    def set_spool(self, counts: Iterable[tuple[str, str, int]], oldest: float | None) -> None:
        """The spool as it is now: (kind, state, entries), and the oldest entry's creation."""
        self.spool.clear()
        for kind in KINDS:
            for state in STATES:
                self.spool.labels(kind, state).set(0)
        for kind, state, n in counts:
            self.spool.labels(kind, state).set(n)
        self.oldest.set(max(0.0, time.time() - oldest) if oldest is not None else 0)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (CONTENT_TYPE)."""
        return generate_latest(self.registry)
