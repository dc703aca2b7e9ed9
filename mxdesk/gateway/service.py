"""The gateway's composition root: builds listeners, spool and runners from the config."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import TypeVar

from mxdesk import state
from mxdesk.config import Config
from mxdesk.daemon import ReloadError
from mxdesk.dns.lifecycle import DomainLifecycle
from mxdesk.gateway.departure import Departure
from mxdesk.gateway.fetch.manager import ChannelManager
from mxdesk.gateway.fetch.tokens import TokenSource
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.listeners import ListenerProcesses
from mxdesk.gateway.lmtp import LmtpClient, Reply
from mxdesk.gateway.mx import INBOUND
from mxdesk.gateway.outrunner import Notices, OutboundRunner
from mxdesk.gateway.policy import RecipientPolicy
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.runner import Deliverer, QueueRunner
from mxdesk.gateway.scrape import MetricsEndpoint
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.sessions import (
    SessionParts,
    end_sessions,
    mx_session,
    submission_session,
    tls_context,
)
from mxdesk.gateway.signer import SigningProcess
from mxdesk.gateway.smtp import ConnectionLimits
from mxdesk.gateway.spool import Spool, SpoolEntry
from mxdesk.metrics import GatewayMetrics
from mxdesk.secrets import installation_key, secrets_key
from mxdesk.smtpfast import Copyable, SessionFactory
from mxdesk.sockets import listen_unix
from mxdesk.startup import StartupError, address, bind_error

log = logging.getLogger("mxdesk.gateway")
S = TypeVar("S", bound=Copyable)
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


class GatewayService:
    def __init__(self, config: Config, outbound: Deliverer | None = None) -> None:
        """outbound: the deliverer of outbound entries (default: SMTP to MX or smarthost)."""
        self.config = config
        self.outbound = outbound
        self.metrics = GatewayMetrics()
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.spool = Spool(config.gateway.spool_path, config.gateway.history_days)
        self.limits = ConnectionLimits(
            config.gateway.max_connections,
            config.gateway.max_connections_per_client,
            on_refusal=lambda reply: self.metrics.refuse("mx", reply),
        )
        self.servers: list[asyncio.Server] = []
        self.runner: QueueRunner | None = None
        self.outbound_runner: OutboundRunner | None = None
        self.submission_limits: ConnectionLimits | None = None
        self.submission_server: asyncio.Server | None = None
        self.lmtp: LmtpClient | None = None
        self.state: sqlite3.Connection | None = None
        self.lifecycle: DomainLifecycle | None = None
        self.channels: ChannelManager | None = None
        # SPF, DKIM, DMARC and ARC verdicts of inbound mail (MX and channels); None: disabled.
        self.verifier: InboundVerifier | None = None
        self._writable: sqlite3.Connection | None = None
        # OAuth 2.0 access tokens, shared by the fetchers and the outboxes that use a grant.
        self.tokens = TokenSource(
            config.channels, self._writable_state, lambda: secrets_key(self.config.general)
        )
        self.parts: SessionParts | None = None
        # The processes that serve the sessions ([gateway] listener_processes; None: here).
        self.listeners: ListenerProcesses | None = None
        # The outbound runner's DKIM signatures (listener processes only commit what they
        # accept); started with the gateway.
        self.signer = SigningProcess()
        # Remake the session templates of the listeners from self.config (after a reload).
        self._renewals: list[Callable[[], None]] = []

    async def start(self) -> None:
        cfg = self.config
        await self.spool.open()
        if cfg.metrics.listen is not None:
            self.metrics_endpoint = MetricsEndpoint(self.metrics, self.spool, cfg.metrics.listen)
            try:
                await self.metrics_endpoint.start()
            except OSError as exc:
                at = cfg.metrics.listen
                raise bind_error(at.host, at.port, exc, "[metrics] listen") from exc
        # One read-only connection for every lookup on the loop (policy, senders, outboxes).
        self.state = state.connect(cfg.general.state_db, readonly=True)
        policy = RecipientPolicy(
            self.state,
            cfg.general.base_domain,
            cfg.gateway.postmaster_tenant,
        )
        verifier = None
        if cfg.inbound_auth.enabled:
            verifier = self.verifier = InboundVerifier(cfg.inbound_auth, cfg.general.host_name)
        senders = SenderPolicy(self.state, cfg.general.base_domain, dict(cfg.submission.senders))
        self.parts = SessionParts(
            cfg, self.spool, self.metrics, policy, senders, verifier, tls_context(cfg)
        )
        await self.signer.start()
        self.submission_limits = ConnectionLimits(
            cfg.gateway.max_connections,
            cfg.gateway.max_connections,
            on_refusal=lambda reply: self.metrics.refuse("submission", reply),
        )
        if cfg.gateway.listener_processes:
            self.listeners = ListenerProcesses(cfg, self.spool, self.metrics)
            await self.listeners.start()
            mx: Callable[[], asyncio.Protocol] = self.listeners.intake("mx", self.limits)
            submission: Callable[[], asyncio.Protocol] = self.listeners.intake(
                "submission", self.submission_limits
            )
        else:
            mx = self._sessions(mx_session, self.limits)
            submission = self._sessions(submission_session, self.submission_limits)
        loop = asyncio.get_running_loop()
        for listen in cfg.gateway.listen:
            try:
                server = await loop.create_server(
                    mx, listen.host, listen.port, reuse_address=True, backlog=512
                )
            except OSError as exc:
                raise bind_error(listen.host, listen.port, exc) from exc
            self.servers.append(server)
            for sock in server.sockets:
                log.info("MX listening on %s", sock.getsockname()[:2])
        socket_path = cfg.submission.socket
        self.submission_server = await listen_unix(
            socket_path,
            submission,
            cfg.submission.socket_group,
            "gateway.submission.socket_group",
            owner="gateway",
        )
        log.info("submission listening on %s", socket_path)
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
            self.metrics,
        )
        self.runner.start()
        await self._start_outbound(policy, senders, self.state)

    def _sessions(
        self,
        make: Callable[[SessionParts, ConnectionLimits, asyncio.AbstractEventLoop], S],
        limits: ConnectionLimits,
    ) -> SessionFactory[S]:
        """Sessions served here, made from self.parts (remade after a reload)."""
        loop, parts = asyncio.get_running_loop(), self.parts
        assert parts is not None
        factory = SessionFactory(lambda: make(parts, limits, loop))
        self._renewals.append(lambda: factory.renew(lambda: make(parts, limits, loop)))
        return factory

    async def _start_outbound(
        self, policy: RecipientPolicy, senders: SenderPolicy, conn: sqlite3.Connection
    ) -> None:
        cfg = self.config
        if self.outbound is None:
            from mxdesk.gateway.smarthosts import smtp_deliverer

            self.outbound = smtp_deliverer(cfg, conn, self.tokens)
        notices = Notices(policy, cfg.general.host_name, installation_key(cfg.general.state_dir))
        retry = cfg.outbound_retry
        self.outbound_runner = OutboundRunner(
            self.spool,
            self.outbound,
            RetryPolicy.from_config(retry),
            retry.concurrency,
            notices,
            Departure(senders, self.signer.sign, self.metrics),
            self.metrics,
        )
        self.outbound_runner.start()
        self.lifecycle = DomainLifecycle(cfg, self.spool)
        self.lifecycle.start()
        self.channels = ChannelManager(cfg, self.spool, self.metrics, self.tokens, self.verifier)
        self.channels.start()

    def _writable_state(self) -> sqlite3.Connection:
        """For the few writes of the gateway's tasks (a rotated refresh token)."""
        if self._writable is None:
            self._writable = state.connect(self.config.general.state_db)
        return self._writable

    @property
    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for srv in self.servers for s in srv.sockets]

    @property
    def addresses(self) -> list[str]:
        """Where the MX listens, as bound ("127.0.0.1:2525", "[::1]:2525")."""
        return [address(*s.getsockname()[:2]) for srv in self.servers for s in srv.sockets]

    def prepare_reload(self, config: Config) -> Callable[[], None]:
        """The TLS certificate and key, limits and timeouts of config, for the sessions that
        start from then on; the certificate is loaded now, so a bad one changes nothing."""
        gw = config.gateway
        try:
            context = tls_context(config)
        except StartupError as exc:
            raise ReloadError(str(exc)) from exc

        def apply() -> None:
            self.config = config
            if self.parts is not None:
                self.parts.config, self.parts.tls = config, context
            self.limits.total = gw.max_connections
            self.limits.per_client = gw.max_connections_per_client
            if self.submission_limits is not None:
                self.submission_limits.total = self.submission_limits.per_client = (
                    gw.max_connections
                )
            for renew in self._renewals:
                renew()
            if self.listeners is not None:
                self.listeners.reload()

        return apply

    async def close(self) -> None:
        """Stops accepting, lets sessions finish (bounded), then stops the runner and spool."""
        for server in [*self.servers, *filter(None, [self.submission_server])]:
            server.close()
        if self.listeners is not None:
            await self.listeners.stop()  # each ends its sessions as below
        else:
            limits = [self.limits, *filter(None, [self.submission_limits])]
            await end_sessions(limits, SHUTDOWN_GRACE)
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.close()
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        if self.channels is not None:
            await self.channels.stop()
        # Both at once: each waits at most STOP_GRACE for a peer that does not answer.
        await asyncio.gather(
            *(r.stop() for r in (self.runner, self.outbound_runner) if r is not None)
        )
        await self.signer.close()  # after the deliveries it signs for
        close = getattr(self.outbound, "close", None)
        if close is not None:
            await close()
        await self.tokens.settle()  # before state.db closes: a rotated refresh token is kept
        if self.lmtp is not None:
            await self.lmtp.close()
        if self.verifier is not None:
            self.verifier.close()
        await self.spool.close()
        if self.state is not None:
            self.state.close()
        if self._writable is not None:
            self._writable.close()
        self.config.submission.socket.unlink(missing_ok=True)
