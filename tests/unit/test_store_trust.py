"""Threading that cannot be spoofed: the gateway's verdicts read from its own header, whether they
prove the From: address, and what place() does with a sender it cannot trust."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxdesk.store.authresults import parse, trusted_results
from mxdesk.store.compose import make_message_id
from mxdesk.store.duplicates import fingerprint
from mxdesk.store.parse import ParsedMessage
from mxdesk.store.threader import Claim, KnownMessage, KnownTicket, Placement, ThreadFacts, place
from mxdesk.store.verdicts import DkimVerdict, Verdicts, read_verdicts, sender_verified

HOST = "mx.helpdesk.example"
MAILBOX = "suporte@marca.helpdesk.example"
CUSTOMER = "cliente@cliente.example"
GENUINE = (
    f"Authentication-Results: {HOST};\r\n"
    "\tspf=pass smtp.mailfrom=cliente@cliente.example smtp.helo=mail.cliente.example;\r\n"
    "\tdkim=pass header.d=cliente.example header.s=s1 header.b=AbCd;\r\n"
    "\tdmarc=pass (p=reject dis=none) header.from=cliente.example policy.dmarc=reject;\r\n"
    "\tarc=none\r\n"
)
# Ticket 7 of tenant marca (the customer takes part); ticket 9 of another tenant.
FACTS = ThreadFacts(
    messages={
        "<orig@cliente.example>": [KnownMessage(7, "marca", MAILBOX)],
        "<other@x>": [KnownMessage(9, "outra", "contato@outra.example")],
    },
    tickets={
        7: KnownTicket("marca", frozenset({CUSTOMER})),
        9: KnownTicket("outra", frozenset({CUSTOMER})),
    },
)


def msg(**fields: object) -> ParsedMessage:
    values: dict[str, object] = {"from_addr": CUSTOMER, "subject": "Ajuda"}
    values.update(fields)
    return ParsedMessage(**values)  # type: ignore[arg-type]


def decide(m: ParsedMessage, verified: bool, facts: ThreadFacts = FACTS) -> Placement:
    return place(m, False, "marca", MAILBOX, facts, verified)


# --- place(): one test per rule -------------------------------------------------------------


def test_tag_from_a_verified_participant_joins() -> None:
    assert decide(msg(subject="Re: [#7] x"), True) == Placement(7, "subject-tag", False)


def test_tag_from_an_unverified_participant_opens_a_new_marked_ticket() -> None:
    placed = decide(msg(subject="Re: [#7] mude meu endereço"), False)
    assert placed == Placement(None, "new", False, claim=Claim(7, True, False))
    assert placed.claim is not None and placed.claim.reason == "sender not verified"


def test_tag_from_a_verified_stranger_opens_a_new_marked_ticket() -> None:
    placed = decide(msg(subject="[#7] oi", from_addr="eve@evil.example"), True)
    assert placed == Placement(None, "new", False, claim=Claim(7, False, True))
    assert placed.claim is not None and placed.claim.reason == "sender not a participant"


def test_tag_from_an_unverified_stranger_says_both() -> None:
    placed = decide(msg(subject="[#7] oi", from_addr="eve@evil.example"), False)
    assert placed.claim is not None
    assert placed.claim.reason == "sender not a participant, not verified"


def test_a_later_tag_that_passes_wins_over_an_earlier_claim() -> None:
    facts = ThreadFacts({}, {**FACTS.tickets, 3: KnownTicket("marca", frozenset({"x@y.example"}))})
    assert decide(msg(subject="[#3] [#7] x"), True, facts).ticket == 7


def test_tags_of_another_tenant_or_unknown_tickets_open_an_unmarked_ticket() -> None:
    assert decide(msg(subject="[#9] [#404] x"), True) == Placement(None, "new", False)


def test_our_macd_message_id_joins_without_a_sender_check() -> None:
    ours = make_message_id(b"k" * 32, 7, "marca.helpdesk.example")
    facts = ThreadFacts({}, FACTS.tickets, {ours: 7})
    stranger = msg(in_reply_to=ours, from_addr="eve@evil.example")
    assert decide(stranger, False, facts) == Placement(7, "message-id", False)


def test_our_stored_reply_named_by_a_stranger_joins_unmarked() -> None:
    ours = make_message_id(b"k" * 32, 7, "marca.helpdesk.example")
    facts = ThreadFacts({ours: [KnownMessage(7, "marca", MAILBOX)]}, FACTS.tickets, {ours: 7})
    stranger = msg(references=(ours,), from_addr="colega@cliente.example")
    assert decide(stranger, False, facts) == Placement(7, "reference", False)


def test_a_reference_from_a_participant_joins_unmarked_even_unverified() -> None:
    assert decide(msg(in_reply_to="<orig@cliente.example>"), False) == Placement(
        7, "reference", False
    )


def test_a_reference_from_an_unverified_stranger_joins_marked() -> None:
    stranger = msg(in_reply_to="<orig@cliente.example>", from_addr="eve@evil.example")
    assert decide(stranger, False) == Placement(7, "reference", False, unverified_sender=True)
    assert decide(stranger, True) == Placement(7, "reference", False)


def test_another_tenants_message_is_never_joined_even_verified() -> None:
    assert decide(msg(in_reply_to="<other@x>"), True) == Placement(None, "new", False)
    theirs = make_message_id(b"k" * 32, 9, "outra.helpdesk.example")
    facts = ThreadFacts({}, FACTS.tickets, {theirs: 9})
    assert decide(msg(in_reply_to=theirs), True, facts).ticket is None


# --- sender_verified(): which verdicts prove the From: address ------------------------------


def v(**fields: object) -> Verdicts:
    return Verdicts(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "sender", "verified"),
    [
        (None, CUSTOMER, False),
        (v(dmarc="pass", dmarc_from="cliente.example"), CUSTOMER, True),
        (v(dmarc="pass"), CUSTOMER, True),
        (v(dmarc="pass", dmarc_from="cliente.example"), "x@CLIENTE.example", True),
        # A DMARC fail is final, whatever DKIM says.
        (v(dmarc="fail", dkim=(DkimVerdict("pass", "cliente.example"),)), CUSTOMER, False),
        # Without a DMARC verdict: aligned DKIM, equal or a parent of the From: domain.
        (v(dkim=(DkimVerdict("pass", "cliente.example"),)), CUSTOMER, True),
        (v(dkim=(DkimVerdict("pass", "cliente.example"),)), "a@sac.cliente.example", True),
        (v(dkim=(DkimVerdict("pass", "sac.cliente.example"),)), CUSTOMER, False),
        (v(dkim=(DkimVerdict("pass", "example"),)), CUSTOMER, False),
        (v(dkim=(DkimVerdict("pass", "xcliente.example"),)), CUSTOMER, False),
        (v(dkim=(DkimVerdict("fail", "cliente.example"),)), CUSTOMER, False),
        (v(dmarc="temperror", dkim=(DkimVerdict("pass", "cliente.example"),)), CUSTOMER, True),
        # ... or an aligned SPF pass of the MAIL FROM.
        (v(spf="pass", spf_domain="cliente.example"), CUSTOMER, True),
        (v(spf="pass", spf_domain="mailer.example"), CUSTOMER, False),
        (v(spf="softfail", spf_domain="cliente.example"), CUSTOMER, False),
        # DMARC of another domain than the From: (two From: fields?) proves nothing here.
        (v(dmarc="pass", dmarc_from="evil.example"), CUSTOMER, False),
        (v(dmarc="pass"), "", False),
    ],
)
def test_sender_verified(verdicts: Verdicts | None, sender: str, verified: bool) -> None:
    assert sender_verified(verdicts, sender) is verified


# --- the trusted header ---------------------------------------------------------------------


def test_the_gateways_header_is_read_into_verdicts() -> None:
    raw = f"X-Mxdesk-Queue-Id: Q1\r\n{GENUINE}From: {CUSTOMER}\r\n\r\nbody\r\n".encode()
    found = read_verdicts(raw, HOST)
    assert found == Verdicts(
        spf="pass",
        spf_domain="cliente.example",
        dkim=(DkimVerdict("pass", "cliente.example"),),
        dmarc="pass",
        dmarc_from="cliente.example",
        dmarc_policy="reject",
        arc="none",
    )
    assert found.summary() == (
        "spf=pass dkim=pass (cliente.example) dmarc=pass (cliente.example, p=reject) arc=none"
    )
    assert Verdicts.from_json(found.to_json()) == found


def test_only_the_topmost_header_naming_our_host_counts() -> None:
    raw = (
        "Authentication-Results: relay.example; dmarc=pass header.from=cliente.example\r\n"
        f"Authentication-Results: {HOST.upper()}.; dmarc=fail header.from=cliente.example\r\n"
        f"Authentication-Results: {HOST}; dmarc=pass header.from=cliente.example\r\n"
        "Subject: x\r\n\r\n"
        f"Authentication-Results: {HOST}; dmarc=pass\r\n"
    ).encode()
    found = read_verdicts(raw, HOST)
    assert found is not None and found.dmarc == "fail"
    # The verdicts of a header are remembered by its text and the host name asked for.
    relay = read_verdicts(raw, "relay.example")
    assert relay is not None and relay.dmarc == "pass"
    assert read_verdicts(raw, "other.example") is None
    assert read_verdicts(raw, HOST) == found


def test_no_header_of_ours_means_no_verdicts() -> None:
    raw = (
        "Authentication-Results: mx.helpdesk.example.evil.example; dmarc=pass\r\n"
        f"Subject: x\r\n\r\nAuthentication-Results: {HOST}; dmarc=pass\r\n"
    ).encode()
    assert read_verdicts(raw, HOST) is None
    assert read_verdicts(b"Subject: x\r\n\r\n", HOST) is None


def test_a_header_with_no_results_gives_verdicts_of_none() -> None:
    raw = f"Authentication-Results: {HOST} 1; none\r\n\r\n".encode()
    assert read_verdicts(raw, HOST) == Verdicts()
    assert Verdicts().summary() == "spf=none dkim=none dmarc=none arc=none"


def test_quoted_strings_and_nested_comments_split_nothing() -> None:
    value = (
        f'{HOST}; spf=fail (a ";" (nested; dmarc=pass) here) smtp.mailfrom="x;dmarc=pass"'
        '; dkim=pass reason="good; sig" header.i=@Cliente.Example; dmarc = fail'
    )
    found = parse(value)
    assert found is not None
    host, results = found
    assert host == HOST
    assert [(r.method, r.result) for r in results] == [
        ("spf", "fail"),
        ("dkim", "pass"),
        ("dmarc", "fail"),
    ]
    assert results[0].prop("smtp.mailfrom") == "x;dmarc=pass"
    raw = f"Authentication-Results: {value}\r\n\r\n".encode()
    verdicts = read_verdicts(raw, HOST)
    assert verdicts is not None
    assert verdicts.dkim == (DkimVerdict("pass", "cliente.example"),)
    assert verdicts.spf_domain == ""  # "x;dmarc=pass" is no domain


@pytest.mark.parametrize(
    "value",
    ["", ";", "spf=pass", "=x; spf=pass", "(only a comment)", "host; (unclosed", 'h; a="open'],
)
def test_malformed_values_never_raise(value: str) -> None:
    parsed = parse(value)
    assert parsed is None or isinstance(parsed[1], list)
    assert trusted_results(f"Authentication-Results: {value}\r\n\r\n".encode(), HOST) is None


def test_a_huge_header_is_bounded() -> None:
    value = f"{HOST}; " + "; ".join(f"dkim=pass header.d=d{i}.example" for i in range(5000))
    verdicts = read_verdicts(f"Authentication-Results: {value}\r\n\r\n".encode(), HOST)
    assert verdicts is not None and 0 < len(verdicts.dkim) <= 8


def test_the_dmarc_policy_from_a_comment_and_bad_values_are_dropped() -> None:
    raw = (
        f"Authentication-Results: {HOST}; dmarc=FAIL (p=quarantine sp=none) header.from=A.example;"
        " spf=pass\u00e9 smtp.mailfrom=<bad domain>\r\n\r\n"
    ).encode()
    found = read_verdicts(raw, HOST)
    assert found is not None
    assert (found.dmarc, found.dmarc_from, found.dmarc_policy) == (
        "fail",
        "a.example",
        "quarantine",
    )
    assert (found.spf, found.spf_domain) == ("none", "")


def test_the_authserv_id_may_follow_a_comment_or_be_quoted() -> None:
    # The forms the gateway also treats as its own (and removes from incoming mail).
    for head in (f"(c) {HOST} (x) 1", f'"{HOST}"', f"{HOST.upper()}."):
        found = parse(f"{head}; dmarc=pass header.from=cliente.example")
        assert found is not None and found[0] == HOST


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.binary(max_size=300))
def test_any_header_value_or_message_is_read_without_raising(value: str, raw: bytes) -> None:
    parse(value)
    message = f"Authentication-Results: {HOST}; {value}\r\n".encode("utf-8", "surrogatepass")
    read_verdicts(message + raw, HOST)
    read_verdicts(raw, HOST)
    fingerprint(raw)
