"""The check at the authoritative servers, against a Knot primary and its lagging secondary:
what each server serves per record (ok, missing, differs, lame, unreachable), a DKIM TXT too
big for UDP, and a _domainkey name that is a CNAME into another zone."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest
from authdns import BASE, Knot, TsigKey, base_zone, free_port, knot_pair
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dns_server import DnsServer

from mxdesk import config as cfg
from mxdesk.dns.check import AuthoritativeChecker, CheckReport
from mxdesk.dns.publish import publish
from mxdesk.dns.records import DkimTxt, Record, RecordPlan, plan
from mxdesk.dns.settings import DnsConfig
from mxdesk.gateway.dkim import generate_key, load_key

pytestmark = pytest.mark.real

KEY = TsigKey.generate("mxdesk-key")
NS1, NS2 = f"ns1.{BASE}", f"ns2.{BASE}"
DKIM_ZONE = "dkim.example"
# A zone of DKIM keys a customer delegates _domainkey names to; the same servers serve it.
DKIM_ZONE_TEXT = (
    f"$ORIGIN {DKIM_ZONE}.\n$TTL 300\n"
    f"@ IN SOA {NS1}. hostmaster.{BASE}. 2026010101 3600 600 604800 300\n"
    f"@ IN NS {NS1}.\n@ IN NS {NS2}.\n"
)


@pytest.fixture(scope="module")
def knot() -> Iterator[tuple[Knot, Knot]]:
    with knot_pair({BASE: base_zone(), DKIM_ZONE: DKIM_ZONE_TEXT}, KEY) as pair:
        yield pair


@pytest.fixture(scope="module")
def key_file() -> Iterator[str]:
    directory = Path(tempfile.mkdtemp(prefix="dnsc", dir="/tmp"))
    path = directory / "mxdesk.key"
    path.write_text(KEY.bind_text())
    yield str(path)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def dkim_2048() -> str:
    return load_key(generate_key("rsa"), f"marca.{BASE}", "mx1").dns_txt()


def dns_config(
    knot: tuple[Knot, Knot], key_file: str, timeout: float = 1.0, **addresses: Any
) -> DnsConfig:
    """Publishes to the primary; finds zones through it; ns1 is the primary and ns2 the
    secondary unless addresses (ns2_helpdesk_example=…) says otherwise."""
    primary, secondary = knot
    where = {
        NS1: f"127.0.0.1:{primary.port}",
        NS2: f"127.0.0.1:{secondary.port}",
        **{name.replace("_", "."): value for name, value in addresses.items()},
    }
    table = {
        "zones": {BASE: "knot"},
        "providers": {
            "knot": {"type": "rfc2136", "server": f"127.0.0.1:{primary.port}", "key_file": key_file}
        },
        "resolvers": [f"127.0.0.1:{primary.port}"],
        "nameserver_addresses": where,
        "check_timeout": timeout,
    }
    return cfg.parse({"dns": table}).dns


def update(server: Knot, zone: str, name: str, rtype: str, *values: str) -> None:
    """Replaces name's rtype RRset on server the way another tool would (not through mxdesk)."""
    keyring = dns.tsigkeyring.from_text({KEY.name: (KEY.algorithm, KEY.secret)})
    message = dns.update.UpdateMessage(zone, keyring=keyring, keyalgorithm=KEY.algorithm)
    message.replace(f"{name}.", 300, rtype, *values)
    response = dns.query.tcp(message, server.host, port=server.port, timeout=2)
    assert response.rcode() == dns.rcode.NOERROR


def statuses(report: CheckReport) -> dict[tuple[str, str, str], str]:
    """(record name, type, server) -> status."""
    return {
        (c.record.name, c.record.type, a.server): a.status for c in report.checks for a in c.answers
    }


def txt_strings(value: str) -> str:
    """A long TXT value as the quoted strings of at most 255 octets a TXT record holds."""
    return " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))


async def published(domain: str, config: DnsConfig, dkim: str) -> RecordPlan:
    p = plan(domain, config, [DkimTxt("mx1", dkim)])
    await publish(p, config, retry_delays=())
    return p


async def test_served_by_the_primary_only_until_the_secondary_refreshes(
    knot: tuple[Knot, Knot], key_file: str, dkim_2048: str
) -> None:
    config = dns_config(knot, key_file)
    p = await published(f"marca1.{BASE}", config, dkim_2048)
    checker = AuthoritativeChecker(config)

    report = await checker.check(p.domain, p.records)
    assert not report.ok
    assert (report.served, report.expected) == (len(p.records), 2 * len(p.records))
    for record in p.records:
        assert statuses(report)[(record.name, record.type, NS1)] == "ok"
        assert statuses(report)[(record.name, record.type, NS2)] == "missing"
    assert {c.zone for c in report.checks} == {BASE}
    assert f"marca1.{BASE} MX: missing at {NS2} (127.0.0.1:{knot[1].port})" in report.problems()

    knot[1].refresh()
    report = await checker.check(p.domain, p.records)
    assert report.ok and report.problems() == []
    assert report.served == report.expected == 2 * len(p.records)


async def test_a_value_changed_on_a_server_differs_and_shows_what_it_serves(
    knot: tuple[Knot, Knot], key_file: str, dkim_2048: str
) -> None:
    config = dns_config(knot, key_file)
    domain = f"marca2.{BASE}"
    p = await published(domain, config, dkim_2048)
    knot[1].refresh()
    update(knot[0], BASE, domain, "TXT", '"v=spf1 ip4:198.51.100.1 -all"')
    update(knot[0], BASE, domain, "MX", f"20 other.{BASE}.")

    report = await AuthoritativeChecker(config).check(domain, p.records)
    assert not report.ok
    answers = {(c.record.type, a.server): a for c in report.checks for a in c.answers}
    spf = next(c for c in report.checks if c.record.purpose == "spf")
    at_ns1 = next(a for a in spf.answers if a.server == NS1)
    assert at_ns1.status == "differs"
    assert at_ns1.served == ("v=spf1 ip4:198.51.100.1 -all",)
    assert answers[("MX", NS1)].status == "differs"
    assert answers[("MX", NS1)].served == (f"20 other.{BASE}.",)
    assert next(a for a in spf.answers if a.server == NS2).status == "ok"  # not refreshed yet
    problems = report.problems()
    assert any(
        "differs at ns1" in line and "v=spf1 ip4:198.51.100.1 -all" in line for line in problems
    )
    assert report.served == report.expected - 2


async def test_a_closed_server_is_unreachable(
    knot: tuple[Knot, Knot], key_file: str, dkim_2048: str
) -> None:
    closed = free_port()
    # 1 s: the closed port must time out, the live primary must not (at 0.3 s the primary
    # timed out once in a full run).
    config = dns_config(knot, key_file, 1.0, ns2_helpdesk_example=f"127.0.0.1:{closed}")
    p = await published(f"marca3.{BASE}", config, dkim_2048)

    report = await AuthoritativeChecker(config).check(p.domain, p.records)
    assert not report.ok
    for check in report.checks:
        by_server = {a.server: a for a in check.answers}
        assert by_server[NS1].status == "ok"
        assert by_server[NS2].status == "unreachable"
        assert by_server[NS2].address == f"127.0.0.1:{closed}"
        assert "timed out" in by_server[NS2].detail
    assert report.served == len(p.records)


async def test_a_server_that_does_not_serve_the_zone_is_lame(
    knot: tuple[Knot, Knot], key_file: str, dkim_2048: str
) -> None:
    other = Knot({"other.example": base_zone("other.example")})
    other.start()
    try:
        config = dns_config(knot, key_file, ns2_helpdesk_example=f"127.0.0.1:{other.port}")
        p = await published(f"marca4.{BASE}", config, dkim_2048)
        report = await AuthoritativeChecker(config).check(p.domain, p.records)
    finally:
        other.close()
    assert not report.ok
    for check in report.checks:
        by_server = {a.server: a.status for a in check.answers}
        assert by_server == {NS1: "ok", NS2: "lame"}


async def test_a_4096_bit_dkim_key_too_big_for_udp_checks_ok(
    knot: tuple[Knot, Knot], key_file: str
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    txt = load_key(pem, f"marca5.{BASE}", "mx1").dns_txt()
    assert len(txt.encode()) == 754
    config = dns_config(knot, key_file)
    p = await published(f"marca5.{BASE}", config, txt)
    knot[1].refresh()

    # Over plain UDP (512 bytes, no EDNS) the answer does not fit: truncated, no records.
    name = f"mx1._domainkey.marca5.{BASE}."
    request = dns.message.make_query(name, "TXT", use_edns=False)
    request.flags &= ~dns.flags.RD
    response = dns.query.udp(request, "127.0.0.1", port=knot[0].port, timeout=2)
    assert response.flags & dns.flags.TC and not response.answer

    report = await AuthoritativeChecker(config).check(p.domain, p.records)
    assert report.ok, report.problems()
    dkim = next(c for c in report.checks if c.record.purpose == "dkim")
    assert [a.served for a in dkim.answers] == [(txt,), (txt,)]


async def test_a_domainkey_cname_into_another_zone_is_followed(
    knot: tuple[Knot, Knot], key_file: str, dkim_2048: str
) -> None:
    primary, secondary = knot
    config = dns_config(knot, key_file)
    name = f"mx1._domainkey.marca6.{BASE}"
    target = f"mx1.marca6.{DKIM_ZONE}"
    update(primary, DKIM_ZONE, target, "TXT", txt_strings(dkim_2048))
    update(primary, BASE, name, "CNAME", f"{target}.")
    secondary.refresh(BASE)
    secondary.refresh(DKIM_ZONE)
    record = Record(name, "TXT", dkim_2048, "dkim", 3600)
    checker = AuthoritativeChecker(config)

    report = await checker.check(f"marca6.{BASE}", [record])
    assert report.ok, report.problems()
    assert report.checks[0].zone == BASE
    assert [a.served for a in report.checks[0].answers] == [(dkim_2048,), (dkim_2048,)]

    # The key behind the CNAME changes: the check sees the served value, not the CNAME.
    update(primary, DKIM_ZONE, target, "TXT", '"v=DKIM1; k=rsa; p=OLDKEY"')
    report = await checker.check(f"marca6.{BASE}", [record])
    assert [a.status for a in report.checks[0].answers] == ["differs", "differs"]


async def test_a_zone_no_server_knows_is_said_plainly() -> None:
    """A resolver that answers NXDOMAIN up to the root (an offline network, a zone not
    delegated yet): the record's line names the cause, not dnspython's "should never happen"."""
    server = DnsServer()
    try:
        table = {"resolvers": [f"{server.host}:{server.port}"], "check_timeout": 1.0}
        config = cfg.parse({"dns": table}).dns
        name = "mx1._domainkey.marca.nowhere.example"
        record = Record(name, "TXT", "v=DKIM1; p=X", "dkim", 3600)
        report = await AuthoritativeChecker(config).check("marca.nowhere.example", [record])
    finally:
        server.close()
    assert report.problems() == [
        f"{name} TXT: unreachable: no zone found for {name}: the resolver knows no zone above it"
        " (is the zone delegated in public DNS, or [dns] resolvers a resolver that serves it?)"
    ]


@pytest.mark.parametrize(("cnames", "served"), [(8, True), (9, False)])
async def test_a_chain_of_eight_cnames_is_followed_and_nine_are_too_many(
    knot: tuple[Knot, Knot],
    key_file: str,
    dkim_2048: str,
    cnames: int,
    served: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAX_CNAMES: a _domainkey name behind eight CNAMEs (each asked at its zone's servers)
    is checked; behind nine it is not served as planned, and the report says why. Each hop is
    asked once at each server, not once for every server that pointed to it (2^9 queries)."""
    asked = 0
    sent = dns.asyncquery.udp_with_fallback

    async def counted(query: dns.message.Message, *args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        asked += not query.flags & dns.flags.RD  # the check's own queries, not the resolver's
        return await sent(query, *args, **kwargs)

    monkeypatch.setattr(dns.asyncquery, "udp_with_fallback", counted)
    primary, secondary = knot
    label = f"chain{cnames}"
    name = f"mx1._domainkey.{label}.{BASE}"
    hops = [f"c{n}.{label}.{DKIM_ZONE}" for n in range(1, cnames + 1)]
    update(primary, BASE, name, "CNAME", f"{hops[0]}.")
    for here, there in itertools.pairwise(hops):
        update(primary, DKIM_ZONE, here, "CNAME", f"{there}.")
    update(primary, DKIM_ZONE, hops[-1], "TXT", txt_strings(dkim_2048))
    secondary.refresh(BASE)
    secondary.refresh(DKIM_ZONE)
    record = Record(name, "TXT", dkim_2048, "dkim", 3600)

    report = await AuthoritativeChecker(dns_config(knot, key_file)).check(
        f"{label}.{BASE}", [record]
    )
    if served:
        assert report.ok, report.problems()
        assert [a.served for a in report.checks[0].answers] == [(dkim_2048,), (dkim_2048,)]
    else:
        assert [a.status for a in report.checks[0].answers] == ["differs", "differs"]
        problems = report.problems()
        assert len(problems) == 2 and all(p.endswith(": too many CNAMEs") for p in problems)
    assert asked == 2 * (1 + min(cnames, 8))  # the name and each hop followed, at 2 servers
