"""The record plan and its text forms: what a domain needs in DNS, TXT split into strings a
server accepts and joined back the way readers do, zone-file lines a sysadmin can paste, the
RRset publish writes (keeping other TXT at the name), and the [dns] config errors."""

from __future__ import annotations

import base64
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.zone
import pytest

from mxdesk import config as cfg
from mxdesk.dns.providers import RRset
from mxdesk.dns.providers.rfc2136 import TsigKeyError, parse_key
from mxdesk.dns.publish import desired_rrset
from mxdesk.dns.records import (
    MAX_STRING,
    DkimTxt,
    Record,
    RecordPlan,
    missing_mx_addresses,
    normalise,
    plan,
    quote_txt,
    txt_strings,
    unquote_txt,
    zone_file,
)
from mxdesk.dns.settings import DnsConfig
from mxdesk.gateway.dkim import generate_key, load_key

BASE = "helpdesk.example"
DOMAIN = f"marca.{BASE}"


def dns_config(**table: Any) -> DnsConfig:
    return cfg.parse({"dns": table}).dns


def config_errors(**table: Any) -> list[str]:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({"dns": table})
    return info.value.errors


@pytest.fixture(scope="module")
def dkim_txt() -> str:
    """The TXT value of a real RSA-2048 DKIM key (about 410 bytes: two strings)."""
    return load_key(generate_key("rsa"), DOMAIN, "mx1").dns_txt()


def records_of(p: RecordPlan) -> set[tuple[str, str, str]]:
    return {(r.name, r.type, r.value) for r in p.records}


# --- the plan ---------------------------------------------------------------------------------


def test_hosted_domain_gets_mx_spf_dmarc_and_dkim_only(dkim_txt: str) -> None:
    p = plan(DOMAIN, dns_config(), [DkimTxt("mx1", dkim_txt)])
    assert p.domain == DOMAIN
    assert records_of(p) == {
        (DOMAIN, "MX", f"10 mx.{BASE}."),
        (DOMAIN, "TXT", "v=spf1 mx -all"),
        (f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=quarantine; adkim=s; aspf=s"),
        (f"mx1._domainkey.{DOMAIN}", "TXT", dkim_txt),
    }
    assert {r.ttl for r in p.records} == {3600}
    assert p.mta_sts_policy == ""


def test_every_dkim_selector_gets_its_record() -> None:
    keys = [DkimTxt("mx1", "v=DKIM1; k=rsa; p=AAAA"), DkimTxt("mx1e", "v=DKIM1; k=ed25519; p=BB")]
    p = plan(DOMAIN, dns_config(), keys)
    dkim = {(r.name, r.value) for r in p.records if r.purpose == "dkim"}
    assert dkim == {
        (f"mx1._domainkey.{DOMAIN}", "v=DKIM1; k=rsa; p=AAAA"),
        (f"mx1e._domainkey.{DOMAIN}", "v=DKIM1; k=ed25519; p=BB"),
    }


def test_dmarc_rua_tlsrpt_and_mta_sts_appear_only_when_configured() -> None:
    config = dns_config(
        dmarc_rua="mailto:dmarc@helpdesk.example",
        tlsrpt_rua="mailto:tlsrpt@helpdesk.example",
        mta_sts="enforce",
        mx_hosts=["10 mx1.helpdesk.example", "20 mx2.helpdesk.example"],
        ttl=600,
    )
    p = plan(DOMAIN, config, [])
    by_name = {(r.name, r.type): r for r in p.records}
    assert by_name[(f"_dmarc.{DOMAIN}", "TXT")].value == (
        "v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:dmarc@helpdesk.example"
    )
    assert by_name[(f"_smtp._tls.{DOMAIN}", "TXT")].value == (
        "v=TLSRPTv1; rua=mailto:tlsrpt@helpdesk.example"
    )
    sts = by_name[(f"_mta-sts.{DOMAIN}", "TXT")].value
    assert sts.startswith("v=STSv1; id=")
    policy_id = sts.split("id=")[1]
    assert policy_id.isalnum() and 1 <= len(policy_id) <= 32  # RFC 8461 §3.1
    assert p.mta_sts_policy == (
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.helpdesk.example\r\n"
        "mx: mx2.helpdesk.example\r\nmax_age: 604800\r\n"
    )
    assert {r.value for r in p.records if r.type == "MX"} == {
        "10 mx1.helpdesk.example.",
        "20 mx2.helpdesk.example.",
    }
    assert {r.ttl for r in p.records} == {600}

    # A changed policy gets a new id, so senders fetch it again (RFC 8461 §3.1).
    testing = plan(DOMAIN, dns_config(mta_sts="testing"), [])
    other = next(r.value for r in testing.records if r.name == f"_mta-sts.{DOMAIN}")
    assert other != sts

    bare = plan(DOMAIN, dns_config(), [])
    names = {r.name for r in bare.records}
    assert f"_smtp._tls.{DOMAIN}" not in names and f"_mta-sts.{DOMAIN}" not in names
    assert "rua=" not in next(r.value for r in bare.records if r.purpose == "dmarc")


def test_own_domain_gets_the_ownership_txt_when_a_token_is_given() -> None:
    p = plan("cliente.example", dns_config(), [], token="s3cr3t-token")
    assert ("_mxdesk.cliente.example", "TXT", "mxdesk-verification=s3cr3t-token") in records_of(p)
    without = plan("cliente.example", dns_config(), [])
    assert not any(r.name.startswith("_mxdesk.") for r in without.records)


def test_base_domain_gets_addresses_of_its_in_zone_mx_hosts_only() -> None:
    config = dns_config(
        mx_hosts=["10 mx.helpdesk.example", "20 mx.backup.example"],
        mx_addresses={
            "mx.helpdesk.example": ["192.0.2.10", "2001:db8::10"],
            "mx.backup.example": ["198.51.100.7"],
        },
    )
    p = plan(BASE, config, [], base=True)
    addresses = {(r.name, r.type, r.value) for r in p.records if r.type in ("A", "AAAA")}
    assert addresses == {
        ("mx.helpdesk.example", "A", "192.0.2.10"),
        ("mx.helpdesk.example", "AAAA", "2001:db8::10"),
    }
    assert not any(r.type in ("A", "AAAA") for r in plan(BASE, config, []).records)
    # A hosted subdomain is not the MX host's zone: no addresses there even with base.
    assert missing_mx_addresses(config, BASE) == []
    assert missing_mx_addresses(dns_config(), BASE) == ["mx.helpdesk.example"]


# --- TXT strings ------------------------------------------------------------------------------


def test_dkim_2048_txt_splits_into_strings_a_server_accepts(dkim_txt: str) -> None:
    assert len(dkim_txt.encode()) > MAX_STRING
    strings = txt_strings(dkim_txt)
    assert len(strings) == 2
    assert all(len(s.encode()) <= MAX_STRING for s in strings)
    assert "".join(strings) == dkim_txt
    # dnspython refuses a string over 255 bytes: these make a valid TXT rdata.
    rdata = dns.rdtypes.ANY.TXT.TXT(
        dns.rdataclass.IN, dns.rdatatype.TXT, [s.encode() for s in strings]
    )
    assert b"".join(rdata.strings).decode() == dkim_txt


@pytest.mark.parametrize(("size", "count"), [(0, 1), (1, 1), (255, 1), (256, 2), (510, 2)])
def test_txt_string_bound_is_255_bytes(size: int, count: int) -> None:
    value = "a" * size
    strings = txt_strings(value)
    assert len(strings) == count
    assert "".join(strings) == value
    assert all(len(s.encode()) <= 255 for s in strings)


@pytest.mark.parametrize("value", ["é" * 200, "a" + "€" * 100, "ab" + "😀" * 80, "x" * 254 + "ção"])
def test_multibyte_utf8_is_never_split_inside_a_character(value: str) -> None:
    strings = txt_strings(value)
    assert len(strings) >= 2
    assert "".join(strings) == value
    for s in strings:
        raw = s.encode()
        assert 0 < len(raw) <= 255
        raw.decode("utf-8", "strict")  # every string is whole UTF-8 on its own


@pytest.mark.parametrize(
    "value",
    [
        'say "hi"',
        "back\\slash",
        '\\"both\\"',
        "v=spf1 mx -all",
        "café; ação",
        '"' * 300,
        "\\" * 300,
    ],
)
def test_quote_and_unquote_round_trip(value: str) -> None:
    quoted = quote_txt(value)
    assert unquote_txt(quoted) == value
    # A DNS parser reads the same value from the quoted form …
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, quoted)
    assert b"".join(rdata.strings).decode() == value
    # … and what a server prints back (dnspython writes \DDD for non-ASCII) unquotes to it.
    assert unquote_txt(rdata.to_text()) == value


def test_unquote_takes_several_strings_and_plain_content() -> None:
    assert unquote_txt('"v=DKIM1; k=rsa; " "p=ABC"') == "v=DKIM1; k=rsa; p=ABC"
    assert unquote_txt("v=spf1 mx -all") == "v=spf1 mx -all"


# --- the zone file ----------------------------------------------------------------------------


@pytest.mark.parametrize("base", [False, True])
def test_zone_file_lines_parse_back_to_every_record(dkim_txt: str, base: bool) -> None:
    config = dns_config(
        dmarc_rua="mailto:dmarc@helpdesk.example",
        tlsrpt_rua="mailto:tls@helpdesk.example",
        mta_sts="testing",
        mx_addresses={"mx.helpdesk.example": ["192.0.2.10", "2001:db8::10"]},
    )
    domain = BASE if base else DOMAIN
    p = plan(domain, config, [DkimTxt("mx1", dkim_txt)], token="tok123", base=base)
    text = zone_file(p)
    zone = dns.zone.from_text(text, origin=f"{BASE}.", relativize=False, check_origin=False)
    parsed = set()
    for name, rdataset in zone.iterate_rdatasets():
        for rdata in rdataset:
            if rdataset.rdtype == dns.rdatatype.TXT:
                value = b"".join(rdata.strings).decode()
            else:
                value = rdata.to_text()
            rtype = dns.rdatatype.to_text(rdataset.rdtype)
            parsed.add((name.to_text(omit_final_dot=True), rtype, value, rdataset.ttl))
    assert parsed == {(r.name, r.type, r.value, r.ttl) for r in p.records}
    assert any(r.type == "A" for r in p.records) is base


# --- the RRset publish writes -----------------------------------------------------------------


def spf_record(value: str = "v=spf1 mx -all") -> Record:
    return Record(DOMAIN, "TXT", value, "spf", 3600)


def test_desired_rrset_keeps_a_foreign_txt_next_to_spf() -> None:
    site = "google-site-verification=abc123"
    current = RRset(DOMAIN, "TXT", 300, (site, "v=spf1 a -all"))
    wanted = desired_rrset([spf_record()], current)
    assert wanted is not None
    assert sorted(wanted.values) == sorted([site, "v=spf1 mx -all"])
    assert (wanted.name, wanted.type, wanted.ttl) == (DOMAIN, "TXT", 3600)

    # Nothing to change: None, whatever the order or the spacing the provider shows.
    for served in [("v=spf1 mx -all", site), (site, "v=spf1  mx -all")]:
        assert desired_rrset([spf_record()], RRset(DOMAIN, "TXT", 300, served)) is None


def test_desired_rrset_creates_when_nothing_is_there() -> None:
    wanted = desired_rrset([spf_record()], None)
    assert wanted == RRset(DOMAIN, "TXT", 3600, ("v=spf1 mx -all",))


def test_desired_rrset_replaces_every_old_dkim_value_and_all_mx() -> None:
    dkim = Record(f"mx1._domainkey.{DOMAIN}", "TXT", "v=DKIM1; k=rsa; p=NEW", "dkim", 3600)
    old = RRset(dkim.name, "TXT", 3600, ("v=DKIM1; k=rsa; p=OLD", "stray"))
    assert desired_rrset([dkim], old) == RRset(dkim.name, "TXT", 3600, (dkim.value,))
    same = RRset(dkim.name, "TXT", 3600, ("v=DKIM1;k=rsa;p=NEW",))
    assert desired_rrset([dkim], same) is None

    mx = Record(DOMAIN, "MX", f"10 mx.{BASE}.", "mx", 3600)
    current = RRset(DOMAIN, "MX", 3600, ("10 MX.helpdesk.example.", "20 old.example."))
    assert desired_rrset([mx], current) == RRset(DOMAIN, "MX", 3600, (mx.value,))
    assert desired_rrset([mx], RRset(DOMAIN, "MX", 3600, ("10 MX.Helpdesk.Example",))) is None


def test_normalise_ignores_spacing_around_semicolons_and_name_case() -> None:
    assert normalise("TXT", "v=DKIM1; k=rsa; p=X") == normalise("TXT", "v=DKIM1;k=rsa;p=X")
    assert normalise("TXT", "v=DKIM1 ;  k=rsa;p=X;") == normalise("TXT", "v=DKIM1;k=rsa;p=X")
    assert normalise("TXT", "p=X") != normalise("TXT", "p=x")  # base64 is case-sensitive
    assert normalise("MX", "10 MX.Helpdesk.Example.") == normalise("MX", "10 mx.helpdesk.example")
    assert Record(DOMAIN, "TXT", "v=DKIM1; k=rsa; p=X", "dkim", 60).same("v=DKIM1;k=rsa;p=X")


# --- [dns] config errors ----------------------------------------------------------------------


def test_zone_naming_an_unknown_provider_is_an_error() -> None:
    errors = config_errors(
        zones={BASE: "cloudflare"},
        providers={"knot": {"type": "rfc2136", "server": "127.0.0.1:53", "key_file": "/k"}},
    )
    assert errors == [
        "dns.zones.helpdesk.example: 'cloudflare' is not a provider in [dns.providers]"
        " (configured: knot)"
    ]


def test_rfc2136_provider_needs_a_server() -> None:
    errors = config_errors(providers={"knot": {"type": "rfc2136", "key_file": "/etc/k.key"}})
    assert errors == ["dns.providers.knot.server: required for a rfc2136 provider"]


def test_a_provider_without_its_secret_is_an_error() -> None:
    errors = config_errors(providers={"knot": {"type": "rfc2136", "server": "127.0.0.1:53"}})
    assert errors == ["dns.providers.knot: set key_file (or key_credential, a systemd credential)"]
    pdns = {"type": "powerdns", "url": "http://127.0.0.1:8081", "api_key_credential": "k"}
    assert cfg.parse({"dns": {"providers": {"p": pdns}}}).dns.providers[0].type == "powerdns"


def test_unknown_provider_type_and_option_are_errors() -> None:
    errors = config_errors(providers={"x": {"type": "route66"}})
    assert len(errors) == 1 and "dns.providers.x.type: 'route66' is not one of" in errors[0]
    errors = config_errors(providers={"k": {"type": "rfc2136", "server": "::1", "port": 53}})
    assert any("dns.providers.k.port" in e for e in errors)


@pytest.mark.parametrize(
    "mx_hosts", [["mx"], ["high mx.helpdesk.example"], ["10 mx..helpdesk.example"], "mx.h.e"]
)
def test_bad_mx_hosts_are_errors(mx_hosts: Any) -> None:
    errors = config_errors(mx_hosts=mx_hosts)
    assert len(errors) == 1 and errors[0].startswith("dns.mx_hosts: ")


def test_mx_hosts_with_priorities_are_read() -> None:
    config = dns_config(mx_hosts=["5 MX1.helpdesk.example.", "mx2.helpdesk.example"])
    assert config.mx_hosts == ((5, "mx1.helpdesk.example"), (10, "mx2.helpdesk.example"))


def test_mx_addresses_must_be_ip_addresses() -> None:
    errors = config_errors(mx_addresses={"mx.helpdesk.example": ["192.0.2.300", "mx.example"]})
    assert errors == [
        "dns.mx_addresses.mx.helpdesk.example: '192.0.2.300' is not an IPv4 or IPv6 address",
        "dns.mx_addresses.mx.helpdesk.example: 'mx.example' is not an IPv4 or IPv6 address",
    ]
    # Written as servers print them, so a check compares like with like.
    config = dns_config(mx_addresses={"mx.helpdesk.example": ["2001:DB8:0:0::10"]})
    assert config.mx_addresses == (("mx.helpdesk.example", ("2001:db8::10",)),)


# --- TSIG key files ---------------------------------------------------------------------------

KEYGEN = """key "mxdesk-key" {
\talgorithm hmac-sha256;
\tsecret "LMMvacRnjVeWcUwIMAQW8dem406A6JPOdkO6EOvH5SA=";
};
"""


def test_parse_key_reads_tsig_keygen_output() -> None:
    key = parse_key(KEYGEN)
    assert key.name.to_text() == "mxdesk-key."
    assert key.algorithm.to_text() == "hmac-sha256."
    assert key.secret == base64.b64decode("LMMvacRnjVeWcUwIMAQW8dem406A6JPOdkO6EOvH5SA=")


def test_parse_key_skips_comments() -> None:
    text = (
        "# made with tsig-keygen -a hmac-sha512 other\n"
        '// key "decoy" { secret "AAAA"; };\n'
        "/* a block\n   comment */\n"
        'key "other" { algorithm hmac-sha512; # the algorithm\n'
        ' secret "c2VjcmV0"; // the secret\n};\n'
    )
    key = parse_key(text)
    assert key.name.to_text() == "other."
    assert key.algorithm.to_text() == "hmac-sha512."
    assert key.secret == b"secret"


def test_parse_key_keeps_a_secret_holding_slashes() -> None:
    # Base64 has '/': a secret with "//" is not the start of a comment.
    text = 'key "k" {\n\talgorithm hmac-sha256;\n\tsecret "ab//cd8=";\n};\n'
    assert parse_key(text).secret == base64.b64decode("ab//cd8=")


def test_parse_key_without_algorithm_uses_hmac_sha256() -> None:
    key = parse_key('key k { secret "c2VjcmV0"; };')
    assert key.algorithm.to_text() == "hmac-sha256."


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "expected key"),
        ("this is not a key file", "expected key"),
        ("LMMvacRnjVeWcUwIMAQW8dem406A6JPOdkO6EOvH5SA=", "expected key"),
        ('key "k" { algorithm hmac-sha256; };', "has no secret"),
        ('key "k" { algorithm hmac-sha256; secret "not base64!"; };', "key 'k'"),
        ('key "k" { algorithm hmac-nope; secret "c2VjcmV0"; };', "key 'k'"),
    ],
)
def test_parse_key_errors_on_garbage(text: str, words: str) -> None:
    with pytest.raises(TsigKeyError, match=words):
        parse_key(text)


def test_a_zone_given_to_manual_has_no_publisher() -> None:
    """Its records are printed by `domain add` and left to a person, like an unlisted zone's."""
    dns = cfg.parse({"dns": {"zones": {"marca.com.br": "manual"}}}).dns
    assert dns.zone_of("_dmarc.marca.com.br") == ("marca.com.br", None)
    assert dns.zone_of("outra.example") == ("", None)
