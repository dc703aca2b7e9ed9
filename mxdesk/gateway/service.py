"""The gateway's composition root: builds listeners, spool and runners from the config."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping

from mxdesk import state
from mxdesk.config import Config
from mxdesk.gateway.lmtp import LmtpClient, Reply
from mxdesk.gateway.mx import INBOUND, MxHandler
from mxdesk.gateway.policy import RecipientPolicy
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.runner import QueueRunner
from mxdesk.gateway.smtp import ConnectionLimits, GatewaySMTP
from mxdesk.gateway.spool import Spool, SpoolEntry
from mxdesk.smtpfast import SessionFactory

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
    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.gateway.spool_path)
        self.limits = ConnectionLimits(
            config.gateway.max_connections, config.gateway.max_connections_per_client
        )
        self.servers: list[asyncio.Server] = []
        self.runner: QueueRunner | None = None
        self.lmtp: LmtpClient | None = None

    async def start(self) -> None:
        cfg = self.config
        await self.spool.open()
        policy = RecipientPolicy(
            state.connect(cfg.general.state_db, readonly=True),
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

    @property
    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for srv in self.servers for s in srv.sockets]

    async def close(self) -> None:
        """Stops accepting, lets sessions finish (bounded), then stops the runner and spool."""
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.limits.sessions and loop.time() < deadline:
            # A session between commands ends now; one in DATA may finish its message.
            for session in list(self.limits.sessions):
                if not session.in_data:
                    session.shut_down()
            await asyncio.sleep(0.05)
        for session in list(self.limits.sessions):
            session.shut_down()
        if self.runner is not None:
            await self.runner.stop()
        if self.lmtp is not None:
            await self.lmtp.close()
        await self.spool.close()
