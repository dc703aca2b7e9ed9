"""A listener process: serves the SMTP sessions the gateway hands it (mxdesk/gateway/listeners.py
says how) and commits their messages to the shared spool. Started by the gateway as
`python -m mxdesk.gateway.listener CONFIG FD`; not a command for people."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from mxdesk import config as cfg
from mxdesk import state
from mxdesk.daemon import settle_collector, setup_logging
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.policy import RecipientPolicy
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.sessions import (
    SessionParts,
    end_sessions,
    mx_session,
    submission_session,
    tls_context,
)
from mxdesk.gateway.smtp import ConnectionLimits
from mxdesk.gateway.smtpsession import SmtpSession
from mxdesk.gateway.spool import Spool
from mxdesk.metrics import GatewayMetrics
from mxdesk.reload import merged
from mxdesk.smtpfast import SessionFactory
from mxdesk.startup import StartupError

log = logging.getLogger("mxdesk.gateway.listener")
SHUTDOWN_GRACE = 10.0
UNLIMITED = 1 << 30  # the gateway counts the connections against the limits


class Channel:
    """This process's end of the socket pair with the gateway."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, text: str) -> None:
        # When the gateway is gone, its end-of-file stops this process.
        with contextlib.suppress(OSError):
            self.sock.send(text.encode())


class ForwardedMetrics(GatewayMetrics):
    """The counters a session updates, told to the gateway, whose /metrics shows them."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def accept(self, listener: str) -> None:
        self._channel.send(f"accept {listener}")

    def refuse(self, listener: str, reply: str) -> None:
        self._channel.send(f"refuse {listener} {reply}")


class Reporting(ConnectionLimits):
    """Tracks this process's sessions and tells the gateway when each ends."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(UNLIMITED, UNLIMITED)
        self._channel = channel

    def release(self, session: object, client: str) -> None:
        if session in self.sessions:
            self._channel.send(f"closed {getattr(session, 'handoff_id', '')}")
        super().release(session, client)


async def serve(config: cfg.Config, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    channel = Channel(sock)
    spool = Spool(config.gateway.spool_path, config.gateway.history_days, shared=True)
    await spool.open()
    spool.on_commit(lambda: channel.send("new"))
    conn = state.connect(config.general.state_db, readonly=True)
    general = config.general
    verifier = None
    if config.inbound_auth.enabled:
        verifier = InboundVerifier(config.inbound_auth, general.host_name)
    parts = SessionParts(
        config,
        spool,
        ForwardedMetrics(channel),
        RecipientPolicy(conn, general.base_domain, config.gateway.postmaster_tenant),
        SenderPolicy(conn, general.base_domain, dict(config.submission.senders)),
        verifier,
        tls_context(config),
    )
    limits = {"mx": Reporting(channel), "submission": Reporting(channel)}
    makers = {"mx": mx_session, "submission": submission_session}
    factories: dict[str, SessionFactory[SmtpSession]] = {
        name: SessionFactory(lambda make=make, name=name: make(parts, limits[name], loop))  # type: ignore[misc]
        for name, make in makers.items()
    }
    stop = asyncio.Event()
    starting: set[asyncio.Task[None]] = set()

    def reload() -> None:
        try:
            new = merged(parts.config, cfg.load(Path(str(config.source))))
            context = tls_context(new)
        except (cfg.ConfigError, StartupError) as exc:
            log.debug("reload: kept the running configuration: %s", exc)
            return
        parts.config, parts.tls = new, context
        for name, make in makers.items():
            factories[name].renew(lambda make=make, name=name: make(parts, limits[name], loop))  # type: ignore[misc]

    async def start_session(conn_id: str, name: str, accepted: socket.socket) -> None:
        def made() -> SmtpSession:
            session = factories[name]()
            session.handoff_id = conn_id  # type: ignore[attr-defined]
            return session

        try:
            await loop.connect_accepted_socket(made, accepted)
        except OSError:
            accepted.close()
            channel.send(f"closed {conn_id}")

    def on_packet() -> None:
        try:
            packet, fds, _, _ = socket.recv_fds(sock, 1024, 1)
        except BlockingIOError:
            return
        except OSError:
            packet, fds = b"", []
        if not packet:
            loop.remove_reader(sock)
            stop.set()  # the gateway ended
            return
        conn_id, _, name = packet.decode().partition(" ")
        if not fds:
            return
        accepted = socket.socket(fileno=fds[0])
        if stop.is_set() or name not in factories:
            accepted.close()
            channel.send(f"closed {conn_id}")
            return
        starting.add(task := loop.create_task(start_session(conn_id, name, accepted)))
        task.add_done_callback(starting.discard)

    sock.setblocking(False)
    loop.add_reader(sock, on_packet)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    settle_collector()
    channel.send("ready")
    await stop.wait()
    await end_sessions(list(limits.values()), SHUTDOWN_GRACE)
    if verifier is not None:
        verifier.close()
    await spool.close()
    conn.close()
    return 0


def main(argv: list[str]) -> int:
    path, fd = argv[1], argv[2]
    sock = socket.socket(fileno=int(fd))  # the end of the pair the gateway passed
    os.set_inheritable(sock.fileno(), False)
    config = cfg.load(Path(path))
    setup_logging(config.general.log_level)
    return asyncio.run(serve(config, sock))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
