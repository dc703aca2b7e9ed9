"""Where mail for a domain goes: its MX hosts and their addresses, in the order to try them."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdtypes.ANY.MX
import dns.resolver

from mxdesk.configread import Listen
from mxdesk.gateway.lmtp import Reply

# Postfix's smtp_mx_address_limit: a domain with many addresses must not hold a delivery for ages.
MAX_ADDRESSES = 5
# MX hosts whose addresses are looked up at all; a hostile zone cannot make us send hundreds.
MAX_MX_HOSTS = 10
MAX_TTL = 3600.0


class RouteError(Exception):
    """The domain cannot be routed now (temporary reply) or ever (permanent reply)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True)
class Target:
    host: str  # the MX host name, or the domain itself for the implicit MX
    address: str

    @property
    def remote(self) -> str:
        return f"{self.host}[{self.address}]"


@dataclass(frozen=True)
class _Mx:
    preference: int
    host: str
    addresses: tuple[str, ...]


def build_resolver(nameservers: Sequence[Listen]) -> dns.asyncresolver.Resolver:
    """A resolver asking the configured servers, or those of /etc/resolv.conf when none are."""
    if not nameservers:
        try:
            return dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            # No /etc/resolv.conf: lookups fail (and are retried) instead of the daemon.
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
            return resolver
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers]
    return resolver


def _temporary(domain: str, exc: Exception) -> RouteError:
    return RouteError(Reply(451, f"4.4.3 cannot resolve the mail servers of {domain}: {exc}"))


def _literal(domain: str) -> list[Target] | None:
    """An address literal such as [192.0.2.1] or [IPv6:2001:db8::1] (RFC 5321 §4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    text = text[5:] if text.lower().startswith("ipv6:") else text
    try:
        return [Target(domain, str(ipaddress.ip_address(text)))]
    except ValueError:
        raise RouteError(Reply(550, f"5.1.2 bad address literal {domain}")) from None


class MxResolver:
    """Looks up MX, A and AAAA records and caches each domain's answer for its TTL."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        max_entries: int = 1024,
        rng: random.Random | None = None,
    ) -> None:
        self._resolver = resolver
        self._max_entries = max_entries
        self._rng = rng or random.Random()
        self._cache: dict[str, tuple[float, tuple[_Mx, ...] | Reply]] = {}

    async def targets(self, domain: str) -> list[Target]:
        """The addresses to try, best first; raises RouteError when there are none."""
        literal = _literal(domain)
        if literal is not None:
            return literal
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > time.monotonic():
            result = cached[1]
        else:
            result, ttl = await self._lookup(domain)
            self._remember(domain, result, ttl)
        if isinstance(result, Reply):
            raise RouteError(result)
        return self._order(result)

    def _order(self, mxs: tuple[_Mx, ...]) -> list[Target]:
        # RFC 5321 §5.1: lowest preference first, hosts of equal preference in random order.
        shuffled = list(mxs)
        self._rng.shuffle(shuffled)
        shuffled.sort(key=lambda mx: mx.preference)
        targets = [Target(mx.host, a) for mx in shuffled for a in mx.addresses]
        return targets[:MAX_ADDRESSES]

    def _remember(self, domain: str, result: tuple[_Mx, ...] | Reply, ttl: float) -> None:
        if ttl <= 0 or self._max_entries <= 0:
            return
        now = time.monotonic()
        if len(self._cache) >= self._max_entries:
            for name in [n for n, (expires, _) in self._cache.items() if expires <= now]:
                del self._cache[name]
        while len(self._cache) >= self._max_entries:
            del self._cache[next(iter(self._cache))]  # dicts keep insertion order: the oldest
        self._cache[domain] = (now + min(ttl, MAX_TTL), result)

    async def _lookup(self, domain: str) -> tuple[tuple[_Mx, ...] | Reply, float]:
        try:
            name = dns.name.from_text(domain)
        except (dns.exception.DNSException, UnicodeError) as exc:
            raise RouteError(Reply(550, f"5.1.2 invalid domain name {domain}: {exc}")) from None
        try:
            answer = await self._resolver.resolve(name, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise RouteError(Reply(550, f"5.1.2 domain {domain} does not exist")) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX records, so the domain itself is the implicit MX.
            return await self._resolve_hosts(domain, [(0, domain)], MAX_TTL)
        except dns.exception.DNSException as exc:
            raise _temporary(domain, exc) from None
        records = [r for r in answer if isinstance(r, dns.rdtypes.ANY.MX.MX)]
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
        if len(records) == 1 and records[0].exchange == dns.name.root:
            # RFC 7505 §3.2: a null MX says the domain accepts no mail at all.
            return Reply(556, f"5.1.10 Recipient address has null MX ({domain})"), ttl
        # RFC 7505 §3.3: a "." among other MX records is an error; it is not a host to try.
        hosts = sorted(
            (r.preference, r.exchange.to_text(omit_final_dot=True).lower())
            for r in records
            if r.exchange != dns.name.root
        )
        return await self._resolve_hosts(domain, hosts[:MAX_MX_HOSTS], ttl)

    async def _resolve_hosts(
        self, domain: str, hosts: Sequence[tuple[int, str]], ttl: float
    ) -> tuple[tuple[_Mx, ...], float]:
        found = await asyncio.gather(*(self._addresses(host) for _, host in hosts))
        mxs: list[_Mx] = []
        temporary: Exception | None = None
        for (preference, host), (addresses, host_ttl, error) in zip(hosts, found, strict=True):
            temporary = temporary or error
            if addresses:  # an MX host without addresses is skipped, like Postfix does
                mxs.append(_Mx(preference, host, addresses))
                ttl = min(ttl, host_ttl)
        if mxs:
            return tuple(mxs), ttl
        if temporary is not None:
            raise _temporary(domain, temporary)
        names = ", ".join(host for _, host in hosts) or domain
        raise RouteError(
            Reply(550, f"5.4.4 no address found for the mail servers of {domain} ({names})")
        )

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], float, Exception | None]:
        """The IPv4 then IPv6 addresses of host, their TTL, and a temporary lookup error."""
        addresses: list[str] = []
        ttl = MAX_TTL
        error: Exception | None = None
        name = dns.name.from_text(host)
        answers = await asyncio.gather(
            *(self._resolver.resolve(name, t, search=False) for t in ("A", "AAAA")),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, dns.resolver.Answer):
                addresses.extend(r.to_text() for r in answer)
                if answer.rrset is not None:
                    ttl = min(ttl, float(answer.rrset.ttl))
            elif isinstance(answer, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
                continue
            elif isinstance(answer, Exception):
                error = answer
            else:
                raise answer
        return tuple(addresses), ttl, error
