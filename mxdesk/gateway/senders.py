"""Who may send as whom on the submission socket, and the DKIM keys that sign what they send."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Sequence
from functools import partial

from mxdesk import dkimkeys, state
from mxdesk.channels import channel_of_address
from mxdesk.gateway.dkim import DkimKey, DkimKeyError
from mxdesk.names import header_addresses

log = logging.getLogger("mxdesk.gateway.submission")
EVERY_TENANT = "*"


_FOLD = re.compile(rb"\r\n(?=[ \t])")
_SIGNING_DOMAIN = re.compile(r"(?:^|;)\s*d\s*=\s*([^;\s]+)")
_SIGNATURE_FIELD = re.compile(rb"(?im)^DKIM-Signature:.*(?:\r\n[ \t].*)*\r\n")
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
        self._answers = state.Remembered(conn)
        # Parsed keys by file: the rows are read again whenever state.db has changed (a revoked
        # key stops signing at the next message), a key file only when a new key starts to sign.
        self._parsed: dict[tuple[str, float], DkimKey] = {}

    def may_send_for(self, uid: int, user: str, tenant: str) -> bool:
        if uid in (0, self._own_uid):
            return True
        allowed = self._senders.get(user, ())
        return EVERY_TENANT in allowed or tenant in allowed

    def tenant_of_address(self, address: str) -> str | None:
        """The tenant an address belongs to: a domain of it (active or on its way, not
        disabled), or its default inbox (enabled); None for the addresses of a disabled tenant."""
        return self._answers.get(("tenant", address), lambda: self._tenant_of_address(address))

    def _tenant_of_address(self, address: str) -> str | None:
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

    def signing_domain(self, message: bytes, tenant: str, mail_from: str) -> str:
        """The From: header's domain when it is the tenant's (DMARC alignment, RFC 7489
        §3.1.1), else the envelope sender's."""
        pairs = [p for v in header_values(message, b"from") for p in header_addresses(v) or []]
        for _, addr in pairs:
            if addr and self.tenant_of_address(addr) == tenant:
                return addr.rpartition("@")[2].lower()
        return mail_from.rpartition("@")[2].lower()

    def signing_keys(self, message: bytes, tenant: str, mail_from: str) -> list[DkimKey]:
        """The keys of the signing domain; [] when there are none."""
        domain = self.signing_domain(message, tenant, mail_from)
        keys = self._load(domain)
        if not any(k.algorithm == b"rsa-sha256" for k in keys) and domain != self._base:
            # A channel's company domain has no key of ours, and a domain whose RSA key was
            # revoked none until its new one is served: the base domain's signature still
            # vouches for the gateway (receivers without Ed25519 need an RSA one).
            keys = keys + self._load(self._base)
        return keys

    def unsigned(self, message: bytes) -> bytes:
        """The message without the DKIM signatures of domains of ours: the gateway signs as a
        message leaves, and a message queued signed (by a version that signed when it was
        submitted) is signed again then, with the keys that sign at that moment."""
        head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        if b"dkim-signature:" not in head.lower():
            return message
        for match in _SIGNATURE_FIELD.finditer(head):
            value = _FOLD.sub(b"", match[0]).decode("utf-8", "replace")
            domain = _SIGNING_DOMAIN.search(value)
            if domain is not None and self._ours(domain[1].lower()):
                message = message.replace(match[0], b"", 1)
        return message

    def _ours(self, name: str) -> bool:
        return name == self._base or self._domain(name) is not None or bool(self._load(name))

    def waiting_for(self, keys: Sequence[DkimKey]) -> str:
        """Why a message these keys sign may not leave yet: a domain of theirs is not active,
        so its key may not be served (DESIGN invariant 7); "" when it may go."""
        for key in keys:
            found = self._domain(key.domain)
            if found is not None and found.status != "active":
                return waiting_reason(found.name)
        return ""

    def _domain(self, name: str) -> state.Domain | None:
        return self._answers.get(("domain", name), partial(state.get_domain, self._conn, name))

    def _load(self, domain: str) -> list[DkimKey]:
        """The domain's active keys, as state.db lists them now (remembered until it changes:
        a revocation or a rotation's switch applies to the next message)."""
        return self._answers.get(("keys", domain), lambda: self._read_keys(domain))

    def _read_keys(self, domain: str) -> list[DkimKey]:
        keys = []
        for record in dkimkeys.keys_of(self._conn, domain, (dkimkeys.ACTIVE,)):
            # A delegated domain's slots reuse a file name for a new key: keyed by its time.
            cached = (record.path, record.created)
            key = self._parsed.get(cached)
            if key is None:
                try:
                    key = self._parsed[cached] = dkimkeys.load(record)
                except (OSError, DkimKeyError) as exc:
                    log.error("domain=%s DKIM key %s: %s", domain, record.selector, exc)
                    continue
            keys.append(key)
        return keys
