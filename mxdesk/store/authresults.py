"""The gateway's own Authentication-Results header (RFC 8601) in a message, found and read."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# The gateway's header is a few hundred bytes; anything longer is not what it writes.
MAX_HEADER = 4096
MAX_RESULTS = 20
MAX_HEAD = 256 * 1024
_NAME = b"authentication-results:"
# Quoted strings and quoted pairs stay whole, so a ';' or ')' inside them splits nothing.
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"?|\\.|[^();"\\]+|[();\\]', re.S)
_WORD = re.compile(r'"(?:[^"\\]|\\.)*"?|=|[^\s="]+')
_PAIR = re.compile(r'([^\s="]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^\s="]+)')


@dataclass(frozen=True)
class Resinfo:
    """One result of the header: `dkim=pass header.d=marca.example`, its comments kept apart."""

    method: str
    result: str
    properties: tuple[tuple[str, str], ...]
    comments: tuple[str, ...]

    def prop(self, name: str) -> str:
        return next((v for k, v in self.properties if k == name), "")


def trusted_results(raw: bytes, authserv_id: str) -> tuple[Resinfo, ...] | None:
    """The results of the topmost Authentication-Results header whose authserv-id is ours (the
    gateway removes incoming ones that claim its name, then adds its own on top); None when the
    message has none, e.g. it did not come through the gateway."""
    wanted = authserv_id.lower().rstrip(".")
    for value in _headers(raw):
        results = _results_if_ours(value, wanted)
        if results is not None:
            return results
    return None


@functools.lru_cache(maxsize=512)
def _results_if_ours(value: str, authserv_id: str) -> tuple[Resinfo, ...] | None:
    """The results of one header value whose authserv-id is ours, else None. Remembered: the
    gateway writes the same header for every message of a sender's domain with the same
    results, and reading it again took a tenth of the store's filing time."""
    parsed = parse(value)
    return tuple(parsed[1]) if parsed is not None and parsed[0] == authserv_id else None


def _headers(raw: bytes) -> list[str]:
    """Authentication-Results values in the header section, unfolded, topmost first."""
    head = raw[:MAX_HEAD]
    end = min((i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0), default=-1)
    head = head if end < 0 else head[:end]
    if _NAME not in head.lower():
        return []
    found: list[bytearray] = []
    current: bytearray | None = None
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            if current is not None and len(current) < MAX_HEADER:
                current += b" " + line.strip()
            continue
        current = None
        if line[: len(_NAME)].lower() == _NAME:
            current = bytearray(line[len(_NAME) :].strip())
            found.append(current)
    return [bytes(v[:MAX_HEADER]).decode("utf-8", "replace") for v in found]


def parse(value: str) -> tuple[str, list[Resinfo]] | None:
    """(authserv-id, results) of a header value (RFC 8601 §2.2), or None when it is not one.
    Comments may nest and hold quoted pairs (RFC 5322 §3.2.2); a value may be a quoted string."""
    segments, comments = _segments(value)
    head = _WORD.findall(segments[0])
    if not head or "=" in head:
        return None
    results = []
    for text, notes in zip(segments[1 : MAX_RESULTS + 1], comments[1:], strict=False):
        # method[/version]=result, then reason=… and ptype.property=value (§2.2), in order.
        pairs = [(k.lower(), _unquote(v)) for k, v in _PAIR.findall(text)]
        if pairs:  # else "none", or nothing we can read
            (method, result), properties = pairs[0], pairs[1:]
            props = tuple(p for p in properties if p[0] != "reason")
            results.append(Resinfo(method.split("/", 1)[0], result.lower(), props, tuple(notes)))
    return _unquote(head[0]).strip().lower().rstrip("."), results


def _segments(value: str) -> tuple[list[str], list[list[str]]]:
    """The text between ';' outside quoted strings and comments, each segment's comments apart."""
    if not any(c in value for c in '("\\'):
        parts = value.split(";")
        return parts, [[] for _ in parts]
    segments: list[str] = [""]
    comments: list[list[str]] = [[]]
    pieces = _PIECE.findall(value)
    i = 0
    while i < len(pieces):
        piece = pieces[i]
        i += 1
        if piece == "(":
            depth, text = 1, ""
            while i < len(pieces) and depth:
                depth += (pieces[i] == "(") - (pieces[i] == ")")
                text += pieces[i] if depth else ""
                i += 1
            comments[-1].append(text.strip())
            segments[-1] += " "
        elif piece == ";":
            segments.append("")
            comments.append([])
        else:
            segments[-1] += piece
    return segments, comments


def _unquote(token: str) -> str:
    if token.startswith('"'):
        return re.sub(r"\\(.)", r"\1", token[1:-1] if token.endswith('"') else token[1:])
    return token
