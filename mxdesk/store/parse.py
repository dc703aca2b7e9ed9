"""Parsing a delivered message into plain values, tolerating any malformed MIME."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.feedparser import BytesFeedParser
from email.message import Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from typing import Any, TypeVar

from mxdesk.names import header_addresses
from mxdesk.store.decode import (
    decode_header_value,
    decode_text,
    raw_header_text,
    safe_filename,
    without_controls,
)

QUEUE_ID_HEADER = b"x-mxdesk-queue-id"
MAX_HEADER_CHARS = 8192
MAX_SUBJECT = 998
MAX_SHORT_HEADER = 200
MAX_ADDRESS = 254
MAX_ADDRESSES = 100
MAX_REFERENCES = 100
MAX_PARTS = 500
MAX_DEPTH = 30
MAX_DEFECTS = 100
MAX_DEFECT_TEXT = 300
# The email package's parser of structured headers (Content-Type, Content-Disposition …) takes
# time that grows with the square of a value's length: a file name of 10^4 encoded words took 7 s,
# 8 KB of '"' 2 s. So a header is parsed from its first MAX_PARSED_HEADER characters (enough for
# a file name of MAX_FILENAME characters in RFC 2231 encoding), and one message may spend
# PARSE_WORK, counted in characters squared (4 s at the slowest), however many parts it has.
MAX_PARSED_HEADER = 2048
PARSE_WORK = 400_000_000
# Each multipart level makes the feed parser test every later line against one more boundary:
# 400 levels over 300 KB took 8 s.
MAX_NESTING = 50
_QUEUE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MSGID = re.compile(r"<[^<>\s\x00-\x1f\x7f]{1,250}>")
_BARE_MSGID = re.compile(r"[^<>\s\x00-\x1f\x7f]{1,250}@[^<>\s\x00-\x1f\x7f]{1,250}")
# Whitespace (Unicode's too), controls and what would make an address ambiguous in a list.
_NOT_IN_ADDRESS = re.compile(r'[\s,;<>"\\\x00-\x1f]')
_REPORT_COPY_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers")
_EML_TYPES = ("message/rfc822", "message/global")
T = TypeVar("T")


class TooCostly(Exception):
    """A message's MIME structure is beyond a parsing bound; it is kept as text."""


class _ParseWork:
    """One message's parsed structured headers, and the work it may still spend on more."""

    def __init__(self) -> None:
        self.left = PARSE_WORK
        self.parsed: dict[tuple[str, str], Any] = {}


class _BoundedPolicy(EmailPolicy):
    """policy.default with the bounds above: each header value parsed once per message, from
    its first MAX_PARSED_HEADER characters, while the message's work lasts."""

    work: _ParseWork | None = None

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if self.work is None or hasattr(value, "name"):  # no work, or parsed already
            return super().header_fetch_parse(name, value)
        key = (name, value[:MAX_PARSED_HEADER])
        if key not in self.work.parsed:
            self.work.left -= len(key[1]) ** 2 + 4096  # 4096: the cost of a short value
            if self.work.left < 0:
                raise TooCostly(f"headers too costly to parse (more than {PARSE_WORK} units)")
            self.work.parsed[key] = super().header_fetch_parse(*key)
        return self.work.parsed[key]


_POLICY = _BoundedPolicy()
# Attached messages are written back as they came: refolding a long header parses it whole.
_CRLF = _POLICY.clone(linesep="\r\n", refold_source="none")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class ParsedMessage:
    """What the store keeps of one message; every text bounded and decoded."""

    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    from_addr: str = ""
    from_name: str = ""
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    date: str = ""
    subject: str = ""
    text_body: str = ""
    html_body: str = ""
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = ()
    auto_submitted: str = ""
    precedence: str = ""
    content_type: str = "text/plain"
    # Message-IDs a delivery or read report names: its copy of the original, Original-Message-ID.
    report_refs: tuple[str, ...] = field(default=())


def queue_id_of(raw: bytes) -> str | None:
    """The gateway's queue id, read only from the first header line: later ones may be forged."""
    first = raw[:200].split(b"\n", 1)[0].rstrip(b"\r")
    name, sep, value = first.partition(b":")
    if not sep or name.strip().lower() != QUEUE_ID_HEADER:
        return None
    text = value.strip().decode("ascii", "replace")
    return text if _QUEUE_ID.fullmatch(text) else None


def message_ids(text: str, limit: int = MAX_REFERENCES) -> list[str]:
    """The <id> tokens of a Message-ID, In-Reply-To or References value, the last `limit` kept."""
    # Raw 8-bit bytes arrive as surrogate escapes, which no database can store.
    text = raw_header_text(text)
    found = _MSGID.findall(text)
    if not found:
        bare = text.strip()
        found = [f"<{bare}>"] if _BARE_MSGID.fullmatch(bare) else []
    return found[-limit:]


def parse_message(raw: bytes, *, whole: bool = False) -> ParsedMessage:
    """Parses raw message bytes; never raises, a message it cannot parse is kept as text.
    whole: every line through the feed parser (what the faster way must equal; see _parse)."""
    try:
        return _Builder(_parse(raw, whole=whole)).build()
    except Exception as exc:  # a parser bug or absurd nesting must not lose the message
        return _unparsed(raw, exc)


def _bounded() -> _BoundedPolicy:
    """A policy for parsing one message, with its own work."""
    bounded = _POLICY.clone()
    object.__setattr__(bounded, "work", _ParseWork())  # a policy is read-only once made
    return bounded


def _parse(raw: bytes, *, whole: bool = False) -> Message:
    """The parsed message. One whose type is not multipart/* or message/* has its body taken
    as it is instead of line by line (the feed parser's own result, at a fraction of the cost:
    its headers are parsed alone, and only when that reads them all, up to the first empty
    line); whole: always the feed parser on everything."""
    end = -1 if whole else raw.find(b"\r\n\r\n")
    if end >= 0:
        msg = _feed(raw[: end + 4])
        if msg.get_payload() == "" and msg.get_content_maintype() not in ("multipart", "message"):
            msg.set_payload(raw[end + 4 :].decode("ascii", "surrogateescape"))
            return msg
    return _feed(raw)


def _feed(raw: bytes) -> Message:
    parser = BytesFeedParser(policy=_bounded())
    lines = getattr(parser, "_input", None)
    push = getattr(lines, "push_eof_matcher", None)
    stack = getattr(lines, "_eofstack", None)
    # Private to the email package (unchanged from 3.6 to 3.13); without them, no nesting bound.
    if push is not None and isinstance(stack, list):

        def bounded_push(matcher: Callable[[str], object]) -> None:
            if len(stack) >= MAX_NESTING:
                raise TooCostly(f"MIME nesting deeper than {MAX_NESTING}")
            push(matcher)

        lines.push_eof_matcher = bounded_push  # type: ignore[union-attr]
    parser.feed(raw)
    return parser.close()


def _unparsed(raw: bytes, exc: Exception) -> ParsedMessage:
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    why = str(exc) if isinstance(exc, TooCostly) else f"could not be parsed ({type(exc).__name__})"
    defect = f"message: {why}; kept as text"
    try:
        msg = BytesParser(policy=_bounded()).parsebytes(head + b"\n\n", headersonly=True)
        headers = _Builder(msg).header_fields()
    except Exception:
        headers = ParsedMessage()
    return replace(headers, text_body=decode_text(body, None)[0], defects=(defect,))


class _Builder:
    """Collects one parsed message's fields; a builder, so the walk can stay flat."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.headers: dict[str, str] = {}
        for name, value in msg.raw_items():
            self.headers.setdefault(name.lower(), str(value)[:MAX_HEADER_CHARS])
        self.defects: list[str] = []
        self.text: str | None = None
        self.html: str | None = None
        self.attachments: list[Attachment] = []
        self.report_refs: list[str] = []

    def header(self, name: str, limit: int = MAX_HEADER_CHARS) -> str:
        return decode_header_value(self.headers.get(name, ""))[:limit]

    def header_fields(self) -> ParsedMessage:
        from_name, from_addr = self.sender()
        message_id = message_ids(self.headers.get("message-id", ""))
        in_reply_to = message_ids(self.headers.get("in-reply-to", ""))
        return ParsedMessage(
            message_id=message_id[0] if message_id else None,
            in_reply_to=in_reply_to[0] if in_reply_to else None,
            references=tuple(message_ids(self.headers.get("references", ""))),
            from_addr=from_addr,
            from_name=from_name,
            to_addrs=tuple(a for _, a in self.addresses("to")),
            cc_addrs=tuple(a for _, a in self.addresses("cc")),
            date=self.header("date", MAX_SHORT_HEADER),
            subject=self.header("subject", MAX_SUBJECT),
            auto_submitted=self.header("auto-submitted", MAX_SHORT_HEADER).lower(),
            precedence=self.header("precedence", MAX_SHORT_HEADER).lower(),
            content_type=_content_type(self.msg),
        )

    def addresses(self, name: str) -> list[tuple[str, str]]:
        value = self.headers.get(name, "")
        found = header_addresses(raw_header_text(value), len(value) < MAX_HEADER_CHARS)
        if found is None and name != "from":  # From: has its own defect
            self.defect("message", f"{name.capitalize()}: malformed address list, none taken")
        out = []
        for display, addr in (found or [])[:MAX_ADDRESSES]:
            addr = addr.strip().lower()
            if _plain_address(addr):
                out.append((decode_header_value(display)[:MAX_SHORT_HEADER], addr))
        return out

    def sender(self) -> tuple[str, str]:
        found = self.addresses("from")
        if not found and "from" in self.headers:
            self.defect("message", "From: no valid address")
        return found[0] if found else ("", "")

    def build(self) -> ParsedMessage:
        fields = self.header_fields()
        self.walk()
        self.report_refs.extend(message_ids(self.headers.get("original-message-id", ""), 1))
        return replace(
            fields,
            text_body=self.text or "",
            html_body=self.html or "",
            attachments=tuple(self.attachments),
            defects=tuple(self.defects),
            report_refs=tuple(dict.fromkeys(self.report_refs)),
        )

    def walk(self) -> None:
        # Iterative with explicit bounds: Message.walk() recurses and hostile nesting is deep.
        stack: list[tuple[Message, int, str]] = [(self.msg, 0, "")]
        seen = 0
        while stack:
            part, depth, parent = stack.pop()
            seen += 1
            if seen > MAX_PARTS:
                self.defect("message", f"more than {MAX_PARTS} MIME parts; the rest is only raw")
                return
            ctype = _content_type(part)
            where = f"{'message' if seen == 1 else f'part {seen}'} ({ctype})"
            if part.is_multipart() and ctype.startswith("message/"):
                self.message_part(part, ctype, parent, seen)
            elif part.is_multipart() and depth < MAX_DEPTH:
                children = [p for p in part.get_payload() if isinstance(p, Message)]
                stack.extend((child, depth + 1, ctype) for child in reversed(children))
            elif part.is_multipart():
                self.defect(where, f"nesting deeper than {MAX_DEPTH}; the rest is only raw")
            else:
                self.leaf(part, ctype, parent, seen, where)
            # Decoding a payload adds its defects (bad base64 …) to the part: read them last.
            for defect in part.defects:
                self.defect(where, _describe(defect))

    def message_part(self, part: Message, ctype: str, parent: str, index: int) -> None:
        inner = [p for p in part.get_payload() if isinstance(p, Message)]
        if parent == "multipart/report":
            for sub in inner:
                name = "message-id" if ctype in _EML_TYPES else "original-message-id"
                self.report_refs.extend(message_ids(_raw_value(sub, name), 1))
        content = b"\r\n".join(_as_bytes(sub) for sub in inner)
        suffix = ".eml" if ctype in _EML_TYPES else ".txt"
        self.attach(part, ctype, content, f"attachment-{index}{suffix}")

    def leaf(self, part: Message, ctype: str, parent: str, index: int, where: str) -> None:
        payload = _safe(lambda: part.get_payload(decode=True))
        data = payload if isinstance(payload, bytes) else b""
        disposition = _safe(part.get_content_disposition)
        named = bool(_safe(part.get_filename))
        inline = disposition != "attachment" and not named
        if ctype == "text/rfc822-headers" and parent == "multipart/report":
            copy = _safe(lambda: BytesParser(policy=_bounded()).parsebytes(data, True))
            if copy is not None:
                self.report_refs.extend(message_ids(_raw_value(copy, "message-id"), 1))
        # A multipart type without a usable boundary arrives as one leaf: its text is the body.
        textual = ctype == "text/plain" or ctype.startswith("multipart/")
        if inline and self.text is None and textual:
            self.text = self.decode(part, data, where)
        elif inline and self.html is None and ctype == "text/html":
            self.html = self.decode(part, data, where)
        elif data or named:
            self.attach(part, ctype, data, f"attachment-{index}")

    def decode(self, part: Message, data: bytes, where: str) -> str:
        text, note = decode_text(data, _safe(part.get_content_charset))
        if note:
            self.defect(where, note)
        return without_controls(text.replace("\r\n", "\n"))

    def attach(self, part: Message, ctype: str, content: bytes, fallback: str) -> None:
        filename = safe_filename(_safe(part.get_filename), fallback)
        self.attachments.append(Attachment(filename, ctype, content))

    def defect(self, where: str, text: str) -> None:
        if len(self.defects) < MAX_DEFECTS:
            self.defects.append(f"{where}: {text}"[:MAX_DEFECT_TEXT])


def _plain_address(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    return (
        bool(at and local and domain)
        and len(addr) <= MAX_ADDRESS
        and _NOT_IN_ADDRESS.search(addr) is None
    )


def _content_type(part: Message) -> str:
    # The email package can return what the header said, controls included (`/\x1f0`).
    ctype = "".join(without_controls(_safe(part.get_content_type) or "").split())
    return ctype[:100] or "text/plain"


def _raw_value(msg: Message, name: str) -> str:
    """A header as it came: the email package's Message-ID parser raises on `<<<>>>` (3.12)."""
    return next((str(v) for k, v in msg.raw_items() if k.lower() == name), "")


def _describe(defect: object) -> str:
    text = " ".join(without_controls(str(defect)).split())
    name = type(defect).__name__
    return f"{name}: {text}" if text else name


def _as_bytes(msg: Message) -> bytes:
    try:
        return msg.as_bytes(policy=_CRLF)
    except Exception:  # a sub-message too broken to serialise is still in the raw message
        return b""


def _safe(getter: Callable[[], T | None]) -> T | None:
    """A value the email package computes from a header, or None when that header is too broken."""
    try:
        return getter()
    except TooCostly:
        raise
    except Exception:
        return None
