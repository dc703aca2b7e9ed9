"""The authoritative DNS test peers work: Knot, BIND and PowerDNS take TSIG-signed updates and
serve them, refuse what their policy forbids, and a Knot secondary lags until refreshed."""

from __future__ import annotations

from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
from authdns import (
    BASE,
    Bind,
    Knot,
    TsigKey,
    base_zone,
    bind_server,
    knot_pair,
    query,
    txt_values,
)
from powerdns import PowerDns, powerdns_server

pytestmark = pytest.mark.real

KEY = TsigKey.generate("mxdesk-key")


def update(
    server: Knot | Bind | PowerDns, key: TsigKey | None, name: str, value: str
) -> dns.message.Message:
    """Replaces the TXT at name with value through RFC 2136 over TCP, signed with key if any."""
    if key is None:
        message = dns.update.UpdateMessage(BASE)
    else:
        keyring = dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})
        message = dns.update.UpdateMessage(BASE, keyring=keyring, keyalgorithm=key.algorithm)
    message.replace(f"{name}.", 60, "TXT", f'"{value}"')
    return dns.query.tcp(message, server.host, port=server.port, timeout=2)


@pytest.fixture(scope="module")
def knot() -> Iterator[tuple[Knot, Knot]]:
    with knot_pair({BASE: base_zone()}, KEY) as pair:
        yield pair


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    with bind_server({BASE: base_zone()}, KEY, grants=(f"marca.{BASE}",)) as server:
        yield server


@pytest.fixture(scope="module")
def powerdns() -> Iterator[PowerDns]:
    with powerdns_server() as server:
        server.create_zone(BASE, base_zone())
        server.add_tsig_key(KEY, BASE)
        yield server


def test_base_zone_is_served_by_every_server(
    knot: tuple[Knot, Knot], bind: Bind, powerdns: PowerDns
) -> None:
    for server in (*knot, bind, powerdns):
        answer = query(server.host, server.port, f"mx.{BASE}", "AAAA")
        assert answer.rcode() == dns.rcode.NOERROR
        assert [rr.to_text() for rr in answer.answer[0]] == ["2001:db8::10"]
        assert answer.flags & dns.flags.AA


def test_knot_update_reaches_the_secondary_only_after_refresh(knot: tuple[Knot, Knot]) -> None:
    primary, secondary = knot
    name = f"_test.marca.{BASE}"
    before = primary.serial()

    assert update(primary, KEY, name, "v=1").rcode() == dns.rcode.NOERROR

    assert primary.serial() == before + 1
    assert txt_values(primary.host, primary.port, name) == ["v=1"]
    assert txt_values(secondary.host, secondary.port, name) == []
    assert secondary.serial() == before
    secondary.refresh()
    assert txt_values(secondary.host, secondary.port, name) == ["v=1"]
    assert txt_values(primary.host, primary.port, name) == ["v=1"]


def test_knot_rejects_a_wrong_secret(knot: tuple[Knot, Knot]) -> None:
    primary, _ = knot
    wrong = TsigKey.generate(KEY.name)
    with pytest.raises(dns.tsig.PeerBadSignature):
        update(primary, wrong, f"_wrong.{BASE}", "no")
    assert txt_values(primary.host, primary.port, f"_wrong.{BASE}") == []


def test_knot_refuses_an_unsigned_update(knot: tuple[Knot, Knot]) -> None:
    primary, _ = knot
    assert update(primary, None, f"_unsigned.{BASE}", "no").rcode() == dns.rcode.NOTAUTH


def test_bind_grant_covers_only_its_subdomain(bind: Bind) -> None:
    before = bind.serial()
    assert update(bind, KEY, f"_dmarc.marca.{BASE}", "v=DMARC1").rcode() == dns.rcode.NOERROR
    assert txt_values(bind.host, bind.port, f"_dmarc.marca.{BASE}") == ["v=DMARC1"]
    assert bind.serial() == before + 1

    assert update(bind, KEY, f"_dmarc.outra.{BASE}", "v=DMARC1").rcode() == dns.rcode.REFUSED
    assert txt_values(bind.host, bind.port, f"_dmarc.outra.{BASE}") == []


def test_powerdns_api_replace_is_served(powerdns: PowerDns) -> None:
    soa = query(powerdns.host, powerdns.port, BASE, "SOA").answer[0][0]
    assert soa.mname.to_text() == f"ns1.{BASE}."
    rrset = {
        "name": f"marca.{BASE}.",
        "type": "TXT",
        "ttl": 60,
        "changetype": "REPLACE",
        "records": [{"content": '"v=spf1 -all"', "disabled": False}],
    }
    before = powerdns.serial()
    powerdns.api("PATCH", f"/api/v1/servers/localhost/zones/{BASE}.", {"rrsets": [rrset]})
    assert txt_values(powerdns.host, powerdns.port, f"marca.{BASE}") == ["v=spf1 -all"]
    assert powerdns.serial() > before


def test_powerdns_requires_the_tsig_key_for_updates(powerdns: PowerDns) -> None:
    name = f"_acme.marca.{BASE}"
    assert update(powerdns, None, name, "no").rcode() == dns.rcode.REFUSED
    assert txt_values(powerdns.host, powerdns.port, name) == []

    assert update(powerdns, KEY, name, "yes").rcode() == dns.rcode.NOERROR
    assert txt_values(powerdns.host, powerdns.port, name) == ["yes"]
