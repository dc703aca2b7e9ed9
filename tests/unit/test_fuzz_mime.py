"""Property-based fuzzing of the store's MIME parsing, and of messages written and read back.

Bounded for CI (a fixed number of examples each, derandomized, no example database): about a
minute on two slow CPUs.
"""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxdesk.store.decode import MAX_FILENAME, safe_filename, without_controls
from mxdesk.store.parse import (
    MAX_ADDRESSES,
    MAX_DEFECT_TEXT,
    MAX_DEFECTS,
    MAX_REFERENCES,
    MAX_SHORT_HEADER,
    MAX_SUBJECT,
    Attachment,
    ParsedMessage,
    parse_message,
)

FUZZ = settings(
    max_examples=1000,
    deadline=timedelta(seconds=5),  # catches a parse gone quadratic, not a busy machine
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_well_formed(parsed: ParsedMessage) -> None:
    """What the store and `ticket show` rely on, whatever the input was."""
    assert isinstance(parsed, ParsedMessage)
    texts = [
        parsed.from_addr,
        parsed.from_name,
        parsed.date,
        parsed.subject,
        parsed.text_body,
        parsed.html_body,
        parsed.auto_submitted,
        parsed.precedence,
        parsed.content_type,
        *parsed.to_addrs,
        *parsed.cc_addrs,
        *parsed.references,
        *parsed.defects,
        *parsed.report_refs,
        *[i for i in (parsed.message_id, parsed.in_reply_to) if i is not None],
    ]
    for text in texts:
        assert isinstance(text, str)
        text.encode("utf-8")  # SQLite refuses surrogates: the message would never be filed
    for one_line in (parsed.subject, parsed.from_name, parsed.date, *parsed.defects):
        assert one_line == without_controls(one_line) and "\n" not in one_line
    assert len(parsed.subject) <= MAX_SUBJECT
    assert len(parsed.from_name) <= MAX_SHORT_HEADER
    assert len(parsed.to_addrs) <= MAX_ADDRESSES and len(parsed.cc_addrs) <= MAX_ADDRESSES
    assert len(parsed.references) <= MAX_REFERENCES
    assert len(parsed.defects) <= MAX_DEFECTS
    assert all(len(d) <= MAX_DEFECT_TEXT for d in parsed.defects)
    for addr in (parsed.from_addr, *parsed.to_addrs, *parsed.cc_addrs):
        assert addr == "" or (addr.count("@") >= 1 and addr == addr.lower())
    for attachment in parsed.attachments:
        assert isinstance(attachment, Attachment)
        assert isinstance(attachment.content, bytes)
        name = attachment.filename
        assert name and len(name) <= MAX_FILENAME
        assert "/" not in name and not name.startswith(".") and name == without_controls(name)


@FUZZ
@given(st.binary(max_size=3000))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    assert_well_formed(parse_message(raw))
    assert parse_message(raw) == parse_message(raw, whole=True)


# -- messages shaped like MIME, broken in every way at once -------------------------------------

NEWLINES = st.sampled_from(["\r\n", "\n", "\r", "\r\r\n"])
NASTY_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("=?:;,<>()\"\\@ \t*%'[]-.")),
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\x85", "\u202e", "\ufeff", "\udce4"]),
    ),
    max_size=40,
)
ENCODED_WORDS = st.builds(
    lambda charset, enc, text: f"=?{charset}?{enc}?{text}?=",
    st.sampled_from(["utf-8", "iso-8859-1", "x-unknown", "utf-7", "", "unicode-escape"]),
    st.sampled_from(["q", "b", "Q", "B", "x", ""]),
    NASTY_TEXT,
)
HEADER_VALUE = st.lists(st.one_of(NASTY_TEXT, ENCODED_WORDS), max_size=5).map(" ".join)
HEADER_NAMES = st.sampled_from(
    [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Auto-Submitted",
        "Original-Message-ID",
        "MIME-Version",
        "X-Junk",
    ]
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "text/html",
            "text/plain; charset=x-unknown",
            "text/plain; charset=utf-8",
            "message/rfc822",
            "message/delivery-status",
            "text/rfc822-headers",
            "application/octet-stream; name=x.bin",
            "multipart/mixed",
            "multipart/report; report-type=delivery-status",
        ]
    ),
    HEADER_VALUE,
)
ENCODINGS = st.sampled_from(["", "base64", "quoted-printable", "7bit", "8bit", "x-uue", "base65"])


@st.composite
def mime_messages(draw: st.DrawFn, depth: int = 0) -> str:
    nl = draw(NEWLINES)
    headers = [
        f"{draw(HEADER_NAMES)}: {draw(HEADER_VALUE)}" for _ in range(draw(st.integers(0, 4)))
    ]
    ctype = draw(CONTENT_TYPES)
    body: str
    if depth < 3 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["b", "bb", "b b", "=_x", ""]))
        subtype = draw(st.sampled_from(["mixed", "report", "alternative"]))
        headers.append(f'Content-Type: multipart/{subtype}; boundary="{boundary}"')
        children = draw(st.lists(mime_messages(depth + 1), max_size=3))
        close = draw(st.sampled_from([f"--{boundary}--", "", f"--{boundary}"]))
        body = nl.join([draw(NASTY_TEXT), *[f"--{boundary}{nl}{c}" for c in children], close])
    else:
        headers.append(f"Content-Type: {ctype}")
        headers.append(f"Content-Transfer-Encoding: {draw(ENCODINGS)}")
        headers.append(f"Content-Disposition: attachment; filename={draw(HEADER_VALUE)}")
        body = draw(
            st.one_of(NASTY_TEXT, st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
        )
    draw(st.randoms()).shuffle(headers)
    return nl.join(headers) + nl + draw(st.sampled_from([nl, ""])) + body


@FUZZ
@given(mime_messages(), st.data())
def test_mime_shaped_messages_parse_without_raising(text: str, data: st.DataObject) -> None:
    raw = text.encode("utf-8", "surrogateescape")
    cut = data.draw(st.integers(0, len(raw)), label="truncated at")
    assert_well_formed(parse_message(raw))
    assert_well_formed(parse_message(raw[:cut]))
    # A body taken as it is reads the same as one the feed parser went through line by line.
    assert parse_message(raw) == parse_message(raw, whole=True)
    assert parse_message(raw[:cut]) == parse_message(raw[:cut], whole=True)


# -- written by the email package, read back by the store ---------------------------------------

READABLE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=60)
NAMES = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=60
)


def one_line(text: str) -> str:
    return " ".join(without_controls(text).split())


@settings(FUZZ, max_examples=300)
@given(
    subject=READABLE,
    body=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300),
    files=st.lists(st.tuples(NAMES, st.binary(min_size=1, max_size=300)), max_size=3),
    inner_subject=st.none() | READABLE,
)
def test_messages_written_by_the_email_package_read_back_the_same(
    subject: str, body: str, files: list[tuple[str, bytes]], inner_subject: str | None
) -> None:
    msg = EmailMessage()
    msg["From"] = "Ana <ana@example.com>"
    msg["Subject"] = subject
    msg.set_content(body)
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    if inner_subject is not None:
        inner = EmailMessage()
        inner["Subject"] = inner_subject
        inner.set_content("inner")
        msg.add_attachment(inner)
    parsed = parse_message(msg.as_bytes(policy=SMTP))
    assert_well_formed(parsed)
    assert parsed.subject == one_line(subject)[:MAX_SUBJECT]
    assert parsed.from_addr == "ana@example.com" and parsed.from_name == "Ana"
    expected_body = without_controls(body.replace("\r\n", "\n").replace("\r", "\n"))
    assert parsed.text_body.rstrip("\n") == expected_body.rstrip("\n")
    stored = list(parsed.attachments)
    if inner_subject is not None:
        eml = stored.pop()
        assert eml.content_type == "message/rfc822"
        assert parse_message(eml.content).subject == one_line(inner_subject)
    assert [(a.filename, a.content) for a in stored] == [
        (safe_filename(name, f"attachment-{i}"), data) for i, (name, data) in enumerate(files, 3)
    ]
