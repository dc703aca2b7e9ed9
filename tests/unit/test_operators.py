"""Which signature a reply carries, and how operators and signatures are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxdesk import changes, operators, state
from mxdesk.names import builtin_reserved


@pytest.mark.parametrize(
    ("own", "generic", "use_own", "use_generic", "expected"),
    [
        ("-- Ana", "-- Equipe", True, True, "-- Ana"),  # operator with a signature
        ("", "-- Equipe", True, True, "-- Equipe"),  # operator without: the fallback
        ("", "-- Equipe", True, False, ""),  # fallback switched off
        ("-- Ana", "-- Equipe", False, True, "-- Equipe"),  # operator signatures off
        ("-- Ana", "", False, True, ""),  # nothing to fall back to
        ("-- Ana", "-- Equipe", False, False, ""),
    ],
)
def test_signature_choice(
    own: str, generic: str, use_own: bool, use_generic: bool, expected: str
) -> None:
    assert operators.signature_for(own, generic, use_own, use_generic) == expected


@pytest.fixture
def conn(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = state.connect(tmp_path / "state.db")
    state.add_tenant(c, "helpdesk.example", "marca", "a@b.example", "plus", builtin_reserved())
    yield c
    c.close()


def test_operators_and_generic_signature(conn) -> None:  # type: ignore[no-untyped-def]
    operators.add_operator(conn, "marca", "Ana Souza", "Ana Souza\r\nSuporte   \r\n\r\n")
    operators.add_operator(conn, "marca", "Bruno", "")
    ana = operators.get_operator(conn, "marca", "Ana Souza")
    assert ana.signature == "Ana Souza\nSuporte"
    assert [o.name for o in operators.list_operators(conn, "marca")] == ["Ana Souza", "Bruno"]
    with pytest.raises(state.StateError, match="already exists"):
        operators.add_operator(conn, "marca", "Bruno", "")
    with pytest.raises(state.StateError, match="no tenant"):
        operators.add_operator(conn, "ninguem", "X", "")
    operators.set_generic_signature(conn, "marca", "Equipe Marca")
    operators.set_generic_signature(conn, "marca", "Equipe Marca — Suporte")
    assert operators.generic_signature(conn, "marca") == "Equipe Marca — Suporte"


def test_mailbox_switches(conn) -> None:  # type: ignore[no-untyped-def]
    box = changes.set_mailbox(conn, "marca@helpdesk.example", operator_signatures=False)
    assert (box.operator_signatures, box.generic_signature) == (False, True)
    box = changes.set_mailbox(conn, "MARCA@helpdesk.example", generic_signature=False)
    assert (box.operator_signatures, box.generic_signature) == (False, False)
    with pytest.raises(state.StateError, match="no mailbox"):
        changes.set_mailbox(conn, "x@helpdesk.example", operator_signatures=True)


def test_signature_bounds(conn) -> None:  # type: ignore[no-untyped-def]
    operators.set_generic_signature(conn, "marca", "x" * operators.MAX_SIGNATURE)
    with pytest.raises(state.StateError, match="at most"):
        operators.set_generic_signature(conn, "marca", "x" * (operators.MAX_SIGNATURE + 1))
    with pytest.raises(state.StateError, match="control characters"):
        operators.set_generic_signature(conn, "marca", "a\x00b")
