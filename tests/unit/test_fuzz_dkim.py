"""mxdesk's own relaxed canonicalisation against dkimpy's: any header fields and body (folded
lines, runs of spaces and tabs, trailing blank lines, repeated and missing signed fields) signed
by mxdesk verifies with dkimpy, and dkimpy's canonical body is the same bytes."""

from __future__ import annotations

import dkim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxdesk.gateway import dkim as mxdkim

WSP = st.sampled_from([" ", "\t", "  ", " \t "])
WORD = st.text(alphabet="abcXYZ019<>@.;:=-_\"'()", min_size=1, max_size=12)
NAMES = st.sampled_from(
    ["From", "To", "Cc", "Subject", "Date", "Message-ID", "References", "MIME-Version",
     "Content-Type", "X-Outro", "subject", "FROM", "Reply-To", "In-Reply-To"]
)  # fmt: skip


@st.composite
def values(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(WORD, WSP, st.booleans()), min_size=1, max_size=6))
    out = draw(st.sampled_from(["", " ", "  ", "\t"]))
    for word, space, fold in parts:
        out += word + ("\r\n" + space if fold else space)
    return out.rstrip("\r\n") + draw(st.sampled_from(["", " ", "\t "]))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(NAMES, values()), min_size=1, max_size=10))
    # No space before the colon: obsolete syntax (RFC 5322 §4.5) that dkimpy cannot parse.
    head = "".join(f"{n}:{v}\r\n" for n, v in fields)
    lines = draw(st.lists(st.tuples(WORD, WSP, WSP), max_size=8))
    body = "".join(
        f"{draw(st.sampled_from(['', ' ', chr(9)]))}{w}{a}{w}{b}\r\n" for w, a, b in lines
    )
    body += draw(st.sampled_from(["", "\r\n", "\r\n\r\n", " \r\n\t\r\n", "fim"]))
    return (head + "\r\n" + body).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
def test_signed_by_mxdesk_verifies_with_dkimpy(
    message: bytes, dkim_keys: list[mxdkim.DkimKey]
) -> None:
    key = dkim_keys[1]  # Ed25519: fast, and the same canonicalisation as RSA
    records = {f"{key.selector}._domainkey.{key.domain}.".encode(): key.dns_txt().encode()}
    signed = mxdkim.sign(message, [key])
    assert dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: records.get(name)), signed
    body = signed.partition(b"\r\n\r\n")[2]
    relaxed = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert mxdkim.relaxed_body(body) == relaxed.canonicalize_body(body)


def test_a_header_value_holding_nul_is_canonicalised_on_its_own(
    dkim_keys: list[mxdkim.DkimKey],
) -> None:
    # The values are canonicalised together, joined by NUL; one that holds a NUL must not
    # be split in two (nor shift the others).
    key = dkim_keys[1]
    records = {f"{key.selector}._domainkey.{key.domain}.".encode(): key.dns_txt().encode()}
    message = (
        b"From: a@x.example\r\nSubject: um\x00dois  \r\n\tfim\r\nTo:  b@y.example \r\n"
        b"Subject: outro\r\n\r\ncorpo\r\n"
    )
    signed = mxdkim.sign(message, [key])
    assert dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: records.get(name))
    assert mxdkim._relaxed_values([b" um\x00dois  \r\n\tfim", b"  b@y.example "]) == [
        b"um\x00dois fim",
        b"b@y.example",
    ]
    # Without a NUL: one pass, each value's ends trimmed, an all-blank value empty.
    assert mxdkim._relaxed_values([b" a ", b" \t ", b"b\r\n\t c  ", b"d"]) == [
        b"a",
        b"",
        b"b c",
        b"d",
    ]
