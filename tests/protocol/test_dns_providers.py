"""Publishing a record plan through each provider to a real server: RFC 2136 to Knot and to
BIND, the PowerDNS API, and dns-lexicon's powerdns provider. Every record is then served (the
DKIM TXT joined back whole), publishing again changes nothing, a TXT that is not mxdesk's stays,
and each way a publish fails gives a sysadmin words to act on and leaves the zone as it was."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.rdatatype
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
    free_port,
    query,
    txt_values,
)
from powerdns import PowerDns, powerdns_server

from mxdesk import config as cfg
from mxdesk.dns.providers import ProviderError
from mxdesk.dns.publish import Published, publish
from mxdesk.dns.records import DkimTxt, RecordPlan, plan, quote_txt
from mxdesk.dns.settings import DnsConfig
from mxdesk.gateway.dkim import generate_key, load_key

pytestmark = pytest.mark.real

KEY = TsigKey.generate("mxdesk-key")
WRONG_SECRET = TsigKey.generate("mxdesk-key")  # same name and algorithm, another secret
SITE_TXT = "google-site-verification=Zx8p3kQ1_not-mxdesks"
TARGETS = ["knot", "bind", "powerdns", "lexicon"]


@dataclass
class Target:
    """One way to publish: the [dns.providers] table, and the server it writes to."""

    name: str
    provider: dict[str, Any]
    server: Knot | Bind | PowerDns

    def config(self, zone: str = BASE, **dns: Any) -> DnsConfig:
        table = {"zones": {zone: self.name}, "providers": {self.name: self.provider}, **dns}
        return cfg.parse({"dns": table}).dns

    def domain(self, label: str) -> str:
        # powerdns and lexicon write to the same server: each test and target its own names.
        return f"{label}-{self.name}.{BASE}"

    def add_foreign_txt(self, name: str, value: str) -> None:
        """Puts a TXT at name the way another tool would (not through mxdesk)."""
        if isinstance(self.server, PowerDns):
            rrset = {
                "name": f"{name}.",
                "type": "TXT",
                "ttl": 300,
                "changetype": "REPLACE",
                # As a zone-file import holds it: a long value in several quoted strings.
                "records": [{"content": quote_txt(value), "disabled": False}],
            }
            self.server.api(
                "PATCH", f"/api/v1/servers/localhost/zones/{BASE}.", {"rrsets": [rrset]}
            )
            return
        keyring = dns.tsigkeyring.from_text({KEY.name: (KEY.algorithm, KEY.secret)})
        message = dns.update.UpdateMessage(BASE, keyring=keyring, keyalgorithm=KEY.algorithm)
        message.add(f"{name}.", 300, "TXT", f'"{value}"')
        response = dns.query.tcp(message, self.server.host, port=self.server.port, timeout=2)
        assert response.rcode() == dns.rcode.NOERROR


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dnsp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def knot() -> Iterator[Knot]:
    server = Knot({BASE: base_zone()}, KEY)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    with bind_server({BASE: base_zone()}, KEY) as server:
        yield server


@pytest.fixture(scope="module")
def bind_marca() -> Iterator[Bind]:
    """A BIND whose update-policy lets the key change marca.helpdesk.example and below only."""
    with bind_server({BASE: base_zone()}, KEY, grants=(f"marca.{BASE}",)) as server:
        yield server


@pytest.fixture(scope="module")
def pdns() -> Iterator[PowerDns]:
    with powerdns_server() as server:
        server.create_zone(BASE, base_zone())
        yield server


def rfc2136_target(name: str, server: Knot | Bind, files: Path, key: TsigKey = KEY) -> Target:
    key_file = write(files, f"{name}-{key.secret[:8].replace('/', '_')}.key", key.bind_text())
    provider = {"type": "rfc2136", "server": f"{server.host}:{server.port}", "key_file": key_file}
    return Target(name, {**provider, "timeout": 2.0}, server)


def powerdns_target(server: PowerDns, files: Path, api_key: str = "") -> Target:
    key_file = write(files, f"pdns-api-{bool(api_key)}.key", (api_key or server.api_key) + "\n")
    provider = {"type": "powerdns", "url": server.api_url, "api_key_file": key_file, "timeout": 2}
    return Target("powerdns", provider, server)


def lexicon_target(server: PowerDns, files: Path, api_key: str = "") -> Target:
    credentials = (
        f'auth_token = "{api_key or server.api_key}"\n'
        f'pdns_server = "{server.api_url}"\n'
        'pdns_server_id = "localhost"\n'
    )
    path = write(files, f"lexicon-{bool(api_key)}.toml", credentials)
    provider = {"type": "lexicon", "provider": "powerdns", "credentials_file": path}
    return Target("lexicon", provider, server)


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, files: Path) -> Target:
    if request.param in ("knot", "bind"):
        return rfc2136_target(request.param, request.getfixturevalue(request.param), files)
    server = request.getfixturevalue("pdns")
    return (powerdns_target if request.param == "powerdns" else lexicon_target)(server, files)


@pytest.fixture(scope="module")
def dkim_txts() -> tuple[str, str]:
    """The TXT values of two real RSA-2048 DKIM keys (two strings each)."""
    first, second = (load_key(generate_key("rsa"), f"marca.{BASE}", "mx1") for _ in range(2))
    return first.dns_txt(), second.dns_txt()


def full_plan(domain: str, config: DnsConfig, dkim: str) -> RecordPlan:
    return plan(domain, config, [DkimTxt("mx1", dkim)], token="tok-1234")


FULL = {
    "dmarc_rua": "mailto:dmarc@helpdesk.example",
    "tlsrpt_rua": "mailto:tlsrpt@helpdesk.example",
    "mta_sts": "enforce",
}


def served(server: Knot | Bind | PowerDns, name: str, rtype: str) -> list[str]:
    """The values server serves at name and rtype: TXT joined, others in presentation form."""
    if rtype == "TXT":
        return sorted(txt_values(server.host, server.port, name))
    response = query(server.host, server.port, name, rtype)
    return sorted(
        rdata.to_text()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.from_text(rtype)
        for rdata in rrset
    )


def nothing_served(server: Knot | Bind | PowerDns, p: RecordPlan) -> bool:
    return all(served(server, r.name, r.type) == [] for r in p.records)


async def publish_error(p: RecordPlan, config: DnsConfig) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await publish(p, config, retry_delays=())
    return info.value


# --- publishing -------------------------------------------------------------------------------


async def test_full_plan_is_served_and_publishing_again_changes_nothing(
    target: Target, dkim_txts: tuple[str, str]
) -> None:
    config = target.config(**FULL)
    p = full_plan(target.domain("marca1"), config, dkim_txts[0])
    assert {r.type for r in p.records} == {"MX", "TXT"} and len(p.records) == 7

    first = await publish(p, config, retry_delays=())
    assert [(r.zone, r.provider) for r in first] == [(BASE, target.name)]
    assert {(c.name, c.type) for c in first[0].changed} == {(r.name, r.type) for r in p.records}

    for record in p.records:
        assert served(target.server, record.name, record.type) == [record.value], record
    dkim = served(target.server, f"mx1._domainkey.{p.domain}", "TXT")
    assert dkim == [dkim_txts[0]] and len(dkim[0]) > 255  # two strings joined back whole

    again = await publish(p, config, retry_delays=())
    assert again == [Published(BASE, target.name, ())]


async def test_a_txt_that_is_not_mxdesks_is_kept_and_a_changed_value_replaced(
    target: Target, dkim_txts: tuple[str, str]
) -> None:
    domain = target.domain("marca2")
    target.add_foreign_txt(domain, SITE_TXT)
    before = target.config(spf="v=spf1 a -all")
    await publish(full_plan(domain, before, dkim_txts[0]), before, retry_delays=())
    assert served(target.server, domain, "TXT") == sorted([SITE_TXT, "v=spf1 a -all"])

    # New SPF and a rotated DKIM key: the old values go, the site verification stays.
    after = target.config()
    p = full_plan(domain, after, dkim_txts[1])
    [result] = await publish(p, after, retry_delays=())
    assert {(c.name, c.type) for c in result.changed} == {
        (domain, "TXT"),
        (f"mx1._domainkey.{domain}", "TXT"),
    }
    assert served(target.server, domain, "TXT") == sorted([SITE_TXT, "v=spf1 mx -all"])
    assert served(target.server, f"mx1._domainkey.{domain}", "TXT") == [dkim_txts[1]]
    assert await publish(p, after, retry_delays=()) == [Published(BASE, target.name, ())]


@pytest.mark.parametrize("kind", ["powerdns", "lexicon"])
async def test_powerdns_txt_held_as_several_strings_is_read_whole(
    pdns: PowerDns, files: Path, kind: str, dkim_txts: tuple[str, str]
) -> None:
    """A DKIM TXT a zone-file import stored as "…" "…" is mxdesk's key, not something else:
    publishing again leaves it, and a rotation replaces it."""
    target = (powerdns_target if kind == "powerdns" else lexicon_target)(pdns, files)
    domain = target.domain("imported")
    selector = f"mx1._domainkey.{domain}"
    target.add_foreign_txt(selector, dkim_txts[0])
    config = target.config()

    [result] = await publish(full_plan(domain, config, dkim_txts[0]), config, retry_delays=())
    assert selector not in {c.name for c in result.changed}
    assert served(pdns, selector, "TXT") == [dkim_txts[0]]

    await publish(full_plan(domain, config, dkim_txts[1]), config, retry_delays=())
    assert served(pdns, selector, "TXT") == [dkim_txts[1]]


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("server_name", ["knot", "bind"])
async def test_wrong_tsig_secret_is_refused_and_nothing_changes(
    request: pytest.FixtureRequest, files: Path, server_name: str, dkim_txts: tuple[str, str]
) -> None:
    server = request.getfixturevalue(server_name)
    target = rfc2136_target(server_name, server, files, key=WRONG_SECRET)
    config = target.config()
    p = full_plan(target.domain("wrongkey"), config, dkim_txts[0])
    serial = server.serial()

    error = await publish_error(p, config)
    assert "refused the TSIG key 'mxdesk-key'" in str(error)
    assert "secret" in str(error)  # what to check: BADSIG is the secret, not the key name
    assert not error.temporary
    assert server.serial() == serial and nothing_served(server, p)


async def test_bind_key_is_not_allowed_outside_its_grant(
    bind_marca: Bind, files: Path, dkim_txts: tuple[str, str]
) -> None:
    target = rfc2136_target("bind", bind_marca, files)
    config = target.config()
    outra = full_plan(f"outra.{BASE}", config, dkim_txts[0])
    serial = bind_marca.serial()

    error = await publish_error(outra, config)
    assert "not allowed to update" in str(error) and f"outra.{BASE}" in str(error)
    assert "update-policy" in str(error)
    assert not error.temporary
    assert bind_marca.serial() == serial and nothing_served(bind_marca, outra)

    # The same key may publish what its grant covers.
    marca = full_plan(f"marca.{BASE}", config, dkim_txts[0])
    await publish(marca, config, retry_delays=())
    assert served(bind_marca, f"mx1._domainkey.marca.{BASE}", "TXT") == [dkim_txts[0]]


@pytest.mark.parametrize("kind", ["powerdns", "lexicon"])
async def test_wrong_powerdns_api_key_is_refused_and_nothing_changes(
    pdns: PowerDns, files: Path, kind: str, dkim_txts: tuple[str, str]
) -> None:
    make = powerdns_target if kind == "powerdns" else lexicon_target
    target = make(pdns, files, api_key="not-the-key")
    config = target.config()
    p = full_plan(target.domain("wrongapikey"), config, dkim_txts[0])
    serial = pdns.serial()

    error = await publish_error(p, config)
    assert "refused the API key" in str(error) and "401" in str(error)
    assert not error.temporary
    assert pdns.serial() == serial and nothing_served(pdns, p)


@pytest.mark.parametrize("kind", ["rfc2136", "powerdns", "lexicon"])
async def test_provider_that_is_down_is_a_temporary_error(
    kind: str, files: Path, dkim_txts: tuple[str, str]
) -> None:
    closed = free_port()  # nothing listens there
    if kind == "rfc2136":
        provider: dict[str, Any] = {"type": "rfc2136", "server": f"127.0.0.1:{closed}"}
        provider["key_file"] = write(files, "down.key", KEY.bind_text())
    elif kind == "powerdns":
        provider = {"type": "powerdns", "url": f"http://127.0.0.1:{closed}"}
        provider["api_key_file"] = write(files, "down-api.key", "k")
    else:
        credentials = f'auth_token = "k"\npdns_server = "http://127.0.0.1:{closed}"\n'
        provider = {"type": "lexicon", "provider": "powerdns"}
        provider["credentials_file"] = write(files, "down.toml", credentials)
    config = cfg.parse({"dns": {"zones": {BASE: kind}, "providers": {kind: provider}}}).dns

    error = await publish_error(full_plan(f"marca.{BASE}", config, dkim_txts[0]), config)
    assert error.temporary
    assert f"127.0.0.1:{closed}" in str(error) and "did not answer" in str(error)


async def test_temporary_errors_are_retried_then_raised(
    files: Path, dkim_txts: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    closed = free_port()
    provider = {"type": "rfc2136", "server": f"127.0.0.1:{closed}"}
    provider["key_file"] = write(files, "down.key", KEY.bind_text())
    config = cfg.parse({"dns": {"zones": {BASE: "knot"}, "providers": {"knot": provider}}}).dns
    with pytest.raises(ProviderError) as info:
        await publish(full_plan(f"marca.{BASE}", config, dkim_txts[0]), config, (0.01, 0.01))
    assert info.value.temporary
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


async def test_zone_the_server_does_not_serve(target: Target, dkim_txts: tuple[str, str]) -> None:
    config = target.config(zone="other.example")
    p = full_plan("marca.other.example", config, dkim_txts[0])
    serial = target.server.serial()

    error = await publish_error(p, config)
    assert "does not serve zone other.example" in str(error)
    assert not error.temporary
    assert target.server.serial() == serial


async def test_bind_refuses_mx_to_an_in_zone_host_without_address_and_applies_nothing(
    bind: Bind, files: Path, dkim_txts: tuple[str, str]
) -> None:
    """BIND's check-integrity refuses the MX; the other RRsets of the same update are not
    applied either (RFC 2136 §3.7): no half-published domain."""
    target = rfc2136_target("bind", bind, files)
    config = target.config(mx_hosts=[f"10 mail.{BASE}"], **FULL)
    p = full_plan(target.domain("noaddress"), config, dkim_txts[0])
    serial = bind.serial()

    error = await publish_error(p, config)
    assert f"mail.{BASE}" in str(error) and "no address" in str(error)
    assert "mx_addresses" in str(error)
    assert bind.serial() == serial and nothing_served(bind, p)
