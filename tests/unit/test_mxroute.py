"""MX resolution against a local DNS server: order, implicit and null MX, failures, the cache."""

from __future__ import annotations

from collections.abc import Iterator

import dns.asyncresolver
import dns.nameserver
import pytest
from dns_server import DnsServer

from mxdesk.config import Listen
from mxdesk.gateway.mxroute import MAX_ADDRESSES, MxResolver, RouteError, Target, build_resolver


@pytest.fixture
def server() -> Iterator[DnsServer]:
    s = DnsServer()
    yield s
    s.close()


def resolver_for(server: DnsServer, lifetime: float = 5.0) -> dns.asyncresolver.Resolver:
    resolver = build_resolver([Listen(server.host, server.port)])
    resolver.lifetime = lifetime
    return resolver


async def failure(mx: MxResolver, domain: str) -> tuple[int, str]:
    with pytest.raises(RouteError) as info:
        await mx.targets(domain)
    return info.value.reply.code, info.value.reply.text


async def test_hosts_by_preference_with_their_addresses(server: DnsServer) -> None:
    server.add("example.com", "MX", "20 mx2.example.com.", "10 mx1.example.com.")
    server.add("mx1.example.com", "A", "192.0.2.1", "192.0.2.2")
    server.add("mx1.example.com", "AAAA", "2001:db8::1")
    server.add("mx2.example.com", "A", "192.0.2.20")
    targets = await MxResolver(resolver_for(server)).targets("example.com")
    assert targets[0].host == "mx1.example.com"
    assert {t.address for t in targets[:2]} == {"192.0.2.1", "192.0.2.2"}
    assert targets[2:] == [
        Target("mx1.example.com", "2001:db8::1"),
        Target("mx2.example.com", "192.0.2.20"),
    ]
    assert targets[3].remote == "mx2.example.com[192.0.2.20]"


async def test_equal_preference_in_random_order(server: DnsServer) -> None:
    server.add("example.com", "MX", "10 a.example.com.", "10 b.example.com.")
    server.add("a.example.com", "A", "192.0.2.1").add("b.example.com", "A", "192.0.2.2")
    mx = MxResolver(resolver_for(server))
    firsts = {(await mx.targets("example.com"))[0].host for _ in range(60)}
    assert firsts == {"a.example.com", "b.example.com"}


async def test_no_mx_means_the_domain_itself(server: DnsServer) -> None:
    server.add("example.com", "A", "192.0.2.7")  # NOERROR for MX, no data: RFC 5321 §5.1
    targets = await MxResolver(resolver_for(server)).targets("example.com")
    assert targets == [Target("example.com", "192.0.2.7")]


async def test_null_mx_is_a_permanent_556(server: DnsServer) -> None:
    server.add("example.com", "MX", "0 .")
    code, text = await failure(MxResolver(resolver_for(server)), "example.com")
    assert (code, text.split()[0]) == (556, "5.1.10")
    assert "null MX" in text


async def test_nxdomain_is_permanent(server: DnsServer) -> None:
    code, text = await failure(MxResolver(resolver_for(server)), "nowhere.example")
    assert code == 550 and text.startswith("5.1.2 ") and "does not exist" in text


async def test_servfail_is_temporary(server: DnsServer) -> None:
    server.fail("example.com")
    code, text = await failure(MxResolver(resolver_for(server)), "example.com")
    assert code == 451 and text.startswith("4.4.3 ")


async def test_timeout_is_temporary(server: DnsServer) -> None:
    server.drop("example.com")
    code, text = await failure(MxResolver(resolver_for(server, lifetime=0.5)), "example.com")
    assert code == 451 and text.startswith("4.4.3 ")


async def test_mx_host_without_addresses_is_skipped(server: DnsServer) -> None:
    server.add("example.com", "MX", "10 gone.example.com.", "20 empty.example.com.")
    server.add("example.com", "MX", "30 mx.example.com.")
    server.exists("empty.example.com")  # NOERROR, no A or AAAA; gone.example.com is NXDOMAIN
    server.add("mx.example.com", "A", "192.0.2.30")
    targets = await MxResolver(resolver_for(server)).targets("example.com")
    assert targets == [Target("mx.example.com", "192.0.2.30")]


async def test_no_mx_host_with_an_address_is_permanent(server: DnsServer) -> None:
    server.add("example.com", "MX", "10 gone.example.com.")
    code, text = await failure(MxResolver(resolver_for(server)), "example.com")
    assert code == 550 and "gone.example.com" in text


async def test_an_address_lookup_servfail_is_temporary(server: DnsServer) -> None:
    server.add("example.com", "MX", "10 mx.example.com.").fail("mx.example.com")
    code, _ = await failure(MxResolver(resolver_for(server)), "example.com")
    assert code == 451


async def test_at_most_max_addresses(server: DnsServer) -> None:
    server.add("example.com", "A", *(f"192.0.2.{i}" for i in range(1, 12)))
    targets = await MxResolver(resolver_for(server)).targets("example.com")
    assert len(targets) == MAX_ADDRESSES


async def test_the_tenth_mx_host_is_tried(server: DnsServer) -> None:
    """MAX_MX_HOSTS: the ten best MX hosts are looked up; here only the tenth has an address."""
    server.add("example.com", "MX", *(f"{n} mx{n}.example.com." for n in range(1, 11)))
    server.add("mx10.example.com", "A", "192.0.2.10")
    targets = await MxResolver(resolver_for(server)).targets("example.com")
    assert targets == [Target("mx10.example.com", "192.0.2.10")]


async def test_an_eleventh_mx_host_is_never_looked_up(server: DnsServer) -> None:
    """A hostile zone with many MX hosts cannot make us send a query per host: with the ten
    best without an address, the eleventh, which has one, is not asked about and the mail
    bounces naming the ten."""
    server.add("example.com", "MX", *(f"{n} mx{n}.example.com." for n in range(1, 12)))
    server.add("mx11.example.com", "A", "192.0.2.11")
    code, text = await failure(MxResolver(resolver_for(server)), "example.com")
    ten = ", ".join(f"mx{n}.example.com" for n in range(1, 11))
    assert code == 550 and text.endswith(f"of example.com ({ten})")
    assert "mx11.example.com." not in server.queries


async def test_address_literal_needs_no_dns(server: DnsServer) -> None:
    mx = MxResolver(resolver_for(server))
    assert await mx.targets("[192.0.2.9]") == [Target("[192.0.2.9]", "192.0.2.9")]
    assert (await mx.targets("[IPv6:2001:db8::9]"))[0].address == "2001:db8::9"
    assert (await failure(mx, "[not.an.address]"))[0] == 550
    assert server.queries == []


async def test_answers_are_cached_and_the_cache_is_bounded(server: DnsServer) -> None:
    for d in ("a.example", "b.example", "c.example"):
        server.add(d, "A", "192.0.2.1")
    mx = MxResolver(resolver_for(server), max_entries=2)
    await mx.targets("a.example")
    asked = len(server.queries)
    await mx.targets("a.example")
    assert len(server.queries) == asked  # from the cache
    await mx.targets("b.example")
    await mx.targets("c.example")  # the cache is full: a.example, the oldest, goes
    asked = len(server.queries)
    await mx.targets("c.example")
    assert len(server.queries) == asked
    await mx.targets("a.example")
    assert len(server.queries) > asked


def test_resolver_uses_the_configured_port() -> None:
    resolver = build_resolver([Listen("127.0.0.1", 5353)])
    (ns,) = resolver.nameservers
    assert isinstance(ns, dns.nameserver.Do53Nameserver) and ns.port == 5353
