"""An operator's reply as the customer's mail client receives it."""

from __future__ import annotations

import dataclasses
import email
from email import policy

import dkim
import pytest

from mxdesk.gateway import dkim as mxdkim
from mxdesk.store.compose import (
    Attachment,
    ReplyDraft,
    compose_reply,
    make_message_id,
    reply_subject,
    ticket_of_message_id,
)

KEY = b"k" * 32
DRAFT = ReplyDraft(
    ticket=12,
    mailbox="suporte@marca.helpdesk.example",
    sender_name="Suporte Marca",
    to=["cliente@example.org"],
    cc=["gerente@example.org"],
    subject="[#12] Pedido atrasado",
    body="Olá João,\n\nSeu pedido <123> já saiu & chega amanhã.",
    signature="Ana Souza\nSuporte Marca",
    in_reply_to="<p2@example.org>",
    references=["<p1@example.org>", "<p2@example.org>"],
    attachments=[Attachment("nota fiscal.pdf", "application/pdf", b"%PDF-1.4 ...")],
)


def test_headers_thread_and_name_the_mailbox() -> None:
    raw = compose_reply(DRAFT, KEY, now=1_795_000_000).as_bytes()
    msg = email.message_from_bytes(raw, policy=policy.default)
    sender = msg["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (
        "Suporte Marca",
        "suporte@marca.helpdesk.example",
    )
    assert msg["To"] == "cliente@example.org"
    assert msg["Cc"] == "gerente@example.org"
    assert msg["Subject"] == "Re: [#12] Pedido atrasado"
    assert msg["In-Reply-To"] == "<p2@example.org>"
    assert msg["References"] == "<p1@example.org> <p2@example.org>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"] is not None
    assert msg["Auto-Submitted"] is None
    assert ticket_of_message_id(KEY, msg["Message-ID"]) == 12
    assert msg["Message-ID"].endswith("@marca.helpdesk.example>")


def test_text_html_signature_and_attachment() -> None:
    msg = email.message_from_bytes(compose_reply(DRAFT, KEY).as_bytes(), policy=policy.default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "Olá João" in text and text.endswith("\n-- \nAna Souza\nSuporte Marca\n")
    html = msg.get_body(("html",)).get_content()
    assert "&lt;123&gt;" in html and "&amp;" in html and 'class="signature"' in html
    files = [
        (p.get_filename(), p.get_content_type(), p.get_content()) for p in msg.iter_attachments()
    ]
    assert files == [("nota fiscal.pdf", "application/pdf", b"%PDF-1.4 ...")]


@pytest.mark.parametrize(
    "typed", ["-- \nAna Souza\nSuporte Marca", "--\nAna Souza\nSuporte Marca\n"]
)
def test_a_signature_with_its_own_separator_gets_no_second_one(typed: str) -> None:
    draft = dataclasses.replace(DRAFT, signature=typed)
    msg = email.message_from_bytes(compose_reply(draft, KEY).as_bytes(), policy=policy.default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.endswith("\n-- \nAna Souza\nSuporte Marca\n") and text.count("--") == 1
    assert "--" not in msg.get_body(("html",)).get_content().split('class="signature"')[1]


def test_message_id_mac_refuses_forgeries() -> None:
    mid = make_message_id(KEY, 7, "marca.helpdesk.example")
    assert ticket_of_message_id(KEY, mid) == 7
    assert ticket_of_message_id(b"x" * 32, mid) is None
    forged = mid.replace("<t7.", "<t8.")
    assert ticket_of_message_id(KEY, forged) is None
    assert ticket_of_message_id(KEY, "<pedido-1@example.org>") is None


def test_reply_subject() -> None:
    assert reply_subject("Pedido") == "Re: Pedido"
    assert reply_subject("RE: Pedido [#3]") == "RE: Pedido [#3]"
    assert reply_subject("  Pedido\n  longo ") == "Re: Pedido longo"


def test_a_composed_reply_signs_and_verifies() -> None:
    key = mxdkim.load_key(mxdkim.generate_key("rsa"), "marca.helpdesk.example", "s1")
    signed = mxdkim.sign(compose_reply(DRAFT, KEY).as_bytes(), [key])
    txt = {b"s1._domainkey.marca.helpdesk.example.": key.dns_txt().encode()}
    assert dkim.DKIM(signed).verify(dnsfunc=lambda n, timeout=5: txt.get(n))
