"""Who may send as whom on the submission socket, and the DKIM keys that sign what they send."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time

from mxdesk import dkimkeys, state
from mxdesk.channels import channel_of_address
from mxdesk.gateway.dkim import DkimKey, DkimKeyError
from mxdesk.names import header_addresses

log = logging.getLogger("mxdesk.gateway.submission")
KEY_CACHE_SECONDS = 60.0
EVERY_TENANT = "*"


_FOLD = re.compile(rb"\r\n(?=[ \t])")
_SIGNING_DOMAIN = re.compile(r"(?:^|;)\s*d\s*=\s*([^;\s]+)")
WAITING_PREFIX = "domain "
WAITING_SUFFIX = " not active yet"


def waiting_reason(domain: str) -> str:
    """The hold reason of a reply whose domain is not active yet (`queue list` shows it)."""
    return f"{WAITING_PREFIX}{domain}{WAITING_SUFFIX}"


def header_values(message: bytes, name: bytes) -> list[str]:
    """The unfolded values of one header field of a CRLF message (name in lower case): what
    the full email parser would give for an address field, at a fraction of its cost."""
    head = _FOLD.sub(b"", message.split(b"\r\n\r\n", 1)[0])
    prefix = name + b":"
    return [
        line[len(prefix) :].strip().decode("utf-8", "replace")
        for line in head.split(b"\r\n")
        if line[: len(prefix)].lower() == prefix
    ]


class SenderPolicy:
    """Answers from the state database, which the CLI may change while the daemon runs."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        base_domain: str,
        senders: dict[str, tuple[str, ...]],
        own_uid: int | None = None,
    ) -> None:
        self._conn = conn
        self._base = base_domain
        self._senders = senders
        self._own_uid = os.getuid() if own_uid is None else own_uid
        self._keys: dict[str, tuple[float, list[DkimKey]]] = {}

    def may_send_for(self, uid: int, user: str, tenant: str) -> bool:
        if uid in (0, self._own_uid):
            return True
        allowed = self._senders.get(user, ())
        return EVERY_TENANT in allowed or tenant in allowed

    def tenant_of_address(self, address: str) -> str | None:
        """The tenant an address belongs to: a domain of it (active or on its way, not
        disabled), or its default inbox (enabled); None for the addresses of a disabled tenant."""
        local, at, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if not at or not local:
            return None
        if domain == self._base:
            box = state.receiving_mailbox(self._conn, f"{local.lower()}@{domain}")
            return box.tenant if box is not None and box.default_inbox else None
        found = state.get_domain(self._conn, domain)
        if found is None:
            # A company mailbox read through a channel: the tenant answers from its address.
            box = state.receiving_mailbox(self._conn, f"{local.lower()}@{domain}")
            tenant = channel_of_address(self._conn, box.address) if box is not None else None
            return tenant if box is not None and tenant == box.tenant else None
        if not found.receives or not state.tenant_active(self._conn, found.tenant):
            return None
        return found.tenant

    def tenant_of(self, address: str, uid: int, user: str) -> str | None:
        """The tenant the envelope sender belongs to, if this user may send for it."""
        tenant = self.tenant_of_address(address)
        if tenant is None or not self.may_send_for(uid, user, tenant):
            return None
        return tenant

    def signing_keys(self, message: bytes, tenant: str, mail_from: str) -> list[DkimKey]:
        """The keys of the From: header's domain when it is the tenant's (DMARC alignment,
        RFC 7489 §3.1.1), else of the envelope sender's domain; [] when there are none."""
        domain = mail_from.rpartition("@")[2].lower()
        pairs = [p for v in header_values(message, b"from") for p in header_addresses(v) or []]
        for _, addr in pairs:
            if addr and self.tenant_of_address(addr) == tenant:
                domain = addr.rpartition("@")[2].lower()
                break
        keys = self._load(domain)
        if not keys and state.get_domain(self._conn, domain) is None:
            # A channel's company domain has no key of ours: the base domain's signature
            # still vouches for the gateway (the company's own server may add its own).
            keys = self._load(self._base)
        return keys

    def waiting_for(self, message: bytes) -> str:
        """Why a signed message may not leave yet: a domain it is signed for is not active,
        so its key may not be served (DESIGN invariant 7); "" when it may go."""
        for value in header_values(message, b"dkim-signature"):
            match = _SIGNING_DOMAIN.search(value)
            if match is None:
                continue
            found = state.get_domain(self._conn, match[1].lower())
            if found is not None and found.status != "active":
                return waiting_reason(found.name)
        return ""

    def _load(self, domain: str) -> list[DkimKey]:
        cached = self._keys.get(domain)
        if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        try:
            keys = dkimkeys.load_signing_keys(self._conn, domain)
        except (OSError, DkimKeyError) as exc:
            log.error("domain=%s DKIM keys cannot be loaded: %s", domain, exc)
            keys = []
        self._keys[domain] = (time.monotonic(), keys)
        return keys
