"""Threading: which ticket a parsed message joins, decided from plain values."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mxdesk.store.parse import ParsedMessage

AUTOMATIC_PRECEDENCE = frozenset({"bulk", "junk", "list"})
MAX_TAGS = 5
MAX_NEW_PARTICIPANTS = 50
_TAG = re.compile(r"\[#(\d{1,9})\]")
_COMMENT = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class KnownMessage:
    """A stored message found under a Message-ID the new message names."""

    ticket: int
    tenant: str
    mailbox: str


@dataclass(frozen=True)
class KnownTicket:
    """A ticket a message could join (named by a tag, a reference or one of our Message-IDs)."""

    tenant: str
    # Its participants; the store gives only those the decision asks about (the sender).
    participants: frozenset[str]


@dataclass(frozen=True)
class ThreadFacts:
    """What the store already holds about the Message-IDs and tags a message names."""

    messages: Mapping[str, Sequence[KnownMessage]]
    tickets: Mapping[int, KnownTicket]
    # Message-IDs made by mxdesk (their MAC checked) and the ticket each one names.
    signed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A [#N] tag naming a ticket of the tenant that the sender may not join."""

    ticket: int
    participant: bool
    verified: bool

    @property
    def reason(self) -> str:
        if self.participant:
            return "sender not verified"
        return "sender not a participant" + ("" if self.verified else ", not verified")


@dataclass(frozen=True)
class Placement:
    """The decision: an existing ticket, or None to open one; why; whether the mail is automatic;
    for a new ticket, the ticket its tag claimed; for a joined one, whether it came in through a
    reference from someone neither on the ticket nor verified."""

    ticket: int | None
    rule: str
    automatic: bool
    claim: Claim | None = None
    unverified_sender: bool = False


def is_automatic(msg: ParsedMessage, envelope_from: str) -> bool:
    """Mail no person wrote (RFC 3834 auto-replies, bulk and list mail, bounces, reports)."""
    # RFC 3834 §5: "no" (with optional parameters and comments) is the only human value.
    auto = _COMMENT.sub("", msg.auto_submitted).split(";", 1)[0].strip().lower()
    return (
        (bool(auto) and auto != "no")
        or msg.precedence.strip().lower() in AUTOMATIC_PRECEDENCE
        or envelope_from == ""
        or msg.content_type == "multipart/report"
    )


def referenced_ids(msg: ParsedMessage, automatic: bool) -> list[str]:
    """Message-IDs the message replies to, most telling first (In-Reply-To, then newest ref)."""
    ids = [msg.in_reply_to] if msg.in_reply_to else []
    ids.extend(reversed(msg.references))
    if automatic:
        # A bounce or read report names the original in its body (RFC 3464, RFC 8098).
        ids.extend(msg.report_refs)
    return list(dict.fromkeys(ids))


def subject_tags(subject: str) -> list[int]:
    """Ticket numbers written as [#N] in a subject, in order."""
    return list(dict.fromkeys(int(n) for n in _TAG.findall(subject)))[:MAX_TAGS]


def place(
    msg: ParsedMessage,
    automatic: bool,
    tenant: str,
    mailbox: str,
    facts: ThreadFacts,
    verified: bool = False,
) -> Placement:
    """Chooses the ticket. `verified`: the From: domain is proven (see verdicts.sender_verified).

    1. A reference (In-Reply-To, References) to a stored message of the same tenant joins its
       ticket, verified or not (the customer's other mail client); a sender neither on that
       ticket nor verified is marked, unless the reference is one of mxdesk's own Message-IDs.
    2. One of mxdesk's own Message-IDs (its MAC checked) joins the ticket it names.
    3. A [#N] tag joins ticket N of the tenant only for a participant whose From: is verified;
       otherwise a new ticket is opened with the claim on it.
    Another tenant's ticket, or an unknown message, is never joined."""
    refs = referenced_ids(msg, automatic)
    for message_id in refs:
        found = [k for k in facts.messages.get(message_id, ()) if k.tenant == tenant]
        if found:
            same_box = [k for k in found if k.mailbox == mailbox]
            number = max(k.ticket for k in same_box or found)
            trusted = verified or message_id in facts.signed or _takes_part(msg, facts, number)
            return Placement(number, "reference", automatic, unverified_sender=not trusted)
    for message_id in refs:
        # One of our replies that is not stored (or was purged): its Message-ID still names
        # the ticket, and the MAC shows mxdesk made it.
        signed = facts.signed.get(message_id)
        known = facts.tickets.get(signed) if signed is not None else None
        if signed is not None and known is not None and known.tenant == tenant:
            return Placement(signed, "message-id", automatic)
    claim = None
    for number in subject_tags(msg.subject):
        ticket = facts.tickets.get(number)
        if ticket is None or ticket.tenant != tenant:
            continue
        participant = _takes_part(msg, facts, number)
        if participant and verified:
            return Placement(number, "subject-tag", automatic)
        claim = claim or Claim(number, participant, verified)
    return Placement(None, "new", automatic, claim=claim)


def _takes_part(msg: ParsedMessage, facts: ThreadFacts, number: int) -> bool:
    ticket = facts.tickets.get(number)
    return bool(msg.from_addr) and ticket is not None and msg.from_addr in ticket.participants


def participants_of(msg: ParsedMessage, mailbox: str, automatic: bool) -> list[tuple[str, str]]:
    """(address, role) pairs a human message adds to its ticket: From, then To and Cc."""
    if automatic:
        return []
    pairs = [(msg.from_addr, "from")] if msg.from_addr else []
    pairs += [(a, "to") for a in msg.to_addrs] + [(a, "cc") for a in msg.cc_addrs]
    seen = {mailbox}
    out = []
    for address, role in pairs:
        local, _, domain = address.rpartition("@")
        # suporte+x@ reaches suporte@: the mailbox under another name is not a participant.
        if address in seen or f"{local.split('+', 1)[0]}@{domain}" == mailbox:
            continue
        seen.add(address)
        out.append((address, role))
    return out[:MAX_NEW_PARTICIPANTS]
