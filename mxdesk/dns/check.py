"""The check at the authoritative servers: is every planned record served by every server?

For each record name: its zone (SOA walk), the zone's NS set, each server's addresses (A and
AAAA, or [dns] nameserver_addresses), then each address asked directly, recursion off, over UDP
with TCP fallback (a 4096-bit DKIM key does not fit in 512 bytes). A CNAME is followed to its
target's own servers (a delegated _domainkey). A domain is served when every record is served
by every server: the strict rule lego uses; a lame or unreachable server keeps it waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from mxdesk.dns.providers.rfc2136 import from_rdata
from mxdesk.dns.records import Record
from mxdesk.dns.settings import DnsConfig

OK, MISSING, DIFFERS, LAME, UNREACHABLE = "ok", "missing", "differs", "lame", "unreachable"
NO_SERVER = "-"  # the server of an answer when the zone or its servers were not found
CACHE_SECONDS = 30.0
MAX_CACHED = 10_000
T = TypeVar("T")
MAX_CNAMES = 8


@dataclass(frozen=True)
class ServerAnswer:
    server: str
    address: str
    status: str
    served: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class RecordCheck:
    record: Record
    zone: str
    answers: tuple[ServerAnswer, ...]

    @property
    def ok(self) -> bool:
        return bool(self.answers) and all(a.status == OK for a in self.answers)


@dataclass(frozen=True)
class CheckReport:
    domain: str
    checks: tuple[RecordCheck, ...]

    @property
    def served(self) -> int:
        return sum(a.status == OK for c in self.checks for a in c.answers)

    @property
    def expected(self) -> int:
        return sum(len(c.answers) for c in self.checks)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def problems(self) -> list[str]:
        """One line per record and server that is not ok, with what it serves instead or
        why it could not be asked."""
        return [
            f"{c.record.name} {c.record.type}: {_where(a)}" + _shown(a)
            for c in self.checks
            for a in c.answers
            if a.status != OK
        ]


def _where(answer: ServerAnswer) -> str:
    if answer.server == NO_SERVER:  # its zone or servers were not found: no server to name
        return answer.status
    return f"{answer.status} at {answer.server} ({answer.address})"


def _shown(answer: ServerAnswer) -> str:
    if answer.status == DIFFERS and answer.served:
        return ": serves " + " | ".join(repr(v) for v in answer.served)
    return f": {answer.detail}" if answer.detail else ""


@dataclass(frozen=True)
class _Served:
    status: str
    values: tuple[str, ...] = ()
    detail: str = ""


# The CNAME targets one record's check has followed: (target, type, depth) -> what it served.
Followed = dict[tuple[str, str, int], "asyncio.Future[_Served]"]


class ZoneUnreachable(Exception):
    """The zone or its servers of a name could not be found."""


class AuthoritativeChecker:
    def __init__(self, config: DnsConfig, concurrency: int = 64) -> None:
        self._timeout = config.check_timeout
        resolver = dns.asyncresolver.Resolver(configure=not config.resolvers)
        if config.resolvers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(r.host, r.port) for r in config.resolvers
            ]
        resolver.lifetime = config.check_timeout * 2
        resolver.timeout = config.check_timeout
        self._resolver = resolver
        self._ns_addresses = {
            ns: [(a.host, a.port) for a in addrs] for ns, addrs in config.nameserver_addresses
        }
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._limit = asyncio.Semaphore(concurrency)

    async def check(self, domain: str, records: Sequence[Record]) -> CheckReport:
        checks = await asyncio.gather(*(self._check_record(r) for r in records))
        return CheckReport(domain, tuple(checks))

    async def _check_record(self, record: Record) -> RecordCheck:
        try:
            zone, servers = await self.servers_of(record.name)
        except ZoneUnreachable as exc:
            answer = ServerAnswer(NO_SERVER, NO_SERVER, UNREACHABLE, detail=str(exc))
            return RecordCheck(record, "", (answer,))
        followed: Followed = {}
        answers = await asyncio.gather(
            *(self._ask_server(ns, host, port, record, followed) for ns, host, port in servers)
        )
        return RecordCheck(record, zone, tuple(answers))

    async def _ask_server(
        self, ns: str, host: str, port: int, record: Record, followed: Followed
    ) -> ServerAnswer:
        served = await self._served(host, port, record.name, record.type, 0, followed)
        address = f"{host}:{port}" if port != 53 else host
        if served.status != OK:
            return ServerAnswer(ns, address, served.status, detail=served.detail)
        owned = tuple(v for v in served.values if record.owns(v))
        if record.type == "TXT":
            status = OK if len(owned) == 1 and record.same(owned[0]) else DIFFERS
        else:
            status = OK if any(record.same(v) for v in owned) else DIFFERS
        if not owned:
            status = MISSING
        return ServerAnswer(ns, address, status, owned)

    async def _served(
        self, host: str, port: int, name: str, rtype: str, depth: int, followed: Followed
    ) -> _Served:
        """What one server holds for name/rtype: OK with its values, or why there are none."""
        # EDNS with a 1232-byte payload (the DNS flag day size): a 2048-bit DKIM key fits in
        # one UDP answer; a longer one comes back truncated and is asked again over TCP.
        query = dns.message.make_query(name + ".", rtype, use_edns=0, payload=1232)
        query.flags &= ~dns.flags.RD
        try:
            async with self._limit:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query, host, timeout=self._timeout, port=port
                )
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return _Served(UNREACHABLE, detail=str(exc) or type(exc).__name__)
        rcode = response.rcode()
        if rcode == dns.rcode.REFUSED or not response.flags & dns.flags.AA:
            return _Served(LAME, detail=f"{dns.rcode.to_text(rcode)}, not authoritative")
        if rcode == dns.rcode.NXDOMAIN:
            return _Served(MISSING)
        if rcode != dns.rcode.NOERROR:
            return _Served(UNREACHABLE, detail=dns.rcode.to_text(rcode))
        qname = dns.name.from_text(name + ".")
        wanted = dns.rdatatype.from_text(rtype)
        values = tuple(
            from_rdata(rd)
            for rrset in response.answer
            if rrset.name == qname and rrset.rdtype == wanted
            for rd in rrset
        )
        if values:
            return _Served(OK, values)
        cname = next(
            (
                rrset[0].target.to_text(omit_final_dot=True).lower()
                for rrset in response.answer
                if rrset.name == qname and rrset.rdtype == dns.rdatatype.CNAME
            ),
            None,
        )
        if cname is None:
            return _Served(MISSING)
        if depth >= MAX_CNAMES:
            return _Served(DIFFERS, detail="too many CNAMEs")
        key = (cname, rtype, depth + 1)
        if key not in followed:
            # Once per record check, however many servers pointed to it: a hop asked from
            # each server of the zone before it made 2^depth queries (1,022 for 8 CNAMEs).
            followed[key] = asyncio.ensure_future(self._follow(cname, rtype, depth + 1, followed))
        return await followed[key]

    async def _follow(self, target: str, rtype: str, depth: int, followed: Followed) -> _Served:
        """A CNAME's target, asked at its own zone's servers: served only if all agree."""
        try:
            _, servers = await self.servers_of(target)
        except ZoneUnreachable as exc:
            return _Served(UNREACHABLE, detail=f"{target}: {exc}")
        results = await asyncio.gather(
            *(self._served(host, port, target, rtype, depth, followed) for _, host, port in servers)
        )
        bad = next((r for r in results if r.status != OK), None)
        if bad is not None:
            return _Served(bad.status, detail=f"via CNAME {target}: {bad.detail}".rstrip(": "))
        values = {v for r in results for v in r.values}
        if len({r.values for r in results}) > 1:
            return _Served(DIFFERS, tuple(sorted(values)), f"servers of {target} disagree")
        return _Served(OK, results[0].values)

    async def servers_of(self, name: str) -> tuple[str, list[tuple[str, str, int]]]:
        """The zone holding name and its servers as (NS name, address, port)."""
        zone = await self._cached("zone", name, self._zone_for)
        servers = await self._cached("servers", zone, self._servers_for)
        return zone, servers

    async def _cached(self, kind: str, key: str, fetch: Callable[[str], Awaitable[T]]) -> T:
        slot = (kind, key)
        hit = self._cache.get(slot)
        if hit is not None and hit[0] > time.monotonic():
            return cast(T, hit[1])
        async with self._locks.setdefault(slot, asyncio.Lock()):
            hit = self._cache.get(slot)
            if hit is not None and hit[0] > time.monotonic():
                return cast(T, hit[1])
            # Bounded like the record queries: thousands of domains checked at once must not
            # start thousands of lookups whose time limits run out while the loop is busy.
            async with self._limit:
                value = await fetch(key)
            now = time.monotonic()
            if len(self._cache) > MAX_CACHED:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                self._locks = {k: v for k, v in self._locks.items() if k in self._cache}
            self._cache[slot] = (now + CACHE_SECONDS, value)
            return value

    async def _zone_for(self, name: str) -> str:
        try:
            zone = await dns.asyncresolver.zone_for_name(name + ".", resolver=self._resolver)
        except dns.resolver.NoRootSOA:
            # Every name up to the root was NXDOMAIN: the resolver does not see the zone.
            raise ZoneUnreachable(
                f"no zone found for {name}: the resolver knows no zone above it (is the zone"
                " delegated in public DNS, or [dns] resolvers a resolver that serves it?)"
            ) from None
        except dns.exception.DNSException as exc:
            raise ZoneUnreachable(f"no zone found for {name}: {exc}") from None
        return str(zone.to_text(omit_final_dot=True)).lower()

    async def _servers_for(self, zone: str) -> list[tuple[str, str, int]]:
        try:
            answer = await self._resolver.resolve(zone + ".", "NS")
        except dns.exception.DNSException as exc:
            raise ZoneUnreachable(f"no NS set for zone {zone}: {exc}") from None
        names = sorted(rd.target.to_text(omit_final_dot=True).lower() for rd in answer)
        servers = []
        for ns in names:
            for host, port in await self._addresses(ns):
                servers.append((ns, host, port))
        if not servers:
            raise ZoneUnreachable(f"no address for any server of zone {zone}")
        return servers

    async def _addresses(self, ns: str) -> list[tuple[str, int]]:
        if ns in self._ns_addresses:
            return self._ns_addresses[ns]
        found = []
        for rtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(ns + ".", rtype)
            except dns.exception.DNSException:
                continue
            found += [(rd.address, 53) for rd in answer]
        return found
