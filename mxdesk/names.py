"""Names that come from people and from mail: DNS labels, slugs, addresses, address headers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LOCAL = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~.-]{1,64}$")
MAX_ADDRESS = 254


class InvalidName(ValueError):
    """A name a person typed is not acceptable; the message says why and what to do."""


def builtin_reserved() -> frozenset[str]:
    from importlib import resources  # here: loading it costs every command a few ms

    text = resources.files("mxdesk").joinpath("reserved_labels.txt").read_text("utf-8")
    return frozenset(_lines(text))


def _lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.append(line)
    return out


def reserved_labels(extra_file: Path | None) -> frozenset[str]:
    """The built-in reserved list plus the names in the configured file, one per line."""
    names = set(builtin_reserved())
    if extra_file is not None:
        names.update(_lines(extra_file.read_text("utf-8")))
    return frozenset(names)


def check_label(label: str, what: str, reserved: frozenset[str]) -> str:
    """The label in lower case (DNS names are case-insensitive, RFC 4343, like the addresses
    here) if it is an LDH DNS label that is not reserved; else InvalidName, with a suggestion
    only when the suggestion is itself acceptable."""
    label = label.strip().lower()
    if len(label) > 63:
        raise InvalidName(f"{what} {label!r} is {len(label)} characters long: at most 63")
    if not _LABEL.match(label):
        hint = _suggestion(label, reserved)
        raise InvalidName(
            f"{what} {label!r} is not a valid DNS label: use a-z, 0-9 and '-',"
            " not starting or ending with '-'" + (f" (e.g. {hint!r})" if hint else "")
        )
    if label.startswith("xn--") or (len(label) > 3 and label[2:4] == "--"):
        raise InvalidName(f"{what} {label!r} has '--' in positions 3-4, reserved for IDNA")
    if label in reserved:
        raise InvalidName(f"{what} {label!r} is reserved: choose another name")
    return label


def _suggestion(label: str, reserved: frozenset[str]) -> str | None:
    hint = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", label)).strip("-")[:63].strip("-")
    try:
        return check_label(hint, "", reserved) if hint else None
    except InvalidName:
        return None


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_address(text: str) -> Address:
    """Splits and lowercases a plain mailbox address; raises InvalidName on anything else."""
    text = text.strip()
    if len(text) > MAX_ADDRESS or text.count("@") != 1:
        raise InvalidName(f"{text!r} is not an e-mail address like suporte@marca.example")
    local, domain = text.rsplit("@", 1)
    domain = domain.lower().rstrip(".")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidName(f"{text!r}: the part before '@' has characters not allowed here")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(p) for p in labels):
        raise InvalidName(f"{text!r}: {domain!r} is not a domain name")
    return Address(local.lower(), domain)


# RFC 5322 §3.2.3 specials that may not stand unquoted in an addr-spec.
_SPECIALS = frozenset('()<>[]:;@\\,"')
MAX_COMMENT_DEPTH = 8
_ATEXT = "-A-Za-z0-9!#$%&'*+/=?^_`{|}~"  # for a [] class: "-" first
# One mailbox without quotes, comments, groups or folding: a phrase of atoms, dots and blanks,
# then an address in <>; or a lone address between blanks. Each blank can be matched one way
# only, so that a long run of them costs linear time (with a blank run before the phrase as
# well, 8 KB of blanks took 0.23 s).
_SIMPLE_MAILBOX = re.compile(
    rf"(?:([{_ATEXT}. \t]*)<([{_ATEXT}.]+@[{_ATEXT}.]+)>|[ \t]*([{_ATEXT}.]+@[{_ATEXT}.]+))[ \t]*"
)


@dataclass
class _Element:
    """One element of an address list as the scan left it (comments taken out)."""

    raw: list[str] = field(default_factory=list)  # outside <>, quotes kept
    phrase: list[str] = field(default_factory=list)  # outside <>, quotes taken off
    comment: list[str] = field(default_factory=list)
    angle: list[str] | None = None  # inside <>, quotes kept
    after: list[str] = field(default_factory=list)  # outside the comments after <>
    bare_at: bool = False  # an '@' outside quotes and <>


def header_addresses(value: str, complete: bool = True) -> list[tuple[str, str]] | None:
    """The (display name, address) of each mailbox of an address header (From, To, Cc); None
    when the header is malformed, rather than a guess that readers could disagree with.

    email.utils.getaddresses guesses: without the fix for CVE-2023-27043 (Python before
    3.11.10, 3.12.6 and 3.13) it reads `alice@a.example <bob@b.example>` as two mailboxes,
    and `alice@a.example)<bob@b.example>` as alice; on every version nested comments make it
    raise RecursionError. Here one linear scan splits the list, and each element must be a
    lone addr-spec (a comment may give its name) or `phrase <addr-spec>` without an unquoted
    '@' in the phrase. Groups (`name: a@b, c@d;`) give their members. A value cut short
    (complete=False) loses its last element, however it ends.
    """
    simple = _SIMPLE_MAILBOX.fullmatch(value) if complete else None
    if simple is not None and _addr_spec(address := simple[2] or simple[3]):
        # The common `Name <a@b>` or `a@b`: what the scan below finds, without a step per
        # character (the most of parsing a short message's headers).
        return [(" ".join(simple[1].split()) if simple[2] else "", address)]
    elements = _scan(value, complete)
    if elements is None:
        return None
    found = []
    for element in elements:
        mailbox = _mailbox(element)
        if mailbox is None:
            return None
        if mailbox[1]:
            found.append(mailbox)
    return found


def _scan(value: str, complete: bool) -> list[_Element] | None:
    """The elements of an address list, or None when a quote, a comment, <> or a group is left
    open, a special character stands where none may, or comments nest deeper than
    MAX_COMMENT_DEPTH."""
    out = [_Element()]
    quoted = escaped = in_angle = group = False
    depth = 0
    for c in value:
        el = out[-1]
        if depth:  # in a comment: (…) nest, a backslash quotes the next character
            if escaped or c not in "\\()":
                escaped = False
                el.comment.append(c)
            elif c == "\\":
                escaped = True
            else:
                depth += 1 if c == "(" else -1
                if depth > MAX_COMMENT_DEPTH:
                    return None
                el.comment.append(c if depth else " ")
        elif quoted:  # in a quoted string: the quotes and backslashes stay in the address
            quoted = escaped or c != '"'
            text = "" if c in '\\"' and not escaped else c
            escaped = not escaped and c == "\\"
            _put(el, in_angle, c, text)
        elif c == "(":
            depth = 1
        elif c == '"':
            quoted = True
            _put(el, in_angle, c, "")
        elif c == "<" and el.angle is None:
            in_angle, el.angle = True, []
        elif c == ">" and in_angle:
            in_angle = False
        elif in_angle and c not in "<>":
            _put(el, in_angle, c, c)
        elif c == "," or (c == ";" and group):
            group = group and c == ","
            out.append(_Element())
        elif c == ":" and not group and el.angle is None and not el.bare_at:
            group = True
            out[-1] = _Element()  # a group's name names no mailbox
        elif c in "()<>;:":
            return None
        else:
            el.bare_at = el.bare_at or c == "@"
            _put(el, in_angle, c, c)
    if not complete:
        return out[:-1]
    return None if quoted or depth or in_angle or group else out


def _put(el: _Element, in_angle: bool, raw: str, text: str) -> None:
    if el.angle is None:
        el.raw.append(raw)
        el.phrase.append(text)
    elif in_angle:
        el.angle.append(raw)
    else:
        el.after.append(raw)


def _mailbox(el: _Element) -> tuple[str, str] | None:
    """(name, address) of one element, ("", "") for an empty one, None when malformed."""
    comment = " ".join("".join(el.comment).split())
    if el.angle is None:
        address = "".join(el.raw).strip()
        if not address:
            return ("", "")
        return (comment, address) if _addr_spec(address) else None
    if el.bare_at or "".join(el.after).strip():
        return None
    address = "".join(el.angle).strip()
    if address.startswith("@"):  # an obsolete source route, <@a,@b:user@c> (RFC 5322 §4.4)
        address = address.rpartition(":")[2]
    name = " ".join("".join(el.phrase).split()) or comment
    return (name, address) if _addr_spec(address) else None


def _addr_spec(address: str) -> bool:
    """local@domain with a dot-atom or quoted local part and a dot-atom or literal domain."""
    local, at, domain = address.rpartition("@")
    if not (at and local and domain):
        return False
    quoted = len(local) > 1 and local[0] == local[-1] == '"'
    if not quoted and any(c in _SPECIALS or c.isspace() for c in local):
        return False
    literal = domain[0] == "[" and domain[-1] == "]" and len(domain) > 2
    inner = domain[1:-1] if literal else domain
    return not any(c in _SPECIALS or c.isspace() for c in inner)
