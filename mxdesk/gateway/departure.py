"""The DKIM signatures of an outbound message, made as it leaves (each attempt), with the keys
that sign at that moment: a key revoked or rotated while a reply waited in the queue (the send
delay, retries for days) never signs it, and a submission's client does not wait for the
signature (Exim's transports sign this way too)."""

from __future__ import annotations

from dataclasses import dataclass

from mxdesk.gateway.entries import SpoolEntry
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.signer import Signer
from mxdesk.metrics import GatewayMetrics


@dataclass(frozen=True)
class Departure:
    """Signs outbound entries for the outbound runner: sign is the signing helper's (or a
    worker thread's)."""

    senders: SenderPolicy
    sign: Signer
    metrics: GatewayMetrics

    async def signed(self, entry: SpoolEntry) -> tuple[bytes, str]:
        """(the message signed, "") or (b"", why it may not leave yet: held with that reason)."""
        message = self.senders.unsigned(entry.data)
        tenant = entry.recipients[0].tenant if entry.recipients else ""
        keys = self.senders.signing_keys(message, tenant, entry.mail_from)
        if not keys:
            domain = self.senders.signing_domain(message, tenant, entry.mail_from)
            return b"", f"no DKIM key signs for {domain} or the base domain"
        reason = self.senders.waiting_for(keys)
        if reason:
            return b"", reason
        signed = await self.sign(message, keys)
        self.metrics.signed(keys)
        return signed, ""
