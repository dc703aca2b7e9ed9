"""The Authentication-Results header built from plain verdicts, ours removed from incoming mail,
and the DMARC and policy decisions with plain values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from authres import AuthenticationResultsHeader, all_features

from mxdesk.config import InboundAuthConfig
from mxdesk.gateway import dmarc
from mxdesk.gateway.authresults import authserv_id, build, header_fields, strip_ours
from mxdesk.gateway.dmarc import DmarcRecord, DmarcResult, Identifier
from mxdesk.gateway.inboundauth import (
    R451_AUTH_TEMP,
    R550_DMARC_REJECT,
    R550_SPF_FAIL,
    refusal,
)
from mxdesk.gateway.verdictdns import TempDnsError
from mxdesk.gateway.verdicts import (
    MAX_FROM_DOMAINS,
    ArcVerdict,
    DkimVerdict,
    SpfVerdict,
    Verdicts,
    check_dmarc,
    from_domains,
)

HOST = "mx.helpdesk.example"
BODY = b"\r\nAuthentication-Results: mx.helpdesk.example; dmarc=pass\r\nOla\r\n"

PASSING = Verdicts(
    SpfVerdict("pass", "cliente.example", "cliente.example", "mta.cliente.example"),
    (
        DkimVerdict("pass", "cliente.example", "s1", "rsa-sha256", "AbCd0123"),
        DkimVerdict(
            "fail", "esp.example", "k/2", "ed25519-sha256", None, "body hash did not verify"
        ),
    ),
    DmarcResult("pass", "cliente.example", "reject"),
    ArcVerdict("none"),
)


def _parse(header: bytes) -> AuthenticationResultsHeader:
    unfolded = header.decode().replace("\r\n", "")
    header: AuthenticationResultsHeader = all_features().parse(unfolded)
    return header


def test_one_header_with_every_result_in_rfc8601_syntax() -> None:
    header = build(HOST, PASSING)
    assert header.startswith(b"Authentication-Results: mx.helpdesk.example;\r\n\t")
    assert header.endswith(b"\r\n") and b"\r\n\r\n" not in header
    lines = header.split(b"\r\n")[:-1]
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:])  # folded, one field
    parsed = _parse(header)
    assert parsed.authserv_id == HOST
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dkim", "fail"),
        ("dmarc", "pass"),
        ("arc", "none"),
    ]
    spf, dkim1, dkim2, dmarc_r, _ = parsed.results
    assert spf.smtp_mailfrom == "cliente.example"
    assert (dkim1.header_d, dkim1.header_s, dkim1.header_a) == (
        "cliente.example",
        "s1",
        "rsa-sha256",
    )
    assert b"header.b=AbCd0123" in header
    assert dkim2.header_d == "esp.example" and dkim2.reason == "body hash did not verify"
    assert b'header.s="k/2"' in header  # a value that is not a token is quoted
    assert (dmarc_r.header_from, dmarc_r.policy) == ("cliente.example", "reject")


def test_a_remembered_header_is_the_one_for_these_verdicts() -> None:
    """The header is kept for verdicts seen before: equal verdicts give it back (the log's
    detail does not count), different ones and another host name give their own."""
    again = replace(PASSING, spf=replace(PASSING.spf, detail="another detail"))
    assert build(HOST, again) is build(HOST, PASSING)
    other = replace(PASSING, spf=replace(PASSING.spf, result="softfail"))
    assert b"spf=softfail" in build(HOST, other) and b"spf=pass" in build(HOST, PASSING)
    assert build("mx2.helpdesk.example", PASSING).startswith(
        b"Authentication-Results: mx2.helpdesk.example;"
    )


def test_null_sender_names_the_helo_identity_and_missing_parts_say_none() -> None:
    verdicts = Verdicts(
        SpfVerdict("softfail", "mta.cliente.example", None, "mta.cliente.example"),
        (),
        DmarcResult("none", "cliente.example"),
        None,
    )
    header = build(HOST, verdicts)
    parsed = _parse(header)
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "softfail"),
        ("dkim", "none"),
        ("dmarc", "none"),
    ]
    assert parsed.results[0].smtp_helo == "mta.cliente.example"
    assert b"smtp.mailfrom" not in header and b"\tarc=" not in header  # arc not evaluated


def test_quarantine_is_flagged_in_the_header() -> None:
    verdicts = Verdicts(
        SpfVerdict("fail", "x.example", "x.example"),
        (),
        DmarcResult("fail", "x.example", "quarantine"),
        ArcVerdict("none"),
    )
    assert b"dmarc=fail header.from=x.example policy.dmarc=quarantine" in build(HOST, verdicts)


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.helpdesk.example; dmarc=pass header.from=bank.example\r\n",
        b"authentication-results: MX.HELPDESK.EXAMPLE; dkim=pass\r\n",
        b"Authentication-Results: (trust me) mx.helpdesk.example (really) 1; spf=pass\r\n",
        b'Authentication-Results: "mx.helpdesk.example"; dmarc=pass\r\n',
        b"Authentication-Results: mx.helpdesk.example.; dmarc=pass\r\n",
        b"Authentication-Results:\r\n\tmx.helpdesk.example;\r\n\tdmarc=pass\r\n",
        b"Authentication-Results : mx.helpdesk.example; dmarc=pass\r\n",
        b"Authentication-Results: mx.helpdesk.example\r\n",
        # Too broken to read its authserv-id: a lenient reader could still take it for ours.
        b"Authentication-Results: (unclosed mx.helpdesk.example; dmarc=pass\r\n",
        b"Authentication-Results:\r\n",
    ],
)
def test_a_field_claiming_our_name_is_removed(field: bytes) -> None:
    message = b"Received: from a\r\n" + field + b"From: x@bank.example\r\n" + BODY
    assert strip_ours(message, HOST) == b"Received: from a\r\nFrom: x@bank.example\r\n" + BODY


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.google.example; dkim=pass\r\n",
        b"Authentication-Results: mx.helpdesk.example.evil.example; dmarc=pass\r\n",
        b"Authentication-Results: evil-mx.helpdesk.example; dmarc=pass\r\n",
        b"ARC-Authentication-Results: i=1; mx.helpdesk.example; dmarc=pass\r\n",
        b"X-Authentication-Results: mx.helpdesk.example; dmarc=pass\r\n",
    ],
)
def test_fields_of_others_stay_byte_for_byte(field: bytes) -> None:
    message = b"Received: from a\r\n" + field + b"From: x@bank.example\r\n" + BODY
    assert strip_ours(message, HOST) is message


def test_stripping_works_with_bare_lf_and_keeps_the_body() -> None:
    message = (
        b"From: x@bank.example\n"
        b"Authentication-Results: mx.helpdesk.example;\n dmarc=pass\n"
        b"Authentication-Results: other.example; spf=pass\n"
        b"\nAuthentication-Results: mx.helpdesk.example; body line\n"
    )
    assert strip_ours(message, HOST) == (
        b"From: x@bank.example\n"
        b"Authentication-Results: other.example; spf=pass\n"
        b"\nAuthentication-Results: mx.helpdesk.example; body line\n"
    )


def test_every_forged_field_goes_not_only_the_first() -> None:
    forged = b"Authentication-Results: mx.helpdesk.example; dmarc=pass\r\n"
    message = forged * 3 + b"Subject: x\r\n" + forged + BODY
    assert strip_ours(message, HOST) == b"Subject: x\r\n" + BODY


def test_header_fields_split_with_continuations() -> None:
    message = b"A: 1\r\n 2\r\nB: 3\r\n\r\nbody\r\n"
    fields, rest = header_fields(message)
    assert fields == [b"A: 1\r\n 2\r\n", b"B: 3\r\n"]
    assert message[rest:] == b"\r\nbody\r\n"
    assert header_fields(b"A: 1\r\nB: 2") == ([b"A: 1\r\n", b"B: 2"], 10)


@pytest.mark.parametrize(
    ("value", "ident"),
    [
        (" mx.example; spf=pass", "mx.example"),
        ("(c (nested) \\) c) MX.Example 1; none", "mx.example"),
        ('"mx.exa\\mple" ; none', "mx.example"),
        ("; spf=pass", None),
        ("(open", None),
    ],
)
def test_authserv_id(value: str, ident: str | None) -> None:
    assert authserv_id(value) == ident


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("v=DMARC1; p=reject", DmarcRecord("reject", "reject")),
        (
            "v=DMARC1;p=none;sp=quarantine;adkim=s;aspf=s;pct=50",
            DmarcRecord("none", "quarantine", "s", "s", 50),
        ),
        ("v=DMARC1; p=Reject; pct=500; sp=bogus", DmarcRecord("reject", "reject")),
        ("v=DMARC1; p=bogus; rua=mailto:d@example.com", DmarcRecord("none", "none")),
        ("v=DMARC1; p=bogus", None),
        ("v=DMARC1", None),
        ("p=reject; v=DMARC1", None),
        ("v=spf1 -all", None),
    ],
)
def test_dmarc_record(text: str, record: DmarcRecord | None) -> None:
    assert dmarc.parse_record(text) == record


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("a.b.cliente.co.uk", "cliente.co.uk"),
        ("MAIL.Cliente.COM", "cliente.com"),
        ("mail.cliente.example", "cliente.example"),  # a TLD the list does not know
        ("user.github.io", "user.github.io"),  # the list's private part
        ("co.uk", "co.uk"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert dmarc.org_domain(domain) == org


def test_alignment_relaxed_and_strict() -> None:
    assert dmarc.aligned("bounce.cliente.example", "cliente.example", strict=False)
    assert not dmarc.aligned("bounce.cliente.example", "cliente.example", strict=True)
    assert dmarc.aligned("Cliente.Example.", "cliente.example", strict=True)
    assert not dmarc.aligned("cliente.co.uk", "outro.co.uk", strict=False)


def _txt(records: dict[str, list[str]]) -> Callable[[str], list[bytes]]:
    def txt(name: str) -> list[bytes]:
        found = records.get(name)
        if found == ["TEMP"]:
            raise TempDnsError(name)
        return [r.encode() for r in found or []]

    return txt


def finder(
    txt: Callable[[str], list[bytes]],
) -> Callable[[str], tuple[DmarcRecord, str] | None]:
    return lambda domain: dmarc.discover(domain, txt)


def test_policy_discovery_falls_back_to_the_organizational_domain() -> None:
    txt = _txt({"_dmarc.cliente.example": ["v=DMARC1; p=none; sp=reject", "unrelated"]})
    assert dmarc.discover("news.cliente.example", txt) == (
        DmarcRecord("none", "reject"),
        "cliente.example",
    )
    spf = Identifier("fail", "news.cliente.example")
    result = dmarc.check(["news.cliente.example"], finder(txt), spf, [])
    assert result == DmarcResult("fail", "news.cliente.example", "reject")  # sp= applies
    # Two DMARC records: no policy (RFC 7489 §6.6.3 step 5).
    two = _txt({"_dmarc.cliente.example": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]})
    assert dmarc.discover("cliente.example", two) is None


def test_dmarc_passes_with_one_aligned_pass_and_never_fails_on_a_temporary_error() -> None:
    record = DmarcRecord("reject", "reject")
    ok = dmarc.evaluate(
        "c.example",
        record,
        "c.example",
        Identifier("fail", "c.example"),
        [Identifier("pass", "mail.c.example")],
    )
    assert ok.result == "pass"
    unaligned = dmarc.evaluate(
        "c.example",
        record,
        "c.example",
        Identifier("pass", "esp.example"),
        [Identifier("pass", "esp.example")],
    )
    assert unaligned == DmarcResult("fail", "c.example", "reject")
    strict = DmarcRecord("reject", "reject", adkim="s", aspf="s")
    assert (
        dmarc.evaluate(
            "c.example", strict, "c.example", Identifier("pass", "b.c.example"), []
        ).result
        == "fail"
    )
    pending = dmarc.evaluate(
        "c.example", record, "c.example", None, [Identifier("temperror", "c.example")]
    )
    assert pending.result == "temperror"
    # pct=0: no message is sampled, the next lesser policy applies (§6.6.4).
    sampled = dmarc.evaluate(
        "c.example", DmarcRecord("reject", "reject", pct=0), "c.example", None, []
    )
    assert sampled == DmarcResult("fail", "c.example", "quarantine")


def test_dmarc_lookup_failing_for_now_is_temperror() -> None:
    txt = _txt({"_dmarc.c.example": ["TEMP"]})
    result = dmarc.check(["c.example"], finder(txt), None, [])
    assert result == DmarcResult("temperror", "c.example")


def test_several_from_domains_give_the_worst_result() -> None:
    txt = _txt(
        {"_dmarc.good.example": ["v=DMARC1; p=none"], "_dmarc.bank.example": ["v=DMARC1; p=reject"]}
    )
    spf = Identifier("pass", "good.example")
    result = dmarc.check(["good.example", "bank.example"], finder(txt), spf, [])
    assert result == DmarcResult("fail", "bank.example", "reject")


def _fields(*lines: bytes) -> list[bytes]:
    return header_fields(b"".join(lines) + b"\r\n")[0]


def test_from_domains() -> None:
    assert from_domains(_fields(b"From: Ana <ana@Cliente.Example>\r\n")) == (
        ["cliente.example"],
        None,
    )
    assert from_domains(
        _fields(b"From: a@x.example, b@y.example\r\n", b"From: c@x.example\r\n")
    ) == (
        ["x.example", "y.example"],
        None,
    )
    assert from_domains(_fields(b"From: =?utf-8?q?x?= <a@b\xc3\xbccher.example>\r\n"))[0] == [
        "xn--bcher-kva.example"
    ]
    assert from_domains(_fields(b"Subject: x\r\n")) == ([], "no From address")
    assert (
        from_domains(_fields(b"From: a@[192.0.2.1]\r\n"))[1] == "a From address has no valid domain"
    )


class _Lookups:
    def __init__(self, records: dict[str, list[str]]) -> None:
        self.txt = _txt(records)

    def remembered(self, key: object, compute: Callable[[], Any], keep: object = None) -> Any:
        return compute()


def test_from_domains_at_the_bound() -> None:
    spf = SpfVerdict("none")
    names = [f"d{i}.example" for i in range(MAX_FROM_DOMAINS + 1)]
    records = {f"_dmarc.{n}": ["v=DMARC1; p=none"] for n in names}
    at_bound = _fields(b"From: " + b", ".join(f"a@{n}".encode() for n in names[:-1]) + b"\r\n")
    assert check_dmarc(at_bound, spf, [], _Lookups(records))[0].result == "fail"
    over = _fields(b"From: " + b", ".join(f"a@{n}".encode() for n in names) + b"\r\n")
    result, reason = check_dmarc(over, spf, [], _Lookups(records))
    assert (result.result, reason) == ("fail", "too many From domains")
    # The first domains pass or have no policy: the one not looked up still keeps it from pass.
    passing = SpfVerdict("pass", "d0.example")
    lone = {f"_dmarc.{n}": [] for n in names} | {"_dmarc.d0.example": ["v=DMARC1; p=none"]}
    assert check_dmarc(over, passing, [], _Lookups(lone))[0].result == "permerror"


def _verdicts(
    spf: str = "pass", dmarc_result: str = "pass", policy: str | None = "reject", dkim: str = "pass"
) -> Verdicts:
    return Verdicts(
        SpfVerdict(spf, "c.example"),
        (DkimVerdict(dkim, "c.example"),),
        DmarcResult(dmarc_result, "c.example", policy),
        ArcVerdict("none"),
    )


@pytest.mark.parametrize(
    ("config", "verdicts", "reply"),
    [
        (InboundAuthConfig(), _verdicts(), None),
        (InboundAuthConfig(), _verdicts("fail", "fail", "reject", "fail"), R550_DMARC_REJECT),
        (InboundAuthConfig(dmarc_reject=False), _verdicts("fail", "fail", "reject", "fail"), None),
        (InboundAuthConfig(), _verdicts("fail", "fail", "quarantine", "fail"), None),
        (InboundAuthConfig(), _verdicts("fail", "pass", "reject"), None),
        (InboundAuthConfig(spf_fail="reject"), _verdicts("fail", "pass"), R550_SPF_FAIL),
        (InboundAuthConfig(spf_fail="reject"), _verdicts("softfail", "none", None), None),
        (InboundAuthConfig(), _verdicts("temperror", "temperror", "reject", "temperror"), None),
        (
            InboundAuthConfig(temperror="defer"),
            _verdicts("temperror", "temperror", None, "temperror"),
            R451_AUTH_TEMP,
        ),
        (
            InboundAuthConfig(temperror="defer"),
            _verdicts("pass", "none", None, "temperror"),
            R451_AUTH_TEMP,
        ),
        # Already authenticated: a retry could change nothing that matters.
        (InboundAuthConfig(temperror="defer"), _verdicts("temperror", "pass"), None),
    ],
)
def test_policy(config: InboundAuthConfig, verdicts: Verdicts, reply: str | None) -> None:
    assert refusal(config, verdicts) == reply


def test_the_public_suffix_list_is_read_once_by_threads_that_ask_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time

    real = dmarc.PublicSuffixList
    made: list[object] = []

    def slow(text: Any) -> Any:
        time.sleep(0.05)  # the others ask while it is being read
        made.append(real(text))
        return made[-1]

    monkeypatch.setattr(dmarc, "PublicSuffixList", slow)
    monkeypatch.setattr(dmarc, "_suffix_list", None)
    threads = [threading.Thread(target=dmarc.preload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    assert dmarc._suffixes() is made[0]
