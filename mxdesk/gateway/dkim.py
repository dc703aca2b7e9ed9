"""DKIM signing (RFC 6376, RFC 8463): dkimpy canonicalises and hashes, OpenSSL signs."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

MIN_RSA_BITS = 2048
# Signed once more than they occur, so that no one can add one after signing (RFC 6376 §8.15).
OVERSIGNED = (
    b"from", b"to", b"cc", b"subject", b"date", b"reply-to", b"message-id", b"in-reply-to",
    b"references",
)  # fmt: skip
# Signed as often as they occur.
SIGNED = (b"mime-version", b"content-type", b"content-transfer-encoding", b"auto-submitted")
RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_LINE_END = re.compile(rb"\r\n|\r|\n")

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(ValueError):
    """A key that mxdesk will not sign with; the message says why."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_key: PrivateKey

    @property
    def algorithm(self) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return b"rsa-sha256"
        return b"ed25519-sha256"

    def dns_txt(self) -> str:
        """The TXT record for <selector>._domainkey.<domain> (RFC 6376 §3.6.1, RFC 8463)."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def load_key(pem: bytes, domain: str, selector: str) -> DkimKey:
    """Loads a PEM private key; RSA keys under 2048 bits and other kinds are refused."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(f"DKIM key for {domain}: not a PEM private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"DKIM key for {domain} is RSA-{key.key_size}: at least {MIN_RSA_BITS} bits"
            )
        return DkimKey(domain, selector, key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DkimKey(domain, selector, key)
    raise DkimKeyError(f"DKIM key for {domain}: only RSA and Ed25519 keys are supported")


def generate_key(kind: str = "rsa") -> bytes:
    """A new private key as PKCS#8 PEM: RSA-2048 or Ed25519."""
    key: PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise DkimKeyError(f"key kind {kind!r}: use rsa or ed25519")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


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
