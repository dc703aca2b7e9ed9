from pathlib import Path

import pytest

from mxdesk import state
from mxdesk.gateway.policy import Accept, RecipientPolicy, Reject
from mxdesk.names import builtin_reserved, reserved_labels

BASE = "helpdesk.example"
RESERVED = builtin_reserved()


@pytest.fixture
def conn(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = state.connect(tmp_path / "state.db")
    state.add_tenant(c, BASE, "marca", "dono@marca.com.br", "plus", RESERVED)
    state.add_hosted_domain(c, BASE, "marca", "marca", RESERVED)
    state.add_mailbox(c, BASE, "Suporte@Marca.helpdesk.example", "Suporte Marca")
    state.add_tenant(c, BASE, "barata", "dono@barata.example", "basic", RESERVED)
    yield c
    c.close()


def test_tenant_gets_default_inbox(conn) -> None:  # type: ignore[no-untyped-def]
    boxes = {m.address: m for m in state.list_mailboxes(conn, "marca")}
    assert boxes["marca@helpdesk.example"].default_inbox
    assert boxes["suporte@marca.helpdesk.example"].name == "Suporte Marca"


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("Marca!", r"'marca!' is not a valid DNS label: .* \(e\.g\. 'marca'\)"),
        (
            "_dmarc",
            r"not a valid DNS label: .* '-' \(e\.g\. 'dmarc'\)",
        ),
        ("www!", r"not a valid DNS label: [^(]*'-'$"),  # www is reserved: no suggestion
        ("-marca", "not a valid DNS label"),
        ("marca-", "not a valid DNS label"),
        ("a" * 64, "at most 63"),
        ("www", "reserved"),
        ("postmaster", "reserved"),
        ("xn--abc", "IDNA"),
        ("marca", "already taken"),
    ],
)
def test_domain_labels_refused_with_reason(conn, label: str, why: str) -> None:  # type: ignore[no-untyped-def]
    state.add_tenant(conn, BASE, "nova", "x@nova.example", "premium", RESERVED)
    with pytest.raises(state.StateError, match=why):
        state.add_hosted_domain(conn, BASE, label, "nova", RESERVED)


def test_labels_are_lowercased_like_addresses(conn) -> None:  # type: ignore[no-untyped-def]
    assert state.add_hosted_domain(conn, BASE, "Nova", "marca", RESERVED).name == f"nova.{BASE}"
    tenant = state.add_tenant(conn, BASE, "Loja", "x@loja.example", "plus", RESERVED)
    assert tenant.slug == "loja" and state.get_mailbox(conn, f"loja@{BASE}") is not None


def test_label_of_63_characters_is_accepted(conn) -> None:  # type: ignore[no-untyped-def]
    d = state.add_hosted_domain(conn, BASE, "a" * 63, "marca", RESERVED)
    assert d.status == "pending"  # active once its records are served


def test_basic_plan_gets_no_hosted_domain(conn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(state.StateError, match="basic plan"):
        state.add_hosted_domain(conn, BASE, "barata", "barata", RESERVED)


def test_reserved_list_extended_by_file(tmp_path: Path) -> None:
    extra = tmp_path / "more.txt"
    extra.write_text("# ours\nvendas\n")
    assert "vendas" in reserved_labels(extra)
    assert "www" in reserved_labels(extra)


def test_duplicate_tenant_and_mailbox(conn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(state.StateError, match="already exists"):
        state.add_tenant(conn, BASE, "marca", "a@b.example", "plus", RESERVED)
    with pytest.raises(state.StateError, match="already exists"):
        state.add_mailbox(conn, BASE, "suporte@marca.helpdesk.example", "Outro")
    with pytest.raises(state.StateError, match="not a domain of any tenant"):
        state.add_mailbox(conn, BASE, "x@desconhecido.example", "X")


@pytest.mark.parametrize(
    ("rcpt", "mailbox"),
    [
        ("suporte@marca.helpdesk.example", "suporte@marca.helpdesk.example"),
        ("SUPORTE@MARCA.Helpdesk.Example", "suporte@marca.helpdesk.example"),
        ("suporte+pedido-42@marca.helpdesk.example", "suporte@marca.helpdesk.example"),
        ("marca@helpdesk.example", "marca@helpdesk.example"),
        ("postmaster@marca.helpdesk.example", "marca@helpdesk.example"),
        ("PostMaster@marca.helpdesk.example", "marca@helpdesk.example"),
    ],
)
def test_policy_accepts(conn, rcpt: str, mailbox: str) -> None:  # type: ignore[no-untyped-def]
    decision = RecipientPolicy(conn, BASE, "").check(rcpt)
    assert isinstance(decision, Accept)
    assert decision.mailbox == mailbox
    assert decision.tenant == "marca"


@pytest.mark.parametrize(
    ("rcpt", "code"),
    [
        ("ninguem@marca.helpdesk.example", "550 5.1.1"),
        ("ninguem@helpdesk.example", "550 5.1.1"),
        ("someone@gmail.example", "550 5.7.1"),
        ("a%b@marca.helpdesk.example", "550 5.7.1"),
        ("b!a@marca.helpdesk.example", "550 5.7.1"),
        ('"a@b"@marca.helpdesk.example', "550 5.7.1"),
        ("suporte@marca.helpdesk.example.evil.example", "550 5.7.1"),
        ("postmaster@helpdesk.example", "550 5.1.1"),
        ("postmaster", "550 5.1.1"),
    ],
)
def test_policy_rejects(conn, rcpt: str, code: str) -> None:  # type: ignore[no-untyped-def]
    decision = RecipientPolicy(conn, BASE, "").check(rcpt)
    assert isinstance(decision, Reject)
    assert decision.reply.startswith(code)


def test_bare_postmaster_reaches_configured_tenant(conn) -> None:  # type: ignore[no-untyped-def]
    decision = RecipientPolicy(conn, BASE, "marca").check("Postmaster")
    assert isinstance(decision, Accept)
    assert decision.mailbox == "marca@helpdesk.example"
