"""Filing with the gateway's verdicts: what joins a ticket, what opens a marked one, and what
`mxdesk ticket show` says about each message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mxdesk.cli import main
from mxdesk.state import Mailbox
from mxdesk.store.db import open_tickets
from mxdesk.store.tickets import Filed, TicketStore

HOST = "mx.helpdesk.example"
SUPORTE = Mailbox("suporte@marca.helpdesk.example", "marca", "Suporte", False, True, 0.0)
PASS = (
    f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=cliente.example;"
    " dkim=pass header.d=cliente.example header.s=s1;"
    " dmarc=pass header.from=cliente.example policy.dmarc=reject; arc=none"
)
# What the gateway writes for a forged From: of a domain with p=none (accepted, not proven).
FORGED = (
    f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=evil.example; dkim=none;"
    " dmarc=fail (p=none dis=none) header.from=cliente.example; arc=none"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "mxdesk.toml").write_text(
        f'[mxdesk]\nstate_dir = "{tmp_path / "state"}"\nruntime_dir = "{tmp_path / "run"}"\n'
        'user = ""\nbase_domain = "helpdesk.example"\nallow_example_domain = true\n'
    )
    return tmp_path


@pytest.fixture
def store(root: Path) -> Iterator[TicketStore]:
    s = TicketStore(open_tickets(root / "state" / "tickets.db"), host_name=HOST)
    yield s
    s.close()


def file(
    store: TicketStore, n: int, *headers: str, sender: str = "cliente@cliente.example"
) -> Filed:
    lines = [f"X-Mxdesk-Queue-Id: Q{n}", *headers, f"Message-ID: <m{n}@cliente.example>"]
    if not any(h.startswith("From:") for h in headers):
        lines.append(f"From: Cliente <{sender}>")
    raw = ("\r\n".join(lines) + f"\r\n\r\ntexto {n}\r\n").encode()
    (filed,) = store.file_all(raw, sender, [SUPORTE])
    assert filed is not None
    return filed


def show(root: Path, ticket: int, *more: str) -> str:
    result = CliRunner().invoke(
        main, ["--config", str(root / "mxdesk.toml"), "ticket", "show", str(ticket), *more]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_a_verified_participant_joins_by_tag_and_the_verdicts_are_shown(
    store: TicketStore, root: Path
) -> None:
    first = file(store, 1, "Subject: Pedido", PASS)
    joined = file(store, 2, f"Subject: Re: [#{first.ticket}] Pedido", PASS)
    assert joined.ticket == first.ticket
    out = show(root, first.ticket)
    line = "spf=pass dkim=pass (cliente.example) dmarc=pass (cliente.example, p=reject) arc=none"
    assert out.count(f"Verdicts:   {line}") == 2
    shown = json.loads(show(root, first.ticket, "--json"))
    assert shown["messages"][1]["verdicts"] == {
        "spf": "pass",
        "spf_domain": "cliente.example",
        "dkim": [{"result": "pass", "domain": "cliente.example"}],
        "dmarc": "pass",
        "dmarc_from": "cliente.example",
        "dmarc_policy": "reject",
        "arc": "none",
    }
    assert shown["messages"][1]["sender_verified"] is True
    assert (shown["claims"], shown["note"], shown["flags"]) == (None, "", [])


def test_a_forged_participant_opens_a_new_marked_ticket(store: TicketStore, root: Path) -> None:
    first = file(store, 1, "Subject: Pedido", PASS)
    # The From: names the customer; only the verdicts show it is not them.
    forged = file(
        store,
        2,
        "From: Cliente <cliente@cliente.example>",
        f"Subject: [#{first.ticket}] mude o endereço de entrega",
        FORGED,
        sender="eve@evil.example",
    )
    assert forged.ticket != first.ticket
    out = show(root, forged.ticket)
    assert "flags:      unverified claim" in out
    assert f"note:       claims to belong to #{first.ticket} — sender not verified" in out
    assert "dmarc=fail (cliente.example, p=none)" in out
    assert "Note:       the From: domain failed DMARC" in out
    shown = json.loads(show(root, forged.ticket, "--json"))
    assert shown["claims"] == first.ticket
    assert shown["messages"][0]["sender_verified"] is False
    assert shown["messages"][0]["flags"] == ["unverified sender"]
    # Nothing was added to the real ticket.
    assert len(json.loads(show(root, first.ticket, "--json"))["messages"]) == 1


def test_without_verdicts_a_participants_tag_opens_a_marked_ticket(
    store: TicketStore, root: Path
) -> None:
    first = file(store, 1, "Subject: Pedido")
    tagged = file(store, 2, f"Subject: [#{first.ticket}] mais")
    assert tagged.ticket != first.ticket
    out = show(root, tagged.ticket)
    assert "Verdicts:   none recorded (no Authentication-Results)" in out
    assert f"claims to belong to #{first.ticket} — sender not verified" in out


def test_a_forged_authentication_results_header_is_not_trusted(store: TicketStore) -> None:
    first = file(store, 1, "Subject: Pedido", PASS)
    # Claims another host, or sits below the gateway's own header: both ignored.
    fake = PASS.replace(HOST, "mx.evil.example")
    assert file(store, 2, f"Subject: [#{first.ticket}] x", fake).ticket != first.ticket
    under = file(store, 3, FORGED, f"Subject: [#{first.ticket}] x", PASS)
    assert under.ticket != first.ticket


def test_an_unverified_stranger_replying_joins_but_is_marked(
    store: TicketStore, root: Path
) -> None:
    first = file(store, 1, "Subject: Pedido", PASS)
    reply = file(
        store,
        2,
        "From: Colega <colega@cliente.example>",
        "Subject: Re: Pedido",
        "In-Reply-To: <m1@cliente.example>",
        sender="colega@cliente.example",
    )
    assert reply.ticket == first.ticket
    out = show(root, first.ticket)
    assert "Flags:      unverified sender" in out
    assert "the sender is not on the ticket, not verified" in out
    # Now a participant (the reply added them): the next reply is not marked.
    file(
        store,
        3,
        "From: Colega <colega@cliente.example>",
        "In-Reply-To: <m2@cliente.example>",
        sender="colega@cliente.example",
    )
    messages = json.loads(show(root, first.ticket, "--json"))["messages"]
    assert [m["flags"] for m in messages] == [[], ["unverified sender"], []]


def test_a_forged_participant_replying_by_reference_joins_marked(
    store: TicketStore, root: Path
) -> None:
    # The reference rule keeps joining (replies from the customer's other client), but a
    # From: that failed DMARC is never merged silently.
    first = file(store, 1, "Subject: Pedido", PASS)
    forged = file(
        store,
        2,
        "From: Cliente <cliente@cliente.example>",
        "In-Reply-To: <m1@cliente.example>",
        FORGED,
        sender="eve@evil.example",
    )
    other_client = file(store, 3, "In-Reply-To: <m1@cliente.example>")
    assert forged.ticket == other_client.ticket == first.ticket
    messages = json.loads(show(root, first.ticket, "--json"))["messages"]
    assert [(m["flags"], m["note"]) for m in messages] == [
        ([], ""),
        (["unverified sender"], "the From: domain failed DMARC"),
        ([], ""),
    ]
