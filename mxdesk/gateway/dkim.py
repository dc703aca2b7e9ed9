"""DKIM signing (RFC 6376, RFC 8463): relaxed/relaxed canonicalisation and SHA-256 here, the
signature by OpenSSL; dkimpy verifies (inbound verdicts, tests)."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from typing import cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from mxdesk.gateway.dkimkey import MIN_RSA_BITS as MIN_RSA_BITS
from mxdesk.gateway.dkimkey import DkimKey as DkimKey
from mxdesk.gateway.dkimkey import DkimKeyError as DkimKeyError
from mxdesk.gateway.dkimkey import generate_key as generate_key
from mxdesk.gateway.dkimkey import load_key as load_key

# Signed once more than they occur, so that no one can add one after signing (RFC 6376 §8.15).
OVERSIGNED = (
    b"from", b"to", b"cc", b"subject", b"date", b"reply-to", b"message-id", b"in-reply-to",
    b"references",
)  # fmt: skip
# Signed as often as they occur.
SIGNED = (b"mime-version", b"content-type", b"content-transfer-encoding", b"auto-submitted")
_WSP = re.compile(rb"[ \t]+")
# RSASSA-PKCS1-v1_5 over a SHA-256 digest made here (RFC 6376 §3.3.1); both immutable.
_PKCS1 = padding.PKCS1v15()
_PREHASHED = utils.Prehashed(hashes.SHA256())
_SIGNATURE = b"DKIM-Signature:"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def normalise_line_endings(message: bytes) -> bytes:
    """CRLF everywhere: a bare CR or LF would be rewritten by the SMTP client after signing and
    break the signature."""
    crlf = message.count(b"\r\n")  # every CR and every LF in a CRLF pair: nothing to do
    if crlf == message.count(b"\n") == message.count(b"\r") and message.endswith(b"\r\n"):
        return message  # already so (what the store submits): counting is cheaper than split
    lines = _LINE_END.split(message)
    if lines and lines[-1] == b"":
        lines.pop()
    return b"\r\n".join(lines) + b"\r\n"


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) of each header field, value with its folding (RFC 5322 §2.2.3)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields


def _relaxed_values(values: list[bytes]) -> list[bytes]:
    """RFC 6376 §3.4.2 for header field values: unfolded, runs of WSP one SP, no WSP at the
    ends (the names are lowered and stripped of WSP apart). In one pass over the values joined
    by NUL, which no value holds (else each on its own): with a call per field, the header
    fields took 13 of the 31 µs a signature of dkim_rate.py's message spent besides RSA
    (now 7.5 of 24 µs)."""
    text = b"\0".join(values)
    if text.count(b"\0") >= len(values):
        return [_relax(value).strip(b" ") for value in values]
    # After _relax a value has at most one SP at each end: next to a NUL, or an end of text.
    text = _relax(text).replace(b"\0 ", b"\0").replace(b" \0", b"\0")
    return text.strip(b" ").split(b"\0")


def _relax(text: bytes) -> bytes:
    # A fold's CRLF goes; its tab counts as the one space it stands for, so that a value folded
    # at single spaces (ours) needs no regular expression either.
    if b"\r\n" in text:
        text = text.replace(b"\r\n\t", b" ").replace(b"\r\n", b"")
    if b"\t" in text or b"  " in text:  # else every run of WSP is one SP already
        text = _WSP.sub(b" ", text)
    return text


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 on a CRLF body: runs of WSP one SP, none at line ends, no empty lines at
    the end, a final CRLF unless empty."""
    if b"\t" in body or b"  " in body:  # else every run of WSP is one SP already
        body = _WSP.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    body = body.rstrip(b"\r\n") if body.endswith(b"\r\n") else body.rstrip(b" ")
    return body + b"\r\n" if body else b""


@functools.lru_cache(maxsize=256)  # mail from one program has the same fields, in one order
def _include_names(present: tuple[bytes, ...]) -> tuple[bytes, ...]:
    include: list[bytes] = []
    for name in SIGNED:
        include += [name] * present.count(name)
    for name in OVERSIGNED:
        include += [name] * (present.count(name) + 1)
    return tuple(include)


def _fold_into(
    lines: list[bytes], line: bytes, tags: Sequence[tuple[bytes, bytes]], last: bool
) -> bytes:
    """Adds tags to the folded lines (and the current line, returned): folded between tags
    (and inside h= at its spaces) so that no line exceeds 78 characters; relaxed
    canonicalisation reads the folds as the spaces they replace. last: the final tags."""
    for i, (tag, value) in enumerate(tags):
        text = tag + b"=" + value + (b"" if last and i == len(tags) - 1 else b";")
        if len(line) + 1 + len(text) <= 78:  # the whole tag fits: word by word would too
            line += b" " + text
            continue
        for word in text.split(b" "):
            if len(line) + 1 + len(word) > 78 and line.strip():
                lines.append(line)
                line = b"\t" + word
            else:
                line += b" " + word
    return line


@functools.lru_cache(maxsize=256)
def _hash_plan(
    names: tuple[bytes, ...],
) -> tuple[tuple[bytes, ...], tuple[int, ...], tuple[bytes, ...]]:
    """The names of h=; which fields are hashed, in order (RFC 6376 §5.4.2): for each name of
    h=, the next field of that name from the bottom up, a name listed once more than the fields
    it has (over-signing) adding nothing; and the text to hash with an empty place for each
    value: `name:` value CRLF …, the DKIM-Signature field last, without its CRLF."""
    include = _include_names(names)
    remaining: dict[bytes, list[int]] = {}
    for i, name in enumerate(names):
        remaining.setdefault(name, []).append(i)
    order = []
    for name in include:
        found = remaining.get(name)
        if found:
            order.append(found.pop())
    prefixes = [names[i] + b":" for i in order] + [b"dkim-signature:"]
    plan = tuple(part for p in prefixes for part in (p, b"", b"\r\n"))[:-1]
    return include, tuple(order), plan


@functools.lru_cache(maxsize=64)
def _folded_head(
    algorithm: bytes, domain: str, selector: str, include: tuple[bytes, ...]
) -> tuple[tuple[bytes, ...], bytes]:
    """The tags that are the same for every message of a key and a set of fields (h= is the
    long one), folded once."""
    tags = (
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain.encode()),
        (b"s", selector.encode()),
        (b"h", b" : ".join(include)),
    )
    lines: list[bytes] = []
    line = _fold_into(lines, _SIGNATURE, tags, last=False)
    return tuple(lines), line


def _fold(head: tuple[tuple[bytes, ...], bytes], varying: Sequence[tuple[bytes, bytes]]) -> bytes:
    done, line = head
    lines = list(done)
    lines.append(_fold_into(lines, line, varying, last=True))
    return b"\r\n".join(lines)


def signature_header(message: bytes, key: DkimKey, now: float | None = None) -> bytes:
    """The DKIM-Signature header line (with CRLF) for a CRLF-normalised message: relaxed/relaxed
    canonicalisation and SHA-256 here (a few regular expressions over the message), the
    signature by OpenSSL through cryptography."""
    head, _, body = message.partition(b"\r\n\r\n")
    if not _ and head.endswith(b"\r\n"):
        head = head[:-2]
    fields = _fields(head)
    names = tuple(name.rstrip(b" \t").lower() for name, _ in fields)
    include, order, plan = _hash_plan(names)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    varying = (
        (b"t", str(int(now if now is not None else time.time())).encode()),
        (b"bh", body_hash),
        (b"b", b""),
    )
    head_tags = _folded_head(key.algorithm, key.domain, key.selector, include)
    unsigned = _fold(head_tags, varying)  # ends in "b=": the signature is appended after hashing
    hashed = list(plan)
    hashed[1::3] = _relaxed_values([fields[i][1] for i in order] + [unsigned[len(_SIGNATURE) :]])
    digest = hashlib.sha256(b"".join(hashed)).digest()
    if key.algorithm == b"rsa-sha256":
        raw = cast("rsa.RSAPrivateKey", key.private_key).sign(digest, _PKCS1, _PREHASHED)
    else:
        # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonicalised header data.
        raw = cast("ed25519.Ed25519PrivateKey", key.private_key).sign(digest)
    signature = base64.b64encode(raw)
    # b= folded anywhere: whitespace in its value is ignored (RFC 6376 §3.5).
    last = len(unsigned) - unsigned.rfind(b"\n") - 1
    first = max(0, 76 - last)
    chunks = [signature[k : k + 72] for k in range(first, len(signature), 72)]
    if first:
        chunks.insert(0, signature[:first])
    return b"".join((unsigned, b"\r\n\t".join(chunks), b"\r\n"))


def sign(message: bytes, keys: Sequence[DkimKey], now: float | None = None) -> bytes:
    """The message with line endings normalised and one DKIM-Signature per key prepended."""
    message = normalise_line_endings(message)
    return b"".join(signature_header(message, k, now) for k in keys) + message
