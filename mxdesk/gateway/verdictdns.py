"""DNS for the inbound verdicts: one cached resolver, each message's lookups under one deadline."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf

from mxdesk.configread import Listen

# Names (with their type) the shared cache holds; each entry lives as long as its TTL says.
CACHE_ENTRIES = 20_000
# One try at one server: a silent server must leave time to ask the next one.
PER_TRY_TIMEOUT = 2.0
# Results remembered (an SPF result per client, sender and HELO; a DMARC record per domain),
# each until the first DNS answer it was made of expires. An NXDOMAIN counts as expiring after
# NEGATIVE_SECONDS (its own negative TTL is not at hand), and nothing is kept longer than
# MEMO_SECONDS.
MEMO_ENTRIES = 20_000
MEMO_SECONDS = 300.0
NEGATIVE_SECONDS = 60.0

T = TypeVar("T")


class TempDnsError(Exception):
    """A lookup that may succeed later: no answer in time, SERVFAIL, the deadline passed."""


class NotCached(BaseException):
    """A lookup of an offline resolver (cached_only) whose answer is not in the cache: the
    message is checked again where the network may be asked. A BaseException, so that no
    `except Exception` on the way (pyspf's, dkimpy's, the verdicts') makes a verdict of it."""


def cached_only(resolver: dns.resolver.Resolver) -> dns.resolver.Resolver:
    """A resolver that answers from resolver's cache (answers and NXDOMAIN alike, within
    their TTL) and asks no server: a miss raises NoNameservers at once."""
    offline = dns.resolver.Resolver(configure=False)
    offline.nameservers = []
    offline.cache = resolver.cache
    return offline


def build_resolver(nameservers: Sequence[Listen]) -> dns.resolver.Resolver:
    """A resolver asking the configured servers (those of /etc/resolv.conf when none are),
    with a TTL-respecting cache shared by every lookup of every message."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers
        ]
    else:
        try:
            resolver = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            # No /etc/resolv.conf: lookups fail as temporary errors instead of the daemon.
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    resolver.timeout = PER_TRY_TIMEOUT
    resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return resolver


class Memo:
    """Results made of DNS answers, kept as long as those answers: the same inputs and the
    same answers give the same result, without asking pyspf or parsing a record again.
    Shared by the event loop and the worker threads."""

    def __init__(self, entries: int = MEMO_ENTRIES) -> None:
        self._entries = entries
        self._kept: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """(True, value) while a value is kept for key, else (False, None)."""
        kept = self._kept.get(key)
        if kept is None:
            return False, None
        if kept[0] <= time.time():
            with self._lock:
                self._kept.pop(key, None)
            return False, None
        return True, kept[1]

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        """Keeps value for key until expires (a time.time() value, at most MEMO_SECONDS on)."""
        expires = min(expires, time.time() + MEMO_SECONDS)
        with self._lock:
            if len(self._kept) >= self._entries and key not in self._kept:
                del self._kept[next(iter(self._kept))]  # the oldest kept
            self._kept[key] = (expires, value)


class Lookups:
    """The DNS of one message: every query through the shared resolver, none after deadline
    (a time.monotonic() value). Thread-safe enough for one worker thread at a time."""

    def __init__(
        self,
        resolver: dns.resolver.Resolver,
        deadline: float,
        *,
        offline: bool = False,
        memo: Memo | None = None,
    ) -> None:
        """offline: resolver is a cached_only() one, and a miss raises NotCached; memo: where
        results are remembered (see remembered)."""
        self._resolver = resolver
        self._offline = offline
        self._memo = memo
        # When the first answer used since remembered() began expires (time.time()).
        self._expires = math.inf
        self.missed = False  # an offline lookup found no answer in the cache
        self.deadline = deadline
        # The record found at each DKIM key name asked for (None: none), to tell "no key for
        # signature" and a key record that cannot be used from a signature that does not verify.
        self.keys: dict[str, bytes | None] = {}
        self.queries = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def resolve(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None when the name or the type does not exist (NXDOMAIN, NODATA)."""
        lifetime = self.remaining()
        if lifetime <= 0:
            raise TempDnsError(f"{name}/{rdtype}: no time left for DNS")
        self.queries += 1
        try:
            answer = self._resolver.resolve(
                name, rdtype, lifetime=lifetime, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
            self._expires = min(self._expires, time.time() + NEGATIVE_SECONDS)
            return None
        except dns.name.NameTooLong:
            return None  # a name no one can publish has no record
        except dns.resolver.NoNameservers:
            if self._offline:
                self.missed = True  # said even where a bare `except:` swallows the raise
                raise NotCached(f"{name}/{rdtype}") from None
            raise TempDnsError(f"{name}/{rdtype}: no server answered") from None
        except dns.exception.DNSException as exc:  # timeout, SERVFAIL from every server …
            raise TempDnsError(f"{name}/{rdtype}: {type(exc).__name__}") from None
        self._expires = min(self._expires, answer.expiration)  # NODATA has its SOA's TTL
        return answer if answer.rrset is not None else None

    def remembered(
        self, key: Hashable, compute: Callable[[], T], keep: Callable[[T], bool] | None = None
    ) -> T:
        """compute(), or what it gave for key before while the DNS answers it used are still
        valid. A result is kept only when keep(result) says so (not a temporary error), and
        never one made while an offline lookup missed; an exception is never kept."""
        if self._memo is None:
            return compute()
        found, value = self._memo.get(key)
        if found:
            return value  # type: ignore[no-any-return]
        outer, self._expires = self._expires, math.inf
        try:
            value = compute()
            expires = self._expires
        finally:
            self._expires = min(outer, self._expires)
        if (keep is None or keep(value)) and not self.missed:
            self._memo.put(key, value, expires)
        return value

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record at name, its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        answer = self.resolve(name, "TXT")
        return [b"".join(rdata.strings) for rdata in answer] if answer is not None else []

    def dkim_key(self, name: bytes, timeout: float = 0) -> bytes | None:
        """dkimpy's dnsfunc: the key record at <selector>._domainkey.<domain>, or None."""
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        records = self.txt(text)
        found = records[0] if records else None
        self.keys[text.lower().rstrip(".")] = found
        return found

    def pyspf(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        """pyspf's DNSLookup: ((name, type), value) pairs, as its own dnspython backend
        makes them; a temporary failure is pyspf's TempError (spf=temperror)."""
        try:
            answer = self.resolve(name, qtype)
        except TempDnsError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        if answer is None:
            return []
        key = (name, qtype)
        if qtype in ("A", "AAAA"):
            return [(key, rdata.address) for rdata in answer]
        if qtype == "MX":
            return [(key, (rdata.preference, rdata.exchange)) for rdata in answer]
        if qtype == "PTR":
            return [(key, rdata.target.to_text(True)) for rdata in answer]
        if qtype in ("TXT", "SPF"):
            return [(key, rdata.strings) for rdata in answer]
        return []


# pyspf (2.0.14) takes no resolver: every query goes through its module-level DNSLookup. It is
# replaced once by a function that uses the Lookups of the message the current worker thread
# checks, and pyspf's own lookup everywhere else.
_current = threading.local()
_pyspf_own_lookup = spf.DNSLookup


def _pyspf_lookup(
    name: str, qtype: str, strict: object = True, timeout: float = 20
) -> list[tuple[tuple[str, str], Any]]:
    lookups: Lookups | None = getattr(_current, "lookups", None)
    if lookups is None:
        result: list[tuple[tuple[str, str], Any]] = _pyspf_own_lookup(name, qtype, strict, timeout)
        return result
    return lookups.pyspf(name, qtype)


spf.DNSLookup = _pyspf_lookup


@contextlib.contextmanager
def pyspf_through(lookups: Lookups) -> Iterator[None]:
    """pyspf's queries in this thread go through lookups while the block runs."""
    _current.lookups = lookups
    try:
        yield
    finally:
        _current.lookups = None
