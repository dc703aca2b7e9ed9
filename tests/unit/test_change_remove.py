"""Changing, disabling and removing tenants, domains, mailboxes, operators; closing tickets."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BASE, MAILBOX, make_config

from mxdesk import changes, dkimkeys, operators, outbox, state, tenants
from mxdesk import config as cfg
from mxdesk.dns.lifecycle import publish_domain
from mxdesk.gateway.entries import SCHEMA as SPOOL_SCHEMA
from mxdesk.gateway.policy import Accept, RecipientPolicy, Reject
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.names import builtin_reserved
from mxdesk.store import queries
from mxdesk.store.db import open_tickets
from mxdesk.store.status import CLOSED, OPEN, set_status
from mxdesk.store.tickets import TicketStore

MARCA = f"marca.{BASE}"
INBOX = f"marca@{BASE}"
OUTRA_BOX = f"contato@outra.{BASE}"


@pytest.fixture
def config(short_tmp: Path) -> cfg.Config:
    return make_config(short_tmp)


@pytest.fixture
def conn(config: cfg.Config) -> Iterator[sqlite3.Connection]:
    """marca (plus: a hosted domain with its keys, a mailbox, an operator) and outra."""
    c = state.connect(config.general.state_db)
    reserved = builtin_reserved()
    state.add_tenant(c, BASE, "marca", "dono@marca.example", "plus", reserved)
    state.add_hosted_domain(c, BASE, "marca", "marca", reserved)
    dkimkeys.create_keys(c, config.dkim, MARCA)
    state.set_domain(c, MARCA, status="active", forced=True, owner_notified=True)
    state.add_mailbox(c, BASE, MAILBOX, "Suporte Marca")
    operators.add_operator(c, "marca", "Ana Souza", "Ana\nSuporte")
    state.add_tenant(c, BASE, "outra", "dono@outra.example", "premium", reserved)
    state.add_hosted_domain(c, BASE, "outra", "outra", reserved)
    state.set_domain(c, f"outra.{BASE}", status="active")
    state.add_mailbox(c, BASE, OUTRA_BOX, "Outra")
    yield c
    c.close()


def spool_entry(
    config: cfg.Config,
    kind: str,
    mail_from: str,
    mailbox: str,
    tenant: str,
    status: str = "pending",
) -> None:
    """One entry in spool.db as the gateway commits it (its own schema)."""
    spool = sqlite3.connect(config.gateway.spool_path, isolation_level=None)
    state.migrate(spool, SPOOL_SCHEMA)
    entry = f"Q{time.monotonic_ns()}"
    spool.execute(
        "INSERT INTO entries (id, kind, created, client, mail_from, size, data, next_attempt)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (entry, kind, time.time(), "local", mail_from, 1, b"x", time.time()),
    )
    spool.execute(
        "INSERT INTO recipients (entry, position, original, mailbox, tenant, status)"
        " VALUES (?,?,?,?,?,?)",
        (entry, 0, mailbox, mailbox, tenant, status),
    )
    spool.close()


def ticket(config: cfg.Config, mailbox: state.Mailbox, message_id: str = "<p1@example.com>") -> int:
    store = TicketStore(open_tickets(config.store.database))
    raw = (
        f"From: cliente@example.com\r\nTo: {mailbox.address}\r\nSubject: Ajuda\r\n"
        f"Message-ID: {message_id}\r\n\r\nOla\r\n"
    ).encode()
    (filed,) = store.file_all(raw, "cliente@example.com", [mailbox])
    store.close()
    assert filed is not None
    return filed.ticket


def box(conn: sqlite3.Connection, address: str) -> state.Mailbox:
    found = state.get_mailbox(conn, address)
    assert found is not None
    return found


# -- the gateway sees disabled things --------------------------------------------------------


def test_disabled_mailbox_answers_550_5_1_1_and_enabled_again_accepts(conn) -> None:  # type: ignore[no-untyped-def]
    policy = RecipientPolicy(conn, BASE, "")
    changes.set_mailbox_status(conn, MAILBOX, active=False)
    reply = policy.check("Suporte+x@marca.helpdesk.example")
    assert isinstance(reply, Reject) and reply.reply.startswith("550 5.1.1")
    changes.set_mailbox_status(conn, MAILBOX, active=True)
    assert isinstance(policy.check(MAILBOX), Accept)


def test_the_policy_remembers_answers_until_another_process_changes_the_state(  # type: ignore[no-untyped-def]
    conn, config: cfg.Config
) -> None:
    gateway_conn = state.connect(config.general.state_db, readonly=True)
    statements: list[str] = []
    gateway_conn.set_trace_callback(statements.append)
    policy = RecipientPolicy(gateway_conn, BASE, "")
    try:
        assert isinstance(policy.check(MAILBOX), Accept)
        first = len(statements)
        for _ in range(5):
            assert isinstance(policy.check(MAILBOX), Accept)
        # Five answers from memory: at most the version is asked (once a millisecond).
        assert set(statements[first:]) <= {"PRAGMA data_version"}
        changes.set_mailbox_status(conn, MAILBOX, active=False)  # as the CLI does
        time.sleep(0.002)  # another process's change is looked for once a millisecond
        reply = policy.check(MAILBOX)
        assert isinstance(reply, Reject) and reply.reply.startswith("550 5.1.1")
        changes.set_mailbox_status(conn, MAILBOX, active=True)
        time.sleep(0.002)
        assert isinstance(policy.check(MAILBOX), Accept)
    finally:
        gateway_conn.close()


def test_remembered_answers_look_for_other_processes_changes_once_per_fresh_interval(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (v INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    reader = sqlite3.connect(path, isolation_level=None)
    statements: list[str] = []
    reader.set_trace_callback(statements.append)
    now = [100.0]
    answers = state.Remembered(reader, fresh=0.001, clock=lambda: now[0])

    def value() -> int:
        return int(reader.execute("SELECT v FROM t").fetchone()[0])

    try:
        assert answers.get("v", value) == 1
        statements.clear()
        writer.execute("UPDATE t SET v = 2")
        now[0] += 0.0005  # within the interval: the remembered answer, no statement at all
        assert answers.get("v", value) == 1
        assert statements == []
        now[0] += 0.0005  # the interval is over: the version is asked, the change seen
        assert answers.get("v", value) == 2
        assert statements == ["PRAGMA data_version", "SELECT v FROM t"]
        statements.clear()
        with state.transaction(writer):  # a commit of this process, on another connection
            writer.execute("UPDATE t SET v = 3")
        assert answers.get("v", value) == 3  # seen at once, without waiting either
        statements.clear()
        reader.execute("CREATE TEMP TABLE mine (x)")
        reader.execute("INSERT INTO mine VALUES (1)")  # this connection's own change
        statements.clear()
        assert answers.get("v", value) == 3
        # Seen at once, without waiting for the interval: the answer is computed again.
        assert statements == ["PRAGMA data_version", "SELECT v FROM t"]
    finally:
        reader.close()
        writer.close()


def test_disabled_tenant_refuses_mail_and_sending_others_unaffected(conn) -> None:  # type: ignore[no-untyped-def]
    policy = RecipientPolicy(conn, BASE, "")
    senders = SenderPolicy(conn, BASE, {})
    _, changed = tenants.set_tenant_status(conn, "marca", active=False)
    assert changed
    for rcpt in (MAILBOX, INBOX):
        reply = policy.check(rcpt)
        assert isinstance(reply, Reject) and reply.reply.startswith("550 5.1.1"), rcpt
        assert senders.tenant_of_address(rcpt) is None
    assert isinstance(policy.check(OUTRA_BOX), Accept)
    assert senders.tenant_of_address(OUTRA_BOX) == "outra"
    assert tenants.set_tenant_status(conn, "marca", active=False)[1] is False
    tenants.set_tenant_status(conn, "marca", active=True)
    assert isinstance(policy.check(INBOX), Accept)
    assert senders.tenant_of_address(MAILBOX) == "marca"


def test_the_signing_domain_is_the_from_headers_when_it_is_the_tenants(conn) -> None:  # type: ignore[no-untyped-def]
    """DMARC alignment: a reply from marca's mailbox submitted with the tenant's default inbox
    as envelope sender is signed for the From: header's domain; a From: of another tenant, or
    of nobody's, leaves the envelope sender's domain (what a hold reason then names)."""
    senders = SenderPolicy(conn, BASE, {})
    head = f"From: Suporte Marca <{MAILBOX}>\r\n\r\n".encode()
    assert senders.signing_domain(head, "marca", INBOX) == MARCA
    assert senders.signing_domain(head, "outra", INBOX) == BASE
    assert senders.signing_domain(b"From: a@example.org\r\n\r\n", "marca", INBOX) == BASE
    assert [k.domain for k in senders.signing_keys(head, "marca", INBOX)] == [MARCA]


def test_disabled_domain_stops_receiving_and_sending(conn) -> None:  # type: ignore[no-untyped-def]
    policy = RecipientPolicy(conn, BASE, "")
    senders = SenderPolicy(conn, BASE, {})
    domain, changed = changes.disable_domain(conn, MARCA)
    assert changed and domain.status == "disabled"
    reply = policy.check(MAILBOX)
    assert isinstance(reply, Reject) and reply.reply.startswith("550 5.7.1")
    assert senders.tenant_of_address(MAILBOX) is None
    # A reply its keys would sign waits in the queue instead of leaving.
    keys = senders.signing_keys(f"From: {MAILBOX}\r\n\r\n".encode(), "marca", MAILBOX)
    assert {k.domain for k in keys} == {MARCA}
    assert senders.waiting_for(keys) == f"domain {MARCA} not active yet"
    # The default inbox of the tenant is on the base domain: it still receives.
    assert isinstance(policy.check(INBOX), Accept)


def test_enable_goes_to_propagating_for_the_gateway_to_check_again(conn) -> None:  # type: ignore[no-untyped-def]
    changes.disable_domain(conn, MARCA)
    domain, changed = changes.enable_domain(conn, MARCA)
    assert changed
    assert (domain.status, domain.activated, domain.forced) == ("propagating", None, False)
    assert changes.enable_domain(conn, MARCA)[1] is False


async def test_a_lifecycle_step_under_way_does_not_undo_disable(  # type: ignore[no-untyped-def]
    conn, config: cfg.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the lifecycle set its next status without looking, so a domain disabled
    while it was being published came back as propagating, and then active."""

    async def disabled_meanwhile(*args: object, **kwargs: object) -> list[object]:
        changes.disable_domain(conn, MARCA)
        return []

    monkeypatch.setattr("mxdesk.dns.lifecycle.publish", disabled_meanwhile)
    state.set_domain(conn, MARCA, status="pending")
    await publish_domain(conn, config, MARCA)
    assert changes.domains.get(conn, MARCA).status == "disabled"


# -- tenants ------------------------------------------------------------------------------


def test_tenant_set_owner_and_plan(conn) -> None:  # type: ignore[no-untyped-def]
    t = tenants.set_tenant(conn, "marca", owner="Novo@Marca.example", plan="premium")
    assert (t.owner, t.plan) == ("novo@marca.example", "premium")
    with pytest.raises(state.StateError, match="owner: "):
        tenants.set_tenant(conn, "marca", owner="not-an-address")
    with pytest.raises(
        state.StateError, match=r"hosted subdomain marca\.helpdesk\.example, which the basic plan"
    ):
        tenants.set_tenant(conn, "marca", plan="basic")
    with pytest.raises(state.StateError, match="no tenant 'naoexiste'"):
        tenants.set_tenant(conn, "naoexiste", plan="plus")
    assert state.get_tenant(conn, "marca").plan == "premium"


def test_tenant_remove_refuses_what_it_would_orphan(conn, config: cfg.Config) -> None:  # type: ignore[no-untyped-def]
    ticket(config, box(conn, MAILBOX))
    with pytest.raises(state.StateError) as refused:
        tenants.remove_tenant(conn, config, "marca")
    message = str(refused.value)
    assert "1 domain (marca.helpdesk.example)" in message
    assert "1 mailbox" in message and "1 open ticket" in message and "--force" in message
    assert state.get_tenant(conn, "marca").slug == "marca"


def test_tenant_remove_force_keeps_tickets_and_removes_the_rest(conn, config: cfg.Config) -> None:  # type: ignore[no-untyped-def]
    number = ticket(config, box(conn, MAILBOX))
    operators.set_generic_signature(conn, "marca", "Equipe")
    outbox.set_outbox(
        conn, b"k" * 32, "marca", "smtp.marca.example", 25, "none", None, None, MAILBOX
    )
    key_files = [Path(k.path) for k in dkimkeys.keys_of(conn, MARCA)]
    assert key_files and all(p.exists() for p in key_files)
    gone = tenants.remove_tenant(conn, config, "marca", force=True)
    assert gone.domains == [MARCA] and gone.tickets == 1
    assert sorted(gone.mailboxes) == [INBOX, MAILBOX] and gone.operators == ["Ana Souza"]
    assert gone.outbox and gone.generic_signature
    assert not any(p.exists() for p in key_files)
    assert dkimkeys.keys_of(conn, MARCA) == []
    with pytest.raises(state.StateError, match="no tenant 'marca'"):
        state.get_tenant(conn, "marca")
    assert state.list_mailboxes(conn, "marca") == [] and state.list_domains(conn, "marca") == []
    assert operators.list_operators(conn, "marca") == []
    assert operators.generic_signature(conn, "marca") == ""
    assert [t.number for t in queries.list_tickets(open_tickets(config.store.database))] == [number]
    assert [t.slug for t in state.list_tenants(conn)] == ["outra"]


def test_tenant_remove_refused_while_the_spool_holds_its_mail_even_with_force(  # type: ignore[no-untyped-def]
    conn, config: cfg.Config
) -> None:
    spool_entry(config, "out", MAILBOX, "cliente@example.com", "marca")
    with pytest.raises(state.StateError, match=r"1 message in the queue.*mxdesk queue list"):
        tenants.remove_tenant(conn, config, "marca", force=True)
    assert state.list_domains(conn, "marca") != []


def test_show_tenant_counts(conn, config: cfg.Config) -> None:  # type: ignore[no-untyped-def]
    number = ticket(config, box(conn, MAILBOX))
    set_status(open_tickets(config.store.database), number, CLOSED, time.time())
    ticket(config, box(conn, INBOX), "<p2@example.com>")
    spool_entry(config, "in", "cliente@example.com", INBOX, "marca")
    view = tenants.show_tenant(conn, config, "marca")
    assert (view.open_tickets, view.tickets, view.queued) == (1, 2, 1)
    assert [d.name for d in view.domains] == [MARCA] and view.operators == ["Ana Souza"]


# -- domains ------------------------------------------------------------------------------


def test_domain_remove_refused_with_mailboxes_then_removes_its_keys(
    conn, config: cfg.Config
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(state.StateError, match=r"still has 1 mailbox \(suporte@"):
        changes.remove_domain(conn, config, MARCA)
    changes.remove_mailbox(conn, config, MAILBOX)
    key_files = [Path(k.path) for k in dkimkeys.keys_of(conn, MARCA)]
    gone = changes.remove_domain(conn, config, MARCA.upper())
    assert gone.name == MARCA
    assert f"_dmarc.{MARCA} TXT" in gone.records and f"{MARCA} MX" in gone.records
    assert not any(p.exists() for p in key_files) and dkimkeys.keys_of(conn, MARCA) == []
    assert state.get_domain(conn, MARCA) is None
    with pytest.raises(state.StateError, match=r"no domain 'marca\.helpdesk\.example'"):
        changes.disable_domain(conn, MARCA)


@pytest.mark.parametrize(
    ("kind", "mail_from", "rcpt"),
    [
        ("in", "cliente@example.com", f"vendas@{MARCA}"),  # inbound, not yet in the store
        ("out", f"vendas@{MARCA}", "cliente@example.com"),  # a reply on its way out
    ],
)
def test_domain_remove_refused_while_the_spool_holds_its_mail(  # type: ignore[no-untyped-def]
    conn, config: cfg.Config, kind: str, mail_from: str, rcpt: str
) -> None:
    changes.remove_mailbox(conn, config, MAILBOX)
    spool_entry(config, kind, mail_from, rcpt, "marca")
    with pytest.raises(state.StateError, match=f"domain {MARCA} still has 1 message in the queue"):
        changes.remove_domain(conn, config, MARCA)
    assert state.get_domain(conn, MARCA) is not None


# -- mailboxes ----------------------------------------------------------------------------


def test_mailbox_set_name_and_switches(conn) -> None:  # type: ignore[no-untyped-def]
    m = changes.set_mailbox(conn, MAILBOX.upper(), name="  Atendimento   Marca ")
    assert (m.name, m.operator_signatures) == ("Atendimento Marca", True)
    m = changes.set_mailbox(conn, MAILBOX, operator_signatures=False)
    assert (m.name, m.operator_signatures, m.generic_signature) == (
        "Atendimento Marca",
        False,
        True,
    )
    with pytest.raises(state.StateError, match="sender name: give 1 to 100"):
        changes.set_mailbox(conn, MAILBOX, name=" ")
    with pytest.raises(state.StateError, match="no mailbox ninguem@"):
        changes.set_mailbox(conn, f"ninguem@{MARCA}", name="X")


def test_mailbox_remove_refusals(conn, config: cfg.Config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(state.StateError, match="default inbox of tenant 'marca'"):
        changes.remove_mailbox(conn, config, INBOX)
    number = ticket(config, box(conn, MAILBOX))
    with pytest.raises(state.StateError, match=r"1 open ticket: close them first.*--force"):
        changes.remove_mailbox(conn, config, MAILBOX)
    set_status(open_tickets(config.store.database), number, CLOSED, time.time())
    spool_entry(config, "in", "cliente@example.com", MAILBOX, "marca")
    with pytest.raises(state.StateError, match="1 message in the queue"):
        changes.remove_mailbox(conn, config, MAILBOX, force=True)
    assert state.get_mailbox(conn, MAILBOX) is not None


@pytest.mark.parametrize(("status", "refused"), [("failed", True), ("delivered", False)])
def test_a_held_entry_counts_a_recipient_already_delivered_does_not(  # type: ignore[no-untyped-def]
    conn, config: cfg.Config, status: str, refused: bool
) -> None:
    spool_entry(config, "in", "cliente@example.com", MAILBOX, "marca", status)
    view = changes.show_mailbox(conn, config, MAILBOX)
    assert view.queued == int(refused)
    assert tenants.show_tenant(conn, config, "marca").queued == int(refused)


def test_mailbox_remove_with_force_keeps_its_tickets(conn, config: cfg.Config) -> None:  # type: ignore[no-untyped-def]
    ticket(config, box(conn, MAILBOX))
    view = changes.remove_mailbox(conn, config, MAILBOX, force=True)
    assert (view.open_tickets, view.tickets) == (1, 1)
    assert state.get_mailbox(conn, MAILBOX) is None
    assert len(queries.list_tickets(open_tickets(config.store.database))) == 1


# -- operators ----------------------------------------------------------------------------


def test_operator_rename_signature_and_remove(conn) -> None:  # type: ignore[no-untyped-def]
    operators.add_operator(conn, "marca", "Bruno", "")
    op = operators.set_operator(conn, "marca", "Ana Souza", new_name="Ana S. Souza")
    assert (op.name, op.signature) == ("Ana S. Souza", "Ana\nSuporte")
    with pytest.raises(state.StateError, match="operator 'Bruno' already exists"):
        operators.set_operator(conn, "marca", "Ana S. Souza", new_name="Bruno")
    assert operators.set_operator(conn, "marca", "Ana S. Souza", signature="").signature == ""
    operators.remove_operator(conn, "marca", "Ana S. Souza")
    assert [o.name for o in operators.list_operators(conn, "marca")] == ["Bruno"]
    with pytest.raises(state.StateError, match=r"no operator 'Ana S\. Souza' in tenant 'marca'"):
        operators.remove_operator(conn, "marca", "Ana S. Souza")
    with pytest.raises(state.StateError, match="no tenant 'naoexiste'"):
        operators.remove_operator(conn, "naoexiste", "Bruno")


# -- tickets ------------------------------------------------------------------------------


def test_close_reopen_and_list_by_status(conn, config: cfg.Config) -> None:  # type: ignore[no-untyped-def]
    first = ticket(config, box(conn, MAILBOX))
    second = ticket(config, box(conn, MAILBOX), "<p2@example.com>")
    db = open_tickets(config.store.database)
    assert set_status(db, first, CLOSED, time.time()) is True
    assert set_status(db, first, CLOSED, time.time()) is False
    assert [t.number for t in queries.list_tickets(db, status=CLOSED)] == [first]
    assert [t.number for t in queries.list_tickets(db, "marca", OPEN)] == [second]
    assert queries.list_tickets(db, "outra", OPEN) == []
    assert set_status(db, first, OPEN, time.time()) is True
    with pytest.raises(queries.TicketNotFound, match="no ticket #99"):
        set_status(db, 99, CLOSED, time.time())


def test_customer_message_reopens_a_closed_ticket_an_automatic_one_does_not(  # type: ignore[no-untyped-def]
    conn, config: cfg.Config
) -> None:
    mailbox = box(conn, MAILBOX)
    number = ticket(config, mailbox)
    store = TicketStore(open_tickets(config.store.database))
    set_status(store.db, number, CLOSED, time.time())

    def answer(*headers: str) -> None:
        raw = (
            "\r\n".join(["From: cliente@example.com", "In-Reply-To: <p1@example.com>", *headers])
            + "\r\nSubject: Re: Ajuda\r\n\r\nObrigado\r\n"
        ).encode()
        (filed,) = store.file_all(raw, "cliente@example.com", [mailbox])
        assert filed is not None and filed.ticket == number

    answer("Auto-Submitted: auto-replied", "Message-ID: <ooo@example.com>")
    assert queries.get_ticket(store.db, number).status == CLOSED
    answer("Message-ID: <p3@example.com>")
    assert queries.get_ticket(store.db, number).status == OPEN
    store.close()
