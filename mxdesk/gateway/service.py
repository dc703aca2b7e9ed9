"""The gateway's composition root: builds listeners, spool and runners from the config."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from collections.abc import Mapping

from mxdesk import state
from mxdesk.config import Config
from mxdesk.dns.lifecycle import DomainLifecycle
from mxdesk.gateway.lmtp import LmtpClient, Reply
from mxdesk.gateway.mx import INBOUND, MxHandler
from mxdesk.gateway.outrunner import Notices, OutboundRunner
from mxdesk.gateway.policy import RecipientPolicy
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.runner import Deliverer, QueueRunner
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.smtp import ConnectionLimits, GatewaySMTP
from mxdesk.gateway.spool import Spool, SpoolEntry
from mxdesk.gateway.submission import SubmissionHandler, SubmissionSMTP
from mxdesk.secrets import installation_key
from mxdesk.smtpfast import SessionFactory
from mxdesk.sockets import listen_unix

log = logging.getLogger("mxdesk.gateway")
SHUTDOWN_GRACE = 10.0


class LmtpDeliverer:
    """Hands inbound entries to the ticket store (or any LMTP server) on its Unix socket."""

    def __init__(self, client: LmtpClient) -> None:
        self._client = client

    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        mailboxes = [r.mailbox for r in entry.pending]
        # The store's idempotency key: a re-delivered entry lands once.
        data = f"X-Mxdesk-Queue-Id: {entry.id}\r\n".encode() + entry.data
        replies = await self._client.deliver(entry.mail_from, mailboxes, data)
        return dict(zip(mailboxes, replies, strict=True))


def tls_context(config: Config) -> ssl.SSLContext | None:
    gw = config.gateway
    if gw.tls_cert is None or gw.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(gw.tls_cert, gw.tls_key)
    return context


class GatewayService:
    def __init__(self, config: Config, outbound: Deliverer | None = None) -> None:
        """outbound: the deliverer of outbound entries (default: SMTP to MX or smarthost)."""
        self.config = config
        self.outbound = outbound
        self.spool = Spool(config.gateway.spool_path)
        self.limits = ConnectionLimits(
            config.gateway.max_connections, config.gateway.max_connections_per_client
        )
        self.servers: list[asyncio.Server] = []
        self.runner: QueueRunner | None = None
        self.outbound_runner: OutboundRunner | None = None
        self.submission_limits: ConnectionLimits | None = None
        self.submission_server: asyncio.Server | None = None
        self.lmtp: LmtpClient | None = None
        self.state: sqlite3.Connection | None = None
        self.lifecycle: DomainLifecycle | None = None

    async def start(self) -> None:
        cfg = self.config
        await self.spool.open()
        # One read-only connection for every lookup on the loop (policy, senders, outboxes).
        self.state = state.connect(cfg.general.state_db, readonly=True)
        policy = RecipientPolicy(
            self.state,
            cfg.general.base_domain,
            cfg.gateway.postmaster_tenant,
        )
        handler = MxHandler(policy, self.spool, cfg.general.host_name, cfg.gateway.max_recipients)
        context = tls_context(cfg)
        loop = asyncio.get_running_loop()

        def protocol() -> GatewaySMTP:
            return GatewaySMTP(
                handler,
                limits=self.limits,
                session_timeout=cfg.gateway.session_timeout,
                data_size_limit=cfg.gateway.max_message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.general.host_name,
                ident="mxdesk",
                tls_context=context,
                timeout=cfg.gateway.idle_timeout,
                loop=loop,
            )

        factory = SessionFactory(protocol)
        for listen in cfg.gateway.listen:
            server = await loop.create_server(
                factory, listen.host, listen.port, reuse_address=True, backlog=512
            )
            self.servers.append(server)
            for sock in server.sockets:
                log.info("MX listening on %s", sock.getsockname()[:2])
        retry = cfg.inbound_retry
        client = LmtpClient(
            cfg.store.lmtp_socket, cfg.general.host_name, keep_idle=retry.concurrency
        )
        self.lmtp = client
        self.runner = QueueRunner(
            self.spool,
            INBOUND,
            LmtpDeliverer(client),
            RetryPolicy.from_config(retry),
            retry.concurrency,
            logging.getLogger("mxdesk.gateway.inbound"),
        )
        self.runner.start()
        await self._start_outbound(policy, self.state)

    async def _start_outbound(self, policy: RecipientPolicy, conn: sqlite3.Connection) -> None:
        cfg = self.config
        senders = SenderPolicy(conn, cfg.general.base_domain, dict(cfg.submission.senders))
        handler = SubmissionHandler(
            senders,
            self.spool,
            cfg.general.host_name,
            cfg.gateway.max_recipients,
            cfg.outbound.send_delay,
        )
        local = ConnectionLimits(cfg.gateway.max_connections, cfg.gateway.max_connections)
        loop = asyncio.get_running_loop()

        def protocol() -> SubmissionSMTP:
            return SubmissionSMTP(
                handler,
                limits=local,
                session_timeout=cfg.gateway.session_timeout,
                data_size_limit=cfg.gateway.max_message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.general.host_name,
                ident="mxdesk submission",
                timeout=cfg.gateway.idle_timeout,
                loop=loop,
            )

        socket_path = cfg.submission.socket
        server = await listen_unix(
            socket_path, SessionFactory(protocol), cfg.submission.socket_group
        )
        self.submission_server = server
        self.submission_limits = local
        log.info("submission listening on %s", socket_path)
        if self.outbound is None:
            from mxdesk.gateway.smarthosts import smtp_deliverer

            self.outbound = smtp_deliverer(cfg, conn)
        notices = Notices(policy, cfg.general.host_name, installation_key(cfg.general.state_dir))
        retry = cfg.outbound_retry
        self.outbound_runner = OutboundRunner(
            self.spool,
            self.outbound,
            RetryPolicy.from_config(retry),
            retry.concurrency,
            notices,
            senders.waiting_for,
        )
        self.outbound_runner.start()
        self.lifecycle = DomainLifecycle(cfg, self.spool)
        self.lifecycle.start()

    @property
    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for srv in self.servers for s in srv.sockets]

    async def close(self) -> None:
        """Stops accepting, lets sessions finish (bounded), then stops the runner and spool."""
        for server in [*self.servers, *filter(None, [self.submission_server])]:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        sessions = [self.limits, *([self.submission_limits] if self.submission_limits else [])]
        while any(s.sessions for s in sessions) and loop.time() < deadline:
            # A session between commands ends now; one in DATA may finish its message.
            for limits in sessions:
                for session in list(limits.sessions):
                    if not session.in_data:
                        session.shut_down()
            await asyncio.sleep(0.05)
        for limits in sessions:
            for session in list(limits.sessions):
                session.shut_down()
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        if self.runner is not None:
            await self.runner.stop()
        if self.outbound_runner is not None:
            await self.outbound_runner.stop()
        close = getattr(self.outbound, "close", None)
        if close is not None:
            await close()
        if self.lmtp is not None:
            await self.lmtp.close()
        await self.spool.close()
        if self.state is not None:
            self.state.close()
        self.config.submission.socket.unlink(missing_ok=True)
