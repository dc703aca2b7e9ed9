"""`mxdesk outbox test`: a session with a company outbox up to MAIL FROM, step by step.

The common failure of a company outbox, a server that refuses the sender address, shows only
at MAIL FROM; testing it before a customer's reply is lost to it means going that far, then
RSET: nothing is sent. The session is opened by the gateway's own Connector, so the test sees
the server as a delivery would (TLS mode, certificate check, AUTH).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosmtplib

from mxdesk.config import OutboundConfig
from mxdesk.gateway.smtpclient import Connector, Smarthost, Unusable, quit_quietly, reason_of
from mxdesk.outbox import OutboxSettings


@dataclass(frozen=True)
class ProbeStep:
    step: str
    ok: bool
    reply: str


async def probe(
    settings: OutboxSettings, outbound: OutboundConfig, helo: str, token: str = ""
) -> list[ProbeStep]:
    """Connect (with TLS as configured), log in (with token: SASL XOAUTH2), MAIL FROM the
    outbox address, RSET, QUIT; stops at the first step that fails."""
    host = Smarthost(
        host=settings.host,
        port=settings.port,
        security=settings.security,
        user="",  # logged in below, as a step of its own
        password="",
        address=settings.address,
        verify=settings.verify,
        ca_file=settings.ca_file,
    )
    steps: list[ProbeStep] = []
    where = f"{settings.host}:{settings.port} ({settings.security})"
    try:
        session = await Connector(outbound, helo).open_smarthost(host, host)
    except Unusable as exc:
        return [ProbeStep(f"connect to {where}", False, exc.reply.text)]
    smtp = session.smtp
    tls = "TLS" if session.tls else "no TLS"
    steps.append(ProbeStep(f"connect to {where}", True, f"{session.remote}, {tls}"))
    try:
        if settings.user and token:
            reply = await smtp.auth_xoauth2(settings.user, token)
            steps.append(ProbeStep(f"AUTH XOAUTH2 as {settings.user}", True, _text(reply)))
        elif settings.user:
            reply = await smtp.login(settings.user, settings.password)
            steps.append(ProbeStep(f"AUTH as {settings.user}", True, _text(reply)))
        reply = await smtp.mail(settings.address)
        steps.append(ProbeStep(f"MAIL FROM:<{settings.address}>", True, _text(reply)))
        reply = await smtp.rset()
        steps.append(ProbeStep("RSET", True, _text(reply)))
    except aiosmtplib.SMTPResponseException as exc:
        step = _next_step(steps, settings)
        steps.append(ProbeStep(step, False, f"{exc.code} {' '.join(exc.message.split())}"))
    except (aiosmtplib.SMTPException, OSError) as exc:
        steps.append(ProbeStep(_next_step(steps, settings), False, reason_of(exc)))
    finally:
        await quit_quietly(smtp)
    return steps


def _next_step(done: list[ProbeStep], settings: OutboxSettings) -> str:
    names = [f"AUTH as {settings.user}"] if settings.user else []
    names += [f"MAIL FROM:<{settings.address}>", "RSET"]
    return names[len(done) - 1]


def _text(reply: aiosmtplib.SMTPResponse) -> str:
    return f"{reply.code} {' '.join(reply.message.split())}"
