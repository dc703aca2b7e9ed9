"""DKIM signing (RFC 6376, RFC 8463): dkimpy canonicalises and hashes, OpenSSL signs."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence

import dkim
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
RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def normalise_line_endings(message: bytes) -> bytes:
    """CRLF everywhere: a bare CR or LF would be rewritten by the SMTP client after signing and
    break the signature."""
    lines = _LINE_END.split(message)
    if lines and lines[-1] == b"":
        lines.pop()
    return b"\r\n".join(lines) + b"\r\n"


def _include(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    present = [name.lower() for name, _ in headers]
    include: list[bytes] = []
    for name in SIGNED:
        include += [name] * present.count(name)
    for name in OVERSIGNED:
        include += [name] * (present.count(name) + 1)
    return include


def signature_header(message: bytes, key: DkimKey, now: float | None = None) -> bytes:
    """The DKIM-Signature header line (with CRLF) for a CRLF-normalised message."""
    parsed = dkim.DKIM(message, signature_algorithm=key.algorithm)
    include = _include(parsed.headers)
    body_hash = base64.b64encode(hashlib.sha256(RELAXED.canonicalize_body(parsed.body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", key.domain.encode()),
        (b"s", key.selector.encode()),
        (b"t", str(int(now if now is not None else time.time())).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        # A placeholder as long as a line, so that b= starts a line of its own and filling it
        # in does not refold the tags before it; hash_headers() hashes b= empty.
        (b"b", b"0" * 60),
    ]
    unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(b"DKIM-Signature"))
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher,
        RELAXED,
        RELAXED.canonicalize_headers(parsed.headers),
        include,
        (b"DKIM-Signature", b" " + unsigned),
        dict(fields),
    )
    digest = hasher.digest()
    if isinstance(key.private_key, rsa.RSAPrivateKey):
        raw = key.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonicalised header data.
        raw = key.private_key.sign(digest)
    fields[-1] = (b"b", base64.b64encode(raw))
    value: bytes = dkim.fold(
        b"; ".join(b"=".join(f) for f in fields), namelen=len(b"DKIM-Signature")
    )
    return b"DKIM-Signature: " + value + b"\r\n"


def sign(message: bytes, keys: Sequence[DkimKey], now: float | None = None) -> bytes:
    """The message with line endings normalised and one DKIM-Signature per key prepended."""
    message = normalise_line_endings(message)
    return b"".join(signature_header(message, k, now) for k in keys) + message
