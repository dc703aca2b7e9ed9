"""The gateway's composition root: builds listeners, spool and runners from the config."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from collections.abc import Callable, Mapping

from mxdesk import state
from mxdesk.config import Config
from mxdesk.daemon import ReloadError
from mxdesk.dns.lifecycle import DomainLifecycle
from mxdesk.gateway.fetch.manager import ChannelManager
from mxdesk.gateway.fetch.tokens import TokenSource
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.lmtp import LmtpClient, Reply
from mxdesk.gateway.mx import INBOUND, MxHandler
from mxdesk.gateway.outrunner import Notices, OutboundRunner
from mxdesk.gateway.policy import RecipientPolicy
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.runner import Deliverer, QueueRunner
from mxdesk.gateway.scrape import MetricsEndpoint
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.smtp import ConnectionLimits, GatewaySMTP
from mxdesk.gateway.spool import Spool, SpoolEntry
from mxdesk.gateway.submission import SubmissionHandler, SubmissionSMTP
from mxdesk.metrics import GatewayMetrics
from mxdesk.secrets import installation_key, secrets_key
from mxdesk.smtpfast import SessionFactory
from mxdesk.sockets import listen_unix
from mxdesk.startup import StartupError, address, bind_error

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
    """The server side of STARTTLS (None without a certificate); raises StartupError naming
    the files when they cannot be loaded."""
    gw = config.gateway
    if gw.tls_cert is None or gw.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(gw.tls_cert, gw.tls_key)
    except OSError as exc:  # ssl.SSLError is one
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise StartupError(
            f"gateway.tls_cert: {gw.tls_cert} with {gw.tls_key} cannot be loaded ({reason}):"
            " check both files, their owner and mode"
        ) from exc
    return context


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
        self.tls: ssl.SSLContext | None = None
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
        self.tls = tls_context(cfg)
        if cfg.inbound_auth.enabled:
            self.verifier = InboundVerifier(cfg.inbound_auth, cfg.general.host_name)
        loop = asyncio.get_running_loop()

        def protocol() -> GatewaySMTP:
            gw = self.config.gateway  # read at start and on each reload (SIGHUP)
            handler = MxHandler(
                policy,
                self.spool,
                cfg.general.host_name,
                gw.max_recipients,
                self.metrics,
                min_free_mb=gw.min_free_mb,
                verifier=self.verifier,
            )
            return GatewaySMTP(
                handler,
                limits=self.limits,
                session_timeout=gw.session_timeout,
                data_size_limit=gw.max_message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.general.host_name,
                ident="mxdesk",
                tls_context=self.tls,
                timeout=gw.idle_timeout,
                loop=loop,
            )

        factory = SessionFactory(protocol)
        self._renewals.append(lambda: factory.renew(protocol))
        for listen in cfg.gateway.listen:
            try:
                server = await loop.create_server(
                    factory, listen.host, listen.port, reuse_address=True, backlog=512
                )
            except OSError as exc:
                raise bind_error(listen.host, listen.port, exc) from exc
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
            self.metrics,
        )
        self.runner.start()
        await self._start_outbound(policy, self.state)

    async def _start_outbound(self, policy: RecipientPolicy, conn: sqlite3.Connection) -> None:
        cfg = self.config
        senders = SenderPolicy(conn, cfg.general.base_domain, dict(cfg.submission.senders))
        local = ConnectionLimits(
            cfg.gateway.max_connections,
            cfg.gateway.max_connections,
            on_refusal=lambda reply: self.metrics.refuse("submission", reply),
        )
        loop = asyncio.get_running_loop()

        def protocol() -> SubmissionSMTP:
            gw = self.config.gateway  # read at start and on each reload (SIGHUP)
            handler = SubmissionHandler(
                senders,
                self.spool,
                cfg.general.host_name,
                gw.max_recipients,
                cfg.outbound.send_delay,
                self.metrics,
            )
            return SubmissionSMTP(
                handler,
                limits=local,
                session_timeout=gw.session_timeout,
                data_size_limit=gw.max_message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.general.host_name,
                ident="mxdesk submission",
                timeout=gw.idle_timeout,
                loop=loop,
            )

        socket_path = cfg.submission.socket
        factory = SessionFactory(protocol)
        self._renewals.append(lambda: factory.renew(protocol))
        server = await listen_unix(
            socket_path,
            factory,
            cfg.submission.socket_group,
            "gateway.submission.socket_group",
            owner="gateway",
        )
        self.submission_server = server
        self.submission_limits = local
        log.info("submission listening on %s", socket_path)
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
            senders.waiting_for,
            self.metrics,
            senders.resign,
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
            self.config, self.tls = config, context
            self.limits.total = gw.max_connections
            self.limits.per_client = gw.max_connections_per_client
            if self.submission_limits is not None:
                self.submission_limits.total = self.submission_limits.per_client = (
                    gw.max_connections
                )
            for renew in self._renewals:
                renew()

        return apply

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
        close = getattr(self.outbound, "close", None)
        if close is not None:
            await close()
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
