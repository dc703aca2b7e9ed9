"""The access tokens of the loopback OAuth 2.0 server: HS256 JWTs, and the keys a mail server
validates them with."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OAuth2Keys:
    """What a mail server needs to validate this server's access tokens without asking it:
    the HS256 secret, its key id (the JWT ``kid``), the client the tokens are issued to (their
    ``azp``) and the issuer (their ``iss``)."""

    secret: bytes = field(repr=False)
    kid: str
    azp: str
    issuer: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 JWS in compact form (RFC 7515, RFC 7519)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"
