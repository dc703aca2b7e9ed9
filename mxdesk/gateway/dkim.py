"""DKIM signing (RFC 6376, RFC 8463): relaxed/relaxed canonicalisation and SHA-256 here, the
signature by OpenSSL; dkimpy verifies (inbound verdicts, tests)."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

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


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 §3.4.2: name lowered, value unfolded, runs of WSP one SP, no WSP at the ends."""
    # A fold's CRLF goes; its tab counts as the one space it stands for, so that a value folded
    # at single spaces (ours) needs no regular expression either.
    value = value.replace(b"\r\n\t", b" ").replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:  # else every run of WSP is one SP already
        value = _WSP.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" ")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 on a CRLF body: runs of WSP one SP, none at line ends, no empty lines at
    the end, a final CRLF unless empty."""
    if b"\t" in body or b"  " in body:  # else every run of WSP is one SP already
        body = _WSP.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    body = body.rstrip(b"\r\n") if body.endswith(b"\r\n") else body.rstrip(b" ")
    return body + b"\r\n" if body else b""


def _include(fields: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, ...]:
    return _include_names(tuple(name.rstrip(b" \t").lower() for name, _ in fields))


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


@functools.lru_cache(maxsize=64)
def _folded_head(tags: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, ...], bytes]:
    """The tags that are the same for every message of a key and a set of fields (h= is the
    long one), folded once."""
    lines: list[bytes] = []
    line = _fold_into(lines, b"DKIM-Signature:", tags, last=False)
    return tuple(lines), line


def _fold(fixed: tuple[tuple[bytes, bytes], ...], varying: Sequence[tuple[bytes, bytes]]) -> bytes:
    done, line = _folded_head(fixed)
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
    include = _include(fields)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    fixed = (
        (b"v", b"1"),
        (b"a", key.algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", key.domain.encode()),
        (b"s", key.selector.encode()),
        (b"h", b" : ".join(include)),
    )
    varying = (
        (b"t", str(int(now if now is not None else time.time())).encode()),
        (b"bh", body_hash),
        (b"b", b""),
    )
    unsigned = _fold(fixed, varying)  # ends in "b=": the signature is appended after hashing
    # RFC 6376 §5.4.2: each named field from the bottom up; a name listed once more than the
    # fields it has (over-signing) adds nothing.
    remaining: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in fields:
        remaining.setdefault(name.rstrip(b" \t").lower(), []).append((name, value))
    hashed = []
    for name in include:
        found = remaining.get(name)
        if found:
            hashed.append(_relaxed_header(*found.pop()) + b"\r\n")
    sig_name, _, sig_value = unsigned.partition(b":")
    hashed.append(_relaxed_header(sig_name, sig_value))
    digest = hashlib.sha256(b"".join(hashed)).digest()
    if isinstance(key.private_key, rsa.RSAPrivateKey):
        raw = key.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonicalised header data.
        raw = key.private_key.sign(digest)
    signature = base64.b64encode(raw)
    # b= folded anywhere: whitespace in its value is ignored (RFC 6376 §3.5).
    last = len(unsigned) - unsigned.rfind(b"\n") - 1
    first = max(0, 76 - last)
    chunks = [signature[:first]] + [signature[k : k + 72] for k in range(first, len(signature), 72)]
    return unsigned + b"\r\n\t".join(c for c in chunks if c) + b"\r\n"


def sign(message: bytes, keys: Sequence[DkimKey], now: float | None = None) -> bytes:
    """The message with line endings normalised and one DKIM-Signature per key prepended."""
    message = normalise_line_endings(message)
    return b"".join(signature_header(message, k, now) for k in keys) + message
