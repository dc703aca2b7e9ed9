"""Parsing hostile and old-fashioned mail: charsets, file names, broken MIME."""

from __future__ import annotations

import base64
import quopri

import pytest

from mxdesk.store.decode import MAX_FILENAME, decode_text, safe_filename
from mxdesk.store.parse import (
    MAX_ADDRESSES,
    MAX_PARTS,
    MAX_REFERENCES,
    MAX_SUBJECT,
    message_ids,
    parse_message,
    queue_id_of,
)


def mime(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def text_part(charset: str, cte: str, payload: bytes) -> bytes:
    return mime(
        f"From: a@example.com\nContent-Type: text/plain; charset={charset}\n"
        f"Content-Transfer-Encoding: {cte}",
        payload,
    )


@pytest.mark.parametrize(
    ("charset", "cte", "text"),
    [
        ("iso-8859-1", "quoted-printable", "Ação não"),
        ("ISO-8859-1", "base64", "Ação não"),
        ("windows-1252", "quoted-printable", "“Ação” custa 10 €"),
        ("utf-8", "base64", "Ação não “ok” €"),
        ("utf-8", "quoted-printable", "Ação não"),
        ("utf-8", "8bit", "Ação não"),
        # Mail labelled Latin-1 often carries Windows-1252 curly quotes.
        ("iso-8859-1", "quoted-printable", "“Ação”"),
    ],
)
def test_body_charsets(charset: str, cte: str, text: str) -> None:
    codec = "cp1252" if charset.lower() == "iso-8859-1" else charset
    raw = text.encode(codec)
    payload = {"base64": base64.encodebytes, "quoted-printable": quopri.encodestring}.get(
        cte, lambda b: b
    )(raw)
    parsed = parse_message(text_part(charset, cte, payload))
    assert parsed.text_body.strip() == text
    assert parsed.defects == ()


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?b?" + base64.b64encode("Ação não".encode()).decode() + "?=",
        "=?UTF-8?Q?A=C3=A7=C3=A3o_n=C3=A3o?=",
        "=?iso-8859-1?q?A=E7=E3o?= =?iso-8859-1?q?_n=E3o?=",
        "=?windows-1252?Q?A=E7=E3o_n=E3o?=",
    ],
)
def test_encoded_word_subjects(subject: str) -> None:
    parsed = parse_message(mime(f"Subject: {subject}\nFrom: a@example.com", b"x"))
    assert parsed.subject == "Ação não"


def test_encoded_word_display_name_and_raw_8bit_headers() -> None:
    raw = (
        b"From: =?windows-1252?Q?Jo=E3o_=93Z=E9=94?= <Joao@Example.COM>\r\n"
        b"Subject: A\xe7\xe3o em Latin-1 cru\r\n"
        b'To: suporte@marca.example, "Silva, Ana" <ana@example.com>\r\n\r\nx'
    )
    parsed = parse_message(raw)
    assert (parsed.from_name, parsed.from_addr) == ("João “Zé”", "joao@example.com")
    assert parsed.subject == "Ação em Latin-1 cru"
    assert parsed.to_addrs == ("suporte@marca.example", "ana@example.com")


def test_unknown_charset_falls_back_and_is_recorded() -> None:
    parsed = parse_message(text_part("x-klingon", "8bit", "Ação".encode("latin-1")))
    assert parsed.text_body.strip() == "Ação"
    assert any("unknown charset 'x-klingon'" in d for d in parsed.defects)
    parsed = parse_message(text_part("x-klingon", "8bit", "Ação".encode()))
    assert parsed.text_body.strip() == "Ação"
    bogus = parse_message(mime("Subject: =?x-bogus?q?A=E7=E3o?=", b""))
    assert bogus.subject == "Ação"


def test_text_that_does_not_fit_its_charset_is_kept() -> None:
    text, note = decode_text("Ação".encode("latin-1"), "utf-8")
    assert text == "A\ufffd\ufffdo" and note and "invalid bytes" in note
    assert decode_text(b"\x81", "windows-1252") == ("\x81", None)
    assert decode_text(b"abc", "base64")[0] == "abc"  # not a charset: guessed instead


def multipart(*parts: bytes, boundary: str = "B", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    if close:
        body += b"--" + boundary.encode() + b"--\r\n"
    return mime(f"From: a@example.com\nContent-Type: multipart/mixed; boundary={boundary}", body)


def attachment(filename_param: str, content: bytes = b"data") -> bytes:
    return mime(
        "Content-Type: application/octet-stream\n"
        f"Content-Disposition: attachment; {filename_param}\n"
        "Content-Transfer-Encoding: base64",
        base64.encodebytes(content),
    )


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ('filename="../../etc/passwd"', "passwd"),
        ('filename="..\\\\..\\\\boot.ini"', "boot.ini"),
        ('filename=".bashrc"', "bashrc"),
        ("filename*=utf-8''a%00b%0D%0Ac.txt", "ab c.txt"),
        ("filename*=utf-8''evil%E2%80%AEtxt.exe", "eviltxt.exe"),
        ("filename*=utf-8''..%2F..%2F", "attachment-2"),
        ("filename*=iso-8859-1''Relat%F3rio.pdf", "Relatório.pdf"),
        ('filename="=?utf-8?q?Relat=C3=B3rio=2Epdf?="', "Relatório.pdf"),
    ],
)
def test_hostile_attachment_names_are_made_safe(param: str, expected: str) -> None:
    parsed = parse_message(multipart(attachment(param)))
    (found,) = parsed.attachments
    assert found.filename == expected
    assert found.content == b"data"


def test_long_file_names_are_bounded_and_keep_their_extension() -> None:
    name = safe_filename("a" * 5000 + ".pdf", "attachment-1")
    assert len(name) == MAX_FILENAME and name.endswith(".pdf")
    assert len(safe_filename("b" * 5000, "x")) == MAX_FILENAME
    assert safe_filename("\x00\r\n..", "attachment-3") == "attachment-3"


def test_bodies_and_attachments_are_told_apart() -> None:
    alternative = mime(
        "Content-Type: multipart/alternative; boundary=A",
        b"--A\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b"--A\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--A--\r\n",
    )
    notes = mime("Content-Type: text/plain\nContent-Disposition: attachment", b"notes")
    parsed = parse_message(multipart(alternative, notes, attachment('filename="a.pdf"')))
    assert parsed.text_body.strip() == "plain"
    assert parsed.html_body.strip() == "<p>html</p>"
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("attachment-5", "text/plain"),
        ("a.pdf", "application/octet-stream"),
    ]


def test_missing_close_boundary_keeps_the_parts_and_records_it() -> None:
    text = b"Content-Type: text/plain\r\n\r\ncorpo"
    parsed = parse_message(multipart(text, attachment('filename="x.bin"'), close=False))
    assert parsed.text_body.strip() == "corpo"
    assert [a.filename for a in parsed.attachments] == ["x.bin"]
    assert any("CloseBoundaryNotFoundDefect" in d for d in parsed.defects)


def test_bad_base64_is_stored_with_a_defect() -> None:
    parsed = parse_message(text_part("utf-8", "base64", b"w6dh!!!w6M=x\r\n"))
    assert "ç" in parsed.text_body
    assert any("Base64" in d for d in parsed.defects)


def test_garbage_headers_do_not_raise() -> None:
    raw = (
        b"From: <<<>>>@@ bad\r\nSubject: =?utf-8?b?!!!?= =?utf-8?q?unterminated\r\n"
        b'Content-Type: text/plain; charset="utf-8\r\nMessage-ID: not even an id\r\n'
        b"References: " + b"<r@x> " * 1000 + b"\r\n"
        b"\x00\x01 garbage header line\r\nX-After: kept as body\r\n\r\nbody"
    )
    parsed = parse_message(raw)
    assert parsed.from_addr == ""
    assert parsed.message_id is None
    assert len(parsed.references) == MAX_REFERENCES
    assert "X-After: kept as body" in parsed.text_body
    assert any("MissingHeaderBodySeparatorDefect" in d for d in parsed.defects)
    assert "message: From: no valid address" in parsed.defects


def test_multipart_without_boundary_keeps_the_text() -> None:
    parsed = parse_message(mime("Content-Type: multipart/mixed", b"no boundary here"))
    assert parsed.text_body == "no boundary here"
    assert any("NoBoundaryInMultipartDefect" in d for d in parsed.defects)


def test_absurd_nesting_is_kept_as_text_without_raising() -> None:
    level = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
    nested = b"".join(level % (i, i) for i in range(3000))
    parsed = parse_message(b"Subject: fundo\r\nFrom: a@example.com\r\n" + nested + b"\r\nx")
    assert parsed.subject == "fundo"
    assert parsed.from_addr == "a@example.com"
    assert parsed.defects


def test_number_of_parts_is_bounded() -> None:
    parts = [b"Content-Type: application/x-y\r\n\r\nz" for _ in range(MAX_PARTS + 50)]
    parsed = parse_message(multipart(*parts))
    assert len(parsed.attachments) < MAX_PARTS
    assert any(f"more than {MAX_PARTS}" in d for d in parsed.defects)


def test_header_bounds() -> None:
    many = ", ".join(f"p{i}@example.com" for i in range(MAX_ADDRESSES * 3))
    parsed = parse_message(mime(f"Subject: {'s' * 5000}\nCc: {many}", b""))
    assert len(parsed.subject) == MAX_SUBJECT
    assert len(parsed.cc_addrs) == MAX_ADDRESSES


def test_queue_id_only_from_the_first_header_line() -> None:
    assert queue_id_of(b"X-Mxdesk-Queue-Id: 4Fq.x-9\r\nFrom: a@b\r\n\r\n") == "4Fq.x-9"
    assert queue_id_of(b"x-mxdesk-queue-id:Q1\nFrom: a@b\n\n") == "Q1"
    assert queue_id_of(b"From: a@b\r\nX-Mxdesk-Queue-Id: Q1\r\n\r\n") is None
    assert queue_id_of(b"X-Mxdesk-Queue-Id: Q1; rm -rf\r\n\r\n") is None
    assert queue_id_of(b"X-Mxdesk-Queue-Id: " + b"Q" * 65 + b"\r\n\r\n") is None


def test_message_ids() -> None:
    assert message_ids("<a@b> junk <c@d>") == ["<a@b>", "<c@d>"]
    assert message_ids("bare@example.com") == ["<bare@example.com>"]
    assert message_ids("no id here") == []
    assert message_ids("<a\x1b@b>") == []


def test_delivery_report_names_the_original() -> None:
    report = mime(
        "From: MAILER-DAEMON@example.com\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=R",
        b"--R\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        b"Final-Recipient: rfc822; c@example.com\r\nAction: failed\r\n\r\n"
        b"--R\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: <orig@example.com>\r\n"
        b"Subject: s\r\n\r\nbody\r\n--R--\r\n",
    )
    parsed = parse_message(report)
    assert parsed.content_type == "multipart/report"
    assert parsed.report_refs == ("<orig@example.com>",)
    assert parsed.text_body.strip() == "failed"
    status, original = parsed.attachments
    assert status.content_type == "message/delivery-status" and status.filename.endswith(".txt")
    assert original.filename.endswith(".eml") and b"<orig@example.com>" in original.content


def test_read_report_original_message_id() -> None:
    mdn = mime(
        "Content-Type: multipart/report; report-type=disposition-notification; boundary=R",
        b"--R\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Reporting-UA: x\r\nOriginal-Message-ID: <seen@example.com>\r\n\r\n--R--\r\n",
    )
    assert parse_message(mdn).report_refs == ("<seen@example.com>",)
    # A forwarded message outside a report names nothing.
    forward = multipart(b"Content-Type: message/rfc822\r\n\r\nMessage-ID: <f@x>\r\n\r\nb")
    assert parse_message(forward).report_refs == ()


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@b.example\r\nSubject: Ol\xc3\xa1\r\n\r\nCorpo com acento: \xc3\xa1\r\n.\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"T2zDoSwgbXVuZG8K\r\n",
        b"Content-Type: text/html\r\n\r\n<p>x</p>\r\n\r\n\r\n",
        b"Subject: x\r\nnot a header\r\n\r\nbody\r\n",  # no empty line where the headers end
        b"Subject: x\n\nLF only\r\n\r\nthen CRLF\r\n",
        b"Subject: x\r\r\n\r\nbare CR\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nparte\r\n--b--\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ncorpo\r\n",
        b"Subject: headers only\r\n\r\n",
    ],
)
def test_a_body_taken_whole_reads_as_the_feed_parser_reads_it(raw: bytes) -> None:
    assert parse_message(raw) == parse_message(raw, whole=True)
