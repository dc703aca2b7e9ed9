"""DKIM signatures made by mxdesk verify with dkimpy; what must break them does."""

from __future__ import annotations

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mxdesk.gateway import dkim as mxdkim

DOMAIN = "marca.helpdesk.example"
MESSAGE = (
    b'From: "Suporte Marca" <suporte@marca.helpdesk.example>\n'
    b"To: cliente@example.org\n"
    b"Subject: Re: [#12] Pedido atrasado\n"
    b"Date: Sat, 21 Nov 2026 05:44:09 +0000\n"
    b"Message-ID: <t12.abc@marca.helpdesk.example>\n"
    b"In-Reply-To: <pedido-1@example.org>\n"
    b"References: <pedido-1@example.org>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"\n"
    b"Ol\xc3\xa1,\r\nlinha com LF\nlinha com CR\r.ponto no fim\n"
)


def _dns(dkim_keys: list[mxdkim.DkimKey]):  # type: ignore[no-untyped-def]
    records = {
        f"{k.selector}._domainkey.{k.domain}.".encode(): k.dns_txt().encode() for k in dkim_keys
    }
    return lambda name, timeout=5: records.get(name)


def _verify(message: bytes, dkim_keys: list[mxdkim.DkimKey], idx: int) -> bool:
    try:
        return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=_dns(dkim_keys)))
    except dkim.ValidationError:
        return False


def test_rsa_and_ed25519_signatures_verify(dkim_keys: list[mxdkim.DkimKey]) -> None:
    signed = mxdkim.sign(MESSAGE, dkim_keys)
    assert _verify(signed, dkim_keys, 0)
    assert _verify(signed, dkim_keys, 1)
    assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed


def test_line_endings_are_normalised_before_signing(dkim_keys: list[mxdkim.DkimKey]) -> None:
    signed = mxdkim.sign(MESSAGE, dkim_keys)
    assert b"\r\n" in signed
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert b"\r" not in signed.replace(b"\r\n", b"")
    # What an SMTP client sends is CRLF text: it still verifies after the trip.
    assert _verify(signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), dkim_keys, 0)


def test_no_length_tag_and_relaxed_canonicalisation(dkim_keys: list[mxdkim.DkimKey]) -> None:
    header = mxdkim.signature_header(mxdkim.normalise_line_endings(MESSAGE), dkim_keys[0])
    tags = dict(dkim.util.parse_tag_value(header.split(b":", 1)[1]))
    assert b"l" not in tags
    assert tags[b"c"] == b"relaxed/relaxed"
    signed = [h.strip() for h in tags[b"h"].split(b":")]
    for name in mxdkim.OVERSIGNED:
        assert signed.count(name) >= 1
    assert signed.count(b"from") == 2  # once for the header, once for none more


@pytest.mark.parametrize(
    "addition",
    [
        b"From: impostor@evil.example\r\n",
        b"Subject: outro assunto\r\n",
        b"Cc: x@evil.example\r\n",
        b"Reply-To: x@evil.example\r\n",
    ],
)
def test_an_added_key_header_breaks_the_signature(
    dkim_keys: list[mxdkim.DkimKey], addition: bytes
) -> None:
    signed = mxdkim.sign(MESSAGE, dkim_keys[:1])
    head, body = signed.split(b"\r\n\r\n", 1)
    assert not _verify(head + b"\r\n" + addition + b"\r\n" + body, dkim_keys, 0)


def test_a_changed_body_breaks_the_signature(dkim_keys: list[mxdkim.DkimKey]) -> None:
    signed = mxdkim.sign(MESSAGE, dkim_keys)
    assert not _verify(signed.replace(b"linha com LF", b"linha mudada"), dkim_keys, 0)
    assert not _verify(signed.replace(b"linha com LF", b"linha mudada"), dkim_keys, 1)


def test_rsa_keys_under_2048_bits_are_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(mxdkim.DkimKeyError, match="RSA-1024: at least 2048 bits"):
        mxdkim.load_key(weak, DOMAIN, "weak")
    with pytest.raises(mxdkim.DkimKeyError, match="not a PEM private key"):
        mxdkim.load_key(b"garbage", DOMAIN, "bad")


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"A: b\r\n\r\nbody\r\n", b"A: b\r\n\r\nbody\r\n"),
        (b"A: b\r\n\r\nbody\r\n\r\n", b"A: b\r\n\r\nbody\r\n\r\n"),
        (b"A: b\n\nbody\n", b"A: b\r\n\r\nbody\r\n"),
        (b"A: b\r\n\r\nbo\rdy\r\n", b"A: b\r\n\r\nbo\r\ndy\r\n"),
        (b"A: b\r\n\r\nbo\n\rdy", b"A: b\r\n\r\nbo\r\n\r\ndy\r\n"),
        (b"A: b\r\n\r\nbody", b"A: b\r\n\r\nbody\r\n"),
    ],
)
def test_line_endings_become_crlf(raw: bytes, normal: bytes) -> None:
    assert mxdkim.normalise_line_endings(raw) == normal
