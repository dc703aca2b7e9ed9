"""`mxdesk channel test`: connect, log in, open the folder and say what is there, step by step;
nothing in the mailbox is changed (EXAMINE, no RETR)."""

from __future__ import annotations

from mxdesk.channels import ChannelView
from mxdesk.gateway.fetch.errors import FetchError
from mxdesk.gateway.fetch.imap import ImapClient
from mxdesk.gateway.fetch.pop3 import Pop3Client
from mxdesk.gateway.outboxprobe import ProbeStep
from mxdesk.gateway.smtpclient import client_context


async def probe(view: ChannelView, secret: str, timeout: float) -> list[ProbeStep]:
    """secret: the password, or an access token for an OAuth 2.0 channel. Stops at the first
    step that fails; a login that works followed by a folder that cannot be opened is a
    failure (Microsoft 365 does this when a scope or permission is missing)."""
    steps: list[ProbeStep] = []
    context = client_context(view.verify, view.ca_file) if view.security != "none" else None
    where = f"{view.host}:{view.port} ({view.security})"
    try:
        if view.protocol == "imap":
            imap = await ImapClient.connect(view.host, view.port, view.security, context, timeout)
            steps.append(ProbeStep("connect", True, where))
            try:
                await _imap(imap, view, secret, steps)
            finally:
                await imap.logout()
                imap.close()
        else:
            pop = await Pop3Client.connect(view.host, view.port, view.security, context, timeout)
            steps.append(ProbeStep("connect", True, where))
            try:
                await _pop3(pop, view, secret, steps)
            finally:
                pop.close()
    except FetchError as exc:
        names = ("connect", "login", "folder" if view.protocol == "imap" else "list")
        step = names[min(len(steps), 2)]
        steps.append(ProbeStep(step, False, " ".join(str(exc).split())))
    return steps


async def _imap(imap: ImapClient, view: ChannelView, secret: str, steps: list[ProbeStep]) -> None:
    if view.auth == "oauth2":
        await imap.authenticate_xoauth2(view.user, secret)
    else:
        await imap.login(view.user, secret)
    steps.append(ProbeStep("login", True, f"as {view.user} ({view.auth})"))
    folder = await imap.select(view.folder, readonly=True)
    push = "IDLE (push)" if "IDLE" in imap.capabilities else "no IDLE: polled"
    steps.append(
        ProbeStep(
            "folder",
            True,
            f"{view.folder}: {folder.exists} messages, UIDVALIDITY {folder.uidvalidity},"
            f" next UID {folder.uidnext}; {push}",
        )
    )
    if view.after.startswith("delete") and "UIDPLUS" not in imap.capabilities:
        steps.append(
            ProbeStep(
                "delete",
                True,
                "the server has no UIDPLUS: fetched mail is flagged \\Deleted and left for the"
                " server (or another client) to expunge",
            )
        )


async def _pop3(pop: Pop3Client, view: ChannelView, secret: str, steps: list[ProbeStep]) -> None:
    if view.auth == "oauth2":
        await pop.authenticate_xoauth2(view.user, secret)
    else:
        await pop.login(view.user, secret)
    steps.append(ProbeStep("login", True, f"as {view.user} ({view.auth})"))
    count, size = await pop.stat()
    await pop.uidl()  # without UIDL nothing can be fetched exactly once
    steps.append(ProbeStep("list", True, f"{count} messages, {size} bytes; UIDL supported"))
    await pop.quit()
