"""Parsing a delivered message into plain values, tolerating any malformed MIME."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses
from typing import TypeVar

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
_QUEUE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MSGID = re.compile(r"<[^<>\s\x00-\x1f\x7f]{1,250}>")
_BARE_MSGID = re.compile(r"[^<>\s\x00-\x1f\x7f]{1,250}@[^<>\s\x00-\x1f\x7f]{1,250}")
_REPORT_COPY_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers")
_EML_TYPES = ("message/rfc822", "message/global")
_CRLF = policy.default.clone(linesep="\r\n")
T = TypeVar("T")


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
    found = _MSGID.findall(text)
    if not found:
        bare = text.strip()
        found = [f"<{bare}>"] if _BARE_MSGID.fullmatch(bare) else []
    return found[-limit:]


def parse_message(raw: bytes) -> ParsedMessage:
    """Parses raw message bytes; never raises, a message it cannot parse is kept as text."""
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        return _Builder(msg).build()
    except Exception as exc:  # a parser bug or absurd nesting must not lose the message
        return _unparsed(raw, exc)


def _unparsed(raw: bytes, exc: Exception) -> ParsedMessage:
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    defect = f"message: could not be parsed ({type(exc).__name__}); kept as text"
    try:
        msg = BytesParser(policy=policy.default).parsebytes(head + b"\n\n", headersonly=True)
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
        value = raw_header_text(self.headers.get(name, ""))
        out = []
        for display, addr in getaddresses([value])[:MAX_ADDRESSES] if value else []:
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
                self.report_refs.extend(message_ids(str(sub.get(name, "")), 1))
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
            copy = _safe(lambda: BytesParser(policy=policy.default).parsebytes(data, True))
            if copy is not None:
                self.report_refs.extend(message_ids(str(copy.get("message-id", "")), 1))
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
        and not any(c.isspace() or c in ',;<>"\\' or ord(c) < 32 for c in addr)
    )


def _content_type(part: Message) -> str:
    ctype = _safe(part.get_content_type) or "text/plain"
    return ctype[:100]


def _describe(defect: object) -> str:
    text = without_controls(str(defect))
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
    except Exception:
        return None
