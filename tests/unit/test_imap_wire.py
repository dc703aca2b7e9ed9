"""The IMAP response parser, the stream's bounds and timeout, folder names and FETCH data."""

from __future__ import annotations

import asyncio
import base64
import calendar
import time

import pytest

from mxdesk.gateway.fetch import imapdata, imapwire, utf7
from mxdesk.gateway.fetch.errors import ConnectionLost, FetchTimeout, ProtocolError
from mxdesk.gateway.fetch.imapdata import Literal
from mxdesk.gateway.fetch.imapwire import ImapStream, Response, parse_response


def parse(*lines: bytes, literals: tuple[bytes, ...] = ()) -> Response:
    return parse_response(list(lines), list(literals))


# -- the parser -----------------------------------------------------------------------------


def test_a_tagged_status_with_a_response_code() -> None:
    r = parse(b"A0001 NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert (r.tag, r.name, r.code, r.code_arg) == ("A0001", "NO", "AUTHENTICATIONFAILED", "")
    assert r.text == "Authentication failed."
    assert r.status == "NO [AUTHENTICATIONFAILED] Authentication failed."


def test_an_untagged_ok_with_a_code_argument() -> None:
    r = parse(b"* OK [UIDVALIDITY 1796147769] UIDs valid")
    assert (r.tag, r.name, r.code, r.code_arg, r.text) == (
        "*",
        "OK",
        "UIDVALIDITY",
        "1796147769",
        "UIDs valid",
    )


def test_numbered_data_and_a_continuation() -> None:
    assert parse(b"* 4 EXISTS") == Response("*", "EXISTS", 4)
    assert parse(b"+ idling") == Response("+", text="idling")
    assert parse(b"+") == Response("+")


def test_quoted_strings_with_escapes_nil_and_nested_lists() -> None:
    r = parse(rb'* LIST (\HasNoChildren (a "b c" NIL)) "/" "Sa\"y \\ hi"')
    assert r.name == "LIST"
    assert r.values == [[b"\\HasNoChildren", [b"a", b"b c", None]], b"/", b'Sa"y \\ hi']
    # A quoted "NIL" is a string, not NIL.
    assert parse(b'* X "NIL" NIL ()').values == [b"NIL", None, []]


def test_a_fetch_with_flags_before_body_and_two_literals() -> None:
    header = b"Message-ID: <a@b>\r\n\r\n"
    body = b"Subject: x\r\n\r\n\xe7\xe3 8-bit {5}\r\n)"
    r = parse(
        rb"* 12 FETCH (FLAGS (\Seen $Forwarded) UID 40 BODY[HEADER.FIELDS (MESSAGE-ID)] {21}",
        b" BODY[] {%d}" % len(body),
        b' INTERNALDATE " 2-Dec-2026 03:04:05 +0000")',
        literals=(header, body),
    )
    assert (r.name, r.number) == ("FETCH", 12)
    items = imapdata.fetch_items(r)
    assert items == {
        "FLAGS": [b"\\Seen", b"$Forwarded"],
        "UID": b"40",
        "BODY[HEADER.FIELDS (MESSAGE-ID)]": header,
        "BODY[]": body,
        "INTERNALDATE": b" 2-Dec-2026 03:04:05 +0000",
    }


def test_a_non_synchronizing_literal_and_extra_spaces_are_read() -> None:
    r = parse(b"* SEARCH 3 5 ", literals=())
    assert r.values == [b"3", b"5"]
    r = parse(b"* 1 FETCH (BODY[] {3+}", b")", literals=(b"abc",))
    assert r.values == [[b"BODY[]", b"abc"]]


@pytest.mark.parametrize(
    "lines",
    [
        [b"HTTP/1.1 400 Bad Request"],
        [b"garbage"],
        [b""],
        [b"* "],
        [b"A1 FETCH (UID 1)"],  # data with a tag
        [b"A1 BYE bye"],
        [b"* 1 FETCH (UID 1"],  # unclosed list
        [b"* 1 FETCH (UID 1))"],
        [b'* LIST () "/" "open'],
        [b'* LIST () "/" "bad \\x escape"'],
        [b'* X "a""b"'],
        [b"* X a{3}b"],
        [b"* OK [CODE without end"],
        [b"* 1 FETCH (BODY[HEADER.FIELDS (A) {3}"],
        [b"+idling"],
    ],
)
def test_garbage_is_a_protocol_error(lines: list[bytes]) -> None:
    with pytest.raises(ProtocolError, match="cannot parse"):
        parse_response(lines, [b"abc"] * (len(lines) - 1))


# -- the stream -----------------------------------------------------------------------------


class _NoWriter:
    transport = None


def _stream(data: bytes = b"", timeout: float = 5.0, eof: bool = False) -> ImapStream:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return ImapStream(reader, _NoWriter(), "imap.example.com:993", timeout)  # type: ignore[arg-type]


async def test_a_response_with_literals_across_chunks() -> None:
    body = b"x" * 10_000 + b"\r\n" + bytes(range(256))
    stream = _stream(b"* 1 FETCH (UID 7 BODY[] {%d}\r\n%s)\r\nA1 OK done\r\n" % (len(body), body))
    r = await stream.read()
    assert imapdata.fetch_items(r)["BODY[]"] == body
    assert (await stream.read()).status == "OK done"


async def test_a_line_at_the_bound_is_read_and_one_byte_more_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imapwire, "MAX_LINE", 100)
    line = b"* SEARCH " + b"1 " * 45 + b"1"
    assert len(line) == 100
    assert len((await _stream(line + b"\r\n").read()).values) == 46
    with pytest.raises(ProtocolError, match="over 100 bytes"):
        await _stream(line + b"2\r\n").read()


async def test_a_literal_at_the_bound_is_read_and_one_byte_more_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imapwire, "MAX_LITERAL", 10)
    r = await _stream(b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n").read()
    assert r.values == [[b"BODY[]", b"0123456789"]]
    stream = _stream(b"* 1 FETCH (BODY[] {11}\r\n0123456789x)\r\n")
    with pytest.raises(ProtocolError, match="11 bytes"):
        await stream.read()
    # The connection is over: nothing more is read from it.
    with pytest.raises(ConnectionLost, match="closed"):
        await stream.read()


async def test_eof_in_a_literal_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost, match="closed the connection"):
        await _stream(b"* 1 FETCH (BODY[] {100}\r\nabc", eof=True).read()


async def test_a_literal_that_keeps_flowing_outlasts_the_timeout_one_that_stalls_does_not() -> None:
    timeout = 0.3
    stream = _stream(b"* 1 FETCH (BODY[] {20}\r\n", timeout=timeout)
    reader: asyncio.StreamReader = stream._reader

    async def trickle(chunks: int) -> None:
        for _ in range(chunks):
            await asyncio.sleep(timeout / 3)  # the server is slow, never silent for `timeout`
            reader.feed_data(b"x")

    feeding = asyncio.create_task(trickle(10))
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"no answer to the greeting for 0\.3s"):
        await stream.read()  # 10 of 20 bytes, then silence
    assert timeout * 3 < time.monotonic() - started < timeout * 3 + timeout * 2
    await feeding


# -- folder names and FETCH data ------------------------------------------------------------


@pytest.mark.parametrize(
    ("unicode", "wire"),
    [
        ("Suporte/Ação", "Suporte/A&AOcA4w-o"),
        ("&", "&-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("INBOX", "INBOX"),
        ("日本語", "&ZeVnLIqe-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
        ("😀", "&2D3eAA-"),  # outside the BMP: a surrogate pair
        ("", ""),
    ],
)
def test_modified_utf7_round_trips(unicode: str, wire: str) -> None:
    assert utf7.encode(unicode) == wire
    assert utf7.decode(wire) == unicode


@pytest.mark.parametrize("bad", ["A&AOc", "&AOc/A4w-", "&A-", "Ação", "&AOc=-"])
def test_malformed_modified_utf7_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="folder name"):
        utf7.decode(bad)


def test_strings_are_quoted_or_sent_as_literals() -> None:
    assert imapdata.astring("s3nha:x") == b'"s3nha:x"'
    for password in ['a"b', "a\\b", "senhaç", "line\r\nbreak"]:
        assert imapdata.astring(password) == Literal(password.encode())
    assert imapdata.folder_name("Suporte/Ação") == b'"Suporte/A&AOcA4w-o"'


def test_uid_sets() -> None:
    assert imapdata.uid_set([10, 1, 2, 3, 7, 9, 3]) == b"1:3,7,9:10"
    assert imapdata.uid_set([imapdata.MAX_UID]) == b"4294967295"
    for bad in ([0], [imapdata.MAX_UID + 1]):
        with pytest.raises(ValueError, match="not between"):
            imapdata.uid_set(bad)


def test_flag_lists_take_flag_names_only() -> None:
    assert imapdata.flag_list("\\Seen \\Deleted") == b"(\\Seen \\Deleted)"
    with pytest.raises(ValueError, match="flag names"):
        imapdata.flag_list("\\Seen) (x")


def test_internaldate() -> None:
    expected = calendar.timegm((1996, 7, 17, 9, 44, 25, 0, 0, 0))
    assert imapdata.internaldate(b"17-Jul-1996 02:44:25 -0700") == expected
    assert imapdata.internaldate(b" 2-Dec-2026 03:04:05 +0130") == calendar.timegm(
        (2026, 12, 2, 1, 34, 5, 0, 0, 0)
    )
    with pytest.raises(ValueError, match="INTERNALDATE"):
        imapdata.internaldate(b"17-Jux-1996 02:44:25 -0700")


def test_message_id_is_unfolded_and_stripped() -> None:
    header = b"message-id:\r\n <folded@example.com> \r\n\r\n"
    assert imapdata.message_id(header) == "<folded@example.com>"
    assert imapdata.message_id(b"\r\n") == ""
    assert imapdata.message_id(None) == ""


def test_the_xoauth2_error_challenge_gives_its_status() -> None:
    challenge = base64.b64encode(b'{"status":"401","schemes":"Bearer","scope":"x"}').decode()
    assert imapdata.sasl_error(challenge) == "token error: status 401"
    assert "not base64 JSON" in imapdata.sasl_error("%%%")
