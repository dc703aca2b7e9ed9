"""The SMTP sessions of the MX and of the submission socket, as the gateway makes them in its
own process or a listener process makes them in its (mxdesk/gateway/listener.py)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from mxdesk.config import Config
from mxdesk.configlines import locate_in
from mxdesk.configtls import TlsFilesError, server_context
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.mx import MxHandler
from mxdesk.gateway.policy import RecipientPolicy
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.smtp import ConnectionLimits
from mxdesk.gateway.smtpsession import SmtpSession
from mxdesk.gateway.spool import Spool
from mxdesk.gateway.submission import SubmissionHandler, SubmissionSession
from mxdesk.metrics import GatewayMetrics
from mxdesk.startup import StartupError


@dataclass
class SessionParts:
    """What a session needs; config and tls are replaced by a reload (SIGHUP)."""

    config: Config
    spool: Spool
    metrics: GatewayMetrics
    policy: RecipientPolicy
    senders: SenderPolicy
    verifier: InboundVerifier | None
    tls: ssl.SSLContext | None


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server side of STARTTLS (None without a certificate); raises StartupError naming
    the files and what is wrong with them when they cannot be loaded."""
    gw = config.gateway
    if gw.tls_cert is None or gw.tls_key is None:
        return None
    try:
        return server_context(gw.tls_cert, gw.tls_key)
    except TlsFilesError as exc:  # in check-config's words
        problems = locate_in(config.source, exc.problems)
        raise StartupError("; ".join(str(p) for p in problems)) from exc


def mx_session(
    parts: SessionParts, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop
) -> SmtpSession:
    cfg = parts.config
    gw = cfg.gateway
    handler = MxHandler(
        parts.policy,
        parts.spool,
        cfg.general.host_name,
        gw.max_recipients,
        parts.metrics,
        min_free_mb=gw.min_free_mb,
        verifier=parts.verifier,
    )
    return SmtpSession(handler, limits, loop, tls=parts.tls, **_options(parts))


def submission_session(
    parts: SessionParts, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop
) -> SubmissionSession:
    cfg = parts.config
    gw = cfg.gateway
    handler = SubmissionHandler(
        parts.senders,
        parts.spool,
        cfg.general.host_name,
        gw.max_recipients,
        cfg.outbound.send_delay,
        parts.metrics,
    )
    return SubmissionSession(handler, limits, loop, tls=None, **_options(parts))


def _options(parts: SessionParts) -> dict[str, Any]:
    """What every session of both listeners is given: timers, size, name."""
    gw = parts.config.gateway
    return {
        "hostname": parts.config.general.host_name,
        "data_size_limit": gw.max_message_size,
        "idle_timeout": gw.idle_timeout,
        "session_timeout": gw.session_timeout,
    }


async def end_sessions(limits: list[ConnectionLimits], grace: float) -> None:
    """At shutdown: a session between commands ends now, one in DATA may finish its message
    (for grace seconds at most); then every session ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while any(s.sessions for s in limits) and loop.time() < deadline:
        for each in limits:
            for session in list(each.sessions):
                if not session.in_data:
                    session.shut_down()
        await asyncio.sleep(0.05)
    for each in limits:
        for session in list(each.sessions):
            session.shut_down()
