"""The mails that tell a tenant's owner (and the admin) that a channel stopped, works again, or
left a message behind: one per event, never one per failed attempt."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mxdesk import state
from mxdesk.channels import ChannelView
from mxdesk.config import Config
from mxdesk.dns.owner_mail import queue_notice
from mxdesk.gateway.dkim import normalise_line_endings
from mxdesk.gateway.fetch.session import log
from mxdesk.gateway.spool import Spool, SpoolError

OUTBOUND = "out"

ADVICE = {
    "auth": (
        "The server refused the login. If the mailbox's password was changed, or its app"
        " password revoked (Google revokes them when the account's password changes), give the"
        " new one:\n\n    mxdesk channel password {name}\n\nFor an OAuth 2.0 channel, authorize"
        " it again:\n\n    mxdesk channel authorize {name}\n"
    ),
    "tls": (
        "The server's TLS certificate could not be verified. Check that the host name is right"
        " and that the certificate has not expired; a company CA can be given with --ca-file.\n"
    ),
    "folder": (
        "The login worked but the folder cannot be opened. Check the folder's name; on"
        " Microsoft 365 this also means the account lacks the mailbox permission or the"
        " IMAP/POP scope.\n"
    ),
    "other": (
        "mxdesk keeps trying by itself. If the server was moved or its name changed, check the"
        " settings with:\n\n    mxdesk channel show {name}\n"
    ),
}


class Alerts:
    """Queues each mail as an outbound spool entry (signed as it leaves)."""

    def __init__(
        self, spool: Spool, state_conn: Callable[[], sqlite3.Connection], config: Config
    ) -> None:
        self._spool = spool
        self._state = state_conn
        self._config = config
        self._host_name = config.general.host_name
        self._base = config.general.base_domain
        self._admin = config.channels.admin_address

    async def failing(self, view: ChannelView, error: str, since: float, kind: str) -> bool:
        when = formatdate(since, localtime=True)
        body = (
            f"The mailbox {view.address} ({view.protocol.upper()} {view.host}) of tenant"
            f" {view.tenant} has not been read since {when}.\n\nThe last error:\n\n    {error}"
            f"\n\n{ADVICE[kind].format(name=view.name)}\nUntil it works again, mail that"
            " arrives there does not become a ticket; nothing is lost: it is fetched as soon as"
            " the channel works. You get one more mail when it does.\n\nTo see its state:"
            f"\n\n    mxdesk channel list\n    mxdesk channel test {view.name}\n"
        )
        subject = f"mxdesk: the mailbox {view.address} cannot be read"
        return await self._send(view, subject, body, f"fail:{since!r}")

    async def recovered(self, view: ChannelView) -> bool:
        body = (
            f"The mailbox {view.address} ({view.protocol.upper()} {view.host}) is read again;"
            " what arrived meanwhile becomes tickets now.\n"
        )
        subject = f"mxdesk: the mailbox {view.address} is read again"
        return await self._send(view, subject, body, f"ok:{time.time()!r}")

    async def skipped(self, view: ChannelView, uid: str, size: int, limit: int) -> bool:
        body = (
            f"A message of {size} bytes in the mailbox {view.address} is larger than the"
            f" gateway's limit of {limit} bytes ([gateway] max_message_size). It was left in"
            f" the mailbox (its id there: {uid}) and did not become a ticket; it will not be"
            " tried again. Read it in the mailbox itself, or raise the limit and add it to a"
            " ticket by hand.\n"
        )
        subject = f"mxdesk: a message in {view.address} was too large for a ticket"
        return await self._send(view, subject, body, f"big:{uid}")

    async def _send(self, view: ChannelView, subject: str, body: str, event: str) -> bool:
        """True once the mail is in the spool (the caller then remembers it was sent)."""
        try:
            conn = self._state()
            owner = state.get_tenant(conn, view.tenant).owner
        except Exception as exc:
            log.error("channel=%s alert not sent: %s", view.name, exc)
            return False
        recipients = [owner] + ([self._admin] if self._admin and self._admin != owner else [])
        message = EmailMessage()
        message["From"] = Address("mxdesk", "postmaster", self._base)
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=self._host_name)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should auto-reply
        message.set_content(body)
        data = normalise_line_endings(message.as_bytes())
        digest = hashlib.sha256(f"{view.name}\0{view.created!r}\0{event}".encode()).hexdigest()
        queue_id = f"C{digest[:14].upper()}"
        try:
            # No tenant: the alert goes straight to the recipient's MX, not through the
            # tenant's own outbox (which may be what is broken).
            await queue_notice(self._spool, self._config, queue_id, "", recipients, data)
        except (SpoolError, OSError) as exc:
            log.error("channel=%s alert not queued: %s", view.name, exc)
            return False
        log.info("channel=%s queue_id=%s alert mailed: %s", view.name, queue_id, subject)
        return True
