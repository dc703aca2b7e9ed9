"""What an IMAP or POP3 session of a fetcher needs: its channel, the spool, and how a fetched
message becomes a spool entry."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mxdesk.channels import ChannelView
from mxdesk.gateway.authresults import strip_ours
from mxdesk.gateway.dkim import normalise_line_endings
from mxdesk.gateway.entries import NewEntry, Recipient, new_queue_id
from mxdesk.gateway.fetch.ledger import Fetched, message_key
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.senders import header_values
from mxdesk.gateway.spool import Spool
from mxdesk.names import header_addresses
from mxdesk.timefmt import header_date

log = logging.getLogger("mxdesk.gateway.fetch")
INBOUND = "in"


@dataclass
class SessionContext:
    """One channel's fetch: where its mail goes and whom to tell about a skipped message."""

    view: ChannelView
    spool: Spool
    host_name: str
    max_message_size: int
    batch: int
    # Called once per message too large to take: (uid or uidl, size); it mails the owner.
    skipped: Callable[[str, int], Awaitable[None]]
    # Called with the number of messages committed (metrics).
    committed: Callable[[int], None]
    tls: bool = False
    # The gateway's SPF/DKIM/DMARC/ARC check (None: verdicts are off; forged headers are still
    # removed).
    verifier: InboundVerifier | None = None

    @property
    def name(self) -> str:
        return self.view.name


def _envelope_sender(head: bytes) -> str:
    """Return-Path when the server kept it (an empty one is a bounce), else the From: address:
    the store treats an empty sender as automatic mail."""
    paths = header_values(head, b"return-path")
    if paths:
        return paths[-1].strip().strip("<>").strip()
    pairs = [p for v in header_values(head, b"from") for p in header_addresses(v) or []]
    found = [a for _, a in pairs if "@" in a]
    return found[0] if found else ""


def received_header(ctx: SessionContext, queue_id: str) -> bytes:
    """The trace header of RFC 5321 §4.4: where the message was read, and for whom."""
    proto = ctx.view.protocol.upper() + ("S" if ctx.tls else "")
    lines = [
        f"Received: from {ctx.view.host} (channel {ctx.view.name})",
        f"\tby {ctx.host_name} (mxdesk) with {proto} id {queue_id}",
        f"\tfor <{ctx.view.address}>;",
        f"\t{header_date()}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


async def fetched(ctx: SessionContext, uid: str, data: bytes) -> Fetched:
    """A message read from the mailbox as the spool entry the MX would have made of it: our
    Authentication-Results (none of the message's own may claim our name), then Received:."""
    data = normalise_line_endings(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    key = message_key(data)
    if ctx.verifier is not None:
        verdict = await ctx.verifier.verdict_for_fetched(data)
        data = verdict + ctx.verifier.without_ours(data)
    else:
        data = strip_ours(data, ctx.host_name)
    queue_id = new_queue_id()
    head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    view = ctx.view
    entry = NewEntry(
        queue_id,
        INBOUND,
        f"{view.protocol} {view.host}",
        _envelope_sender(head),
        (Recipient(view.address, view.address, view.tenant),),
        received_header(ctx, queue_id) + data,
    )
    return Fetched(uid, key, entry)
