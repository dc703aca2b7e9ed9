"""Threading decisions on plain values: references, [#N] tags, tenants, automatic mail."""

from __future__ import annotations

import pytest

from mxdesk.store.parse import ParsedMessage
from mxdesk.store.threader import (
    KnownMessage,
    KnownTicket,
    Placement,
    ThreadFacts,
    is_automatic,
    participants_of,
    place,
    subject_tags,
)

MAILBOX = "suporte@marca.example"
# Ticket 7 of tenant marca holds <orig@x>; ticket 9 of tenant outra holds <other@x>.
FACTS = ThreadFacts(
    messages={
        "<orig@x>": [KnownMessage(7, "marca", MAILBOX)],
        "<other@x>": [KnownMessage(9, "outra", "contato@outra.example")],
        "<older@x>": [KnownMessage(5, "marca", MAILBOX)],
    },
    tickets={
        7: KnownTicket("marca", frozenset({"cliente@example.com"})),
        9: KnownTicket("outra", frozenset({"cliente@example.com"})),
    },
)


def msg(**fields: object) -> ParsedMessage:
    values: dict[str, object] = {"from_addr": "cliente@example.com", "subject": "Ajuda"}
    values.update(fields)
    return ParsedMessage(**values)  # type: ignore[arg-type]


def decide(
    m: ParsedMessage, sender: str = "cliente@example.com", verified: bool = False
) -> Placement:
    return place(m, is_automatic(m, sender), "marca", MAILBOX, FACTS, verified)


def test_in_reply_to_joins() -> None:
    assert decide(msg(in_reply_to="<orig@x>")) == Placement(7, "reference", False)


def test_references_join_and_the_newest_reference_wins() -> None:
    assert decide(msg(references=("<unknown@x>", "<orig@x>"))).ticket == 7
    assert decide(msg(references=("<orig@x>", "<older@x>"))).ticket == 5


def test_in_reply_to_comes_before_references() -> None:
    assert decide(msg(in_reply_to="<older@x>", references=("<orig@x>",))).ticket == 5


def test_subject_tag_from_a_verified_participant_joins() -> None:
    tagged = msg(subject="Re: [#7] Ajuda")
    assert decide(tagged, verified=True) == Placement(7, "subject-tag", False)


def test_subject_tag_from_a_stranger_opens_a_new_ticket() -> None:
    stranger = msg(subject="Re: [#7] Ajuda", from_addr="intruso@example.net")
    placed = decide(stranger, "intruso@example.net", verified=True)
    assert (placed.ticket, placed.rule) == (None, "new")


def test_subject_tag_of_an_unknown_ticket_opens_a_new_ticket() -> None:
    assert decide(msg(subject="[#12345] ?")).ticket is None


def test_another_tenants_ticket_is_never_joined() -> None:
    assert decide(msg(in_reply_to="<other@x>")).ticket is None
    assert decide(msg(references=("<other@x>",))).ticket is None
    # The sender is a participant of ticket 9, but ticket 9 belongs to another tenant.
    assert decide(msg(subject="[#9] oi"), verified=True) == Placement(None, "new", False)


def test_same_message_id_in_two_tenants_joins_only_ours() -> None:
    facts = ThreadFacts(
        messages={"<m@x>": [KnownMessage(3, "outra", "c@o"), KnownMessage(4, "marca", "x@m")]},
        tickets={},
    )
    assert place(msg(in_reply_to="<m@x>"), False, "marca", MAILBOX, facts).ticket == 4


def test_auto_reply_joins_flagged() -> None:
    ooo = msg(in_reply_to="<orig@x>", auto_submitted="auto-replied; owner-email=x")
    assert decide(ooo) == Placement(7, "reference", True)


@pytest.mark.parametrize(
    ("fields", "sender", "automatic"),
    [
        ({"auto_submitted": "auto-generated"}, "x@example.com", True),
        ({"auto_submitted": "no"}, "x@example.com", False),
        ({"auto_submitted": "No ; comment"}, "x@example.com", False),
        ({"auto_submitted": "no (a person wrote this)"}, "x@example.com", False),
        ({"auto_submitted": "Auto-Replied"}, "x@example.com", True),
        ({"precedence": "Bulk"}, "x@example.com", True),
        ({"precedence": "bulk"}, "x@example.com", True),
        ({"precedence": "junk"}, "x@example.com", True),
        ({"precedence": "list"}, "x@example.com", True),
        ({"precedence": "first-class"}, "x@example.com", False),
        ({}, "", True),
        ({"content_type": "multipart/report"}, "x@example.com", True),
        ({}, "x@example.com", False),
    ],
)
def test_automatic_mail(fields: dict[str, str], sender: str, automatic: bool) -> None:
    assert is_automatic(msg(**fields), sender) is automatic


def test_delivery_report_joins_through_the_copy_of_the_original() -> None:
    dsn = msg(content_type="multipart/report", report_refs=("<orig@x>",), subject="failure")
    assert decide(dsn, "") == Placement(7, "reference", True)


def test_report_refs_count_only_for_automatic_mail() -> None:
    human = msg(report_refs=("<orig@x>",))
    assert decide(human).ticket is None


def test_automatic_mail_naming_nothing_known_opens_a_new_flagged_ticket() -> None:
    bounce = msg(content_type="multipart/report", report_refs=("<nowhere@x>",))
    assert decide(bounce, "") == Placement(None, "new", True)


def test_subject_tags() -> None:
    assert subject_tags("Re: [#12] and [#3] [#12] [# 4] [#x]") == [12, 3]
    assert subject_tags("[#" + "9" * 10 + "]") == []


@pytest.mark.parametrize(("unknown", "joined"), [(4, True), (5, False)])
def test_a_tag_joins_only_among_the_first_five_tags(unknown: int, joined: bool) -> None:
    """MAX_TAGS: tags of tickets that do not exist come first; ticket 7's tag still joins as
    the fifth tag of the subject, as the sixth it is not looked at and a ticket opens."""
    others = " ".join(f"[#{n}]" for n in range(1000, 1000 + unknown))
    tagged = msg(subject=f"Re: {others} [#7] Ajuda")
    placed = decide(tagged, verified=True)
    assert (placed.ticket, placed.rule) == ((7, "subject-tag") if joined else (None, "new"))


@pytest.mark.parametrize(("people", "left_out"), [(50, 0), (51, 1)])
def test_a_message_adds_at_most_fifty_participants(people: int, left_out: int) -> None:
    """MAX_NEW_PARTICIPANTS: the sender and the addressees in order, fifty at most."""
    to = tuple(f"p{n}@example.com" for n in range(1, people))
    everyone = [("cliente@example.com", "from")] + [(a, "to") for a in to]
    added = participants_of(msg(to_addrs=to), MAILBOX, automatic=False)
    assert added == everyone[: people - left_out]


def test_participants_of_human_mail() -> None:
    m = msg(
        to_addrs=(MAILBOX, "ana@example.com"),
        cc_addrs=("suporte+abc@marca.example", "cliente@example.com", "bia@example.com"),
    )
    assert participants_of(m, MAILBOX, automatic=False) == [
        ("cliente@example.com", "from"),
        ("ana@example.com", "to"),
        ("bia@example.com", "cc"),
    ]
    assert participants_of(m, MAILBOX, automatic=True) == []


def test_our_signed_message_id_joins_its_ticket_when_the_message_is_not_stored() -> None:
    from mxdesk.store.compose import make_message_id

    ours = make_message_id(b"k" * 32, 7, "marca.helpdesk.example")
    reply = msg(subject="Re: x", in_reply_to=ours)
    mine = ThreadFacts({}, {7: KnownTicket("marca", frozenset())}, {ours: 7})
    assert place(reply, False, "marca", MAILBOX, mine) == Placement(7, "message-id", False)
    theirs = ThreadFacts({}, {7: KnownTicket("outra", frozenset())}, {ours: 7})
    assert place(reply, False, "marca", MAILBOX, theirs).ticket is None
