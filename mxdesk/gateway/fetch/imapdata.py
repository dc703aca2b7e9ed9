"""What IMAP commands carry and FETCH answers hold: strings, UID sets, dates, Message-IDs."""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mxdesk.gateway.fetch import utf7
from mxdesk.gateway.fetch.imapwire import Response, Value

MAX_UID = 2**32 - 1  # RFC 3501 §2.3.1.1: a UID is a 32-bit value
_FLAGS = re.compile(r"\\?[A-Za-z0-9$_.\-]+( \\?[A-Za-z0-9$_.\-]+)*")
_MONTHS = {m.upper().encode(): i for i, m in enumerate(calendar.month_abbr) if m}
_DATE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


@dataclass(frozen=True)
class Literal:
    """A command argument sent as a literal, after the server's "+" (RFC 3501 §7.5)."""

    data: bytes


Part = bytes | Literal


def astring(value: str) -> Part:
    """A quoted string for printable ASCII without '"' and '\\', else a literal (RFC 3501 §4.3):
    a password with a quote or "ç" goes through unescaped."""
    data = value.encode()
    if all(0x20 <= b <= 0x7E for b in data) and b'"' not in data and b"\\" not in data:
        return b'"' + data + b'"'
    return Literal(data)


def folder_name(folder: str) -> Part:
    """The Unicode folder name as a command argument, in modified UTF-7."""
    return astring(utf7.encode(folder))


def uid_set(uids: Sequence[int]) -> bytes:
    """ "1:3,7,9:10" for the UIDs [1, 2, 3, 7, 9, 10] in any order; ValueError if not UIDs."""
    ranges: list[list[int]] = []
    for uid in sorted(set(uids)):
        if not 1 <= uid <= MAX_UID:
            raise ValueError(f"UID {uid} is not between 1 and {MAX_UID}")
        if ranges and ranges[-1][1] == uid - 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges).encode()


def flag_list(flags: str) -> bytes:
    """ "(\\Seen \\Deleted)" for "\\Seen \\Deleted"; ValueError for anything but flag names."""
    if not _FLAGS.fullmatch(flags):
        raise ValueError(f"flags {flags!r}: space-separated flag names like \\Seen")
    return b"(" + flags.encode() + b")"


# The parsers below raise ValueError for what the server sent; the client makes that a
# ProtocolError naming the server and closes the connection.


def number(value: Value) -> int:
    if isinstance(value, bytes) and value.isdigit():
        return int(value)
    raise ValueError(f"a number was expected, not {value!r:.40}")


def fetch_items(response: Response) -> dict[str, Value]:
    """The data items of "* 3 FETCH (UID 7 RFC822.SIZE 120 …)" by upper-case name."""
    items = response.values[0] if len(response.values) == 1 else None
    if not isinstance(items, list) or len(items) % 2:
        raise ValueError(f"a FETCH response without its (name value …) list: {items!r:.80}")
    names = [n.decode("ascii", "replace").upper() for n in items[::2] if isinstance(n, bytes)]
    if len(names) != len(items) // 2:
        raise ValueError("a FETCH data item without a name")
    return dict(zip(names, items[1::2], strict=True))


def section(items: dict[str, Value], prefix: str) -> Value:
    """The value of a BODY[…] item, whatever the server echoes inside the brackets."""
    return next((v for k, v in items.items() if k.startswith(prefix)), None)


def internaldate(value: Value) -> float:
    """Epoch seconds of " 7-Jul-1996 02:44:25 -0700" (RFC 3501 date-time; English months
    whatever the locale)."""
    match = _DATE.fullmatch(value) if isinstance(value, bytes) else None
    if match is None or match[2].upper() not in _MONTHS:
        raise ValueError(f"INTERNALDATE {value!r:.40} is not an IMAP date-time")
    day, month, year, hour, minute, second, sign, zh, zm = match.groups()
    when = (int(year), _MONTHS[month.upper()], int(day), int(hour), int(minute), int(second))
    offset = (int(zh) * 60 + int(zm)) * 60 * (-1 if sign == b"-" else 1)
    return float(calendar.timegm((*when, 0, 0, 0)) - offset)


def message_id(header: Value) -> str:
    """The Message-ID in a fetched header block, unfolded (RFC 5322 §2.2.3) and stripped;
    "" when there is none."""
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", header) if isinstance(header, bytes) else b""
    for line in unfolded.splitlines():
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            return value.strip().decode("utf-8", "replace")
    return ""


def sasl_error(challenge: str) -> str:
    """Google's XOAUTH2 error challenge is base64 JSON: "token error: status 401"."""
    try:
        error = json.loads(base64.b64decode(challenge, validate=True))
        return f"token error: status {error['status']}"
    except (binascii.Error, ValueError, KeyError, TypeError):
        return "an error challenge that is not base64 JSON"
