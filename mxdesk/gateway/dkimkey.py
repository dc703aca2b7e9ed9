"""DKIM keys (RSA-2048 and Ed25519): made, loaded, refused when weak, and their DNS record;
apart from the signer so that the CLI handles keys without loading dkimpy and dnspython."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# cryptography is imported where a key is made, loaded or used: commands that only list
# domains or tenants do not load it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

MIN_RSA_BITS = 2048


class DkimKeyError(ValueError):
    """A key that mxdesk will not sign with; the message says why."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_key: PrivateKey
    # The a= tag, b"rsa-sha256" or b"ed25519-sha256": worked out once, each signature reads it.
    algorithm: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        rsa_key = isinstance(self.private_key, rsa.RSAPrivateKey)
        object.__setattr__(self, "algorithm", b"rsa-sha256" if rsa_key else b"ed25519-sha256")

    def pem(self) -> bytes:
        """The private key in PEM (PKCS #8), as load_key reads it: for the signing helper."""
        from cryptography.hazmat.primitives import serialization

        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def dns_txt(self) -> str:
        """The TXT record for <selector>._domainkey.<domain> (RFC 6376 §3.6.1, RFC 8463)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

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
