"""Listener processes ([gateway] listener_processes): the gateway accepts each connection,
counts it against the limits, and hands the socket to the listener process with the fewest
sessions, which serves the SMTP session and commits to the shared spool.

One message per packet on a SOCK_SEQPACKET pair per process. The gateway sends
"<id> <listener>" with the connection's descriptor; a listener process sends "ready",
"closed <id>" (the limits count the connection out), "new" (entries committed: the runners
wake), "accept <listener>", "refuse <listener> <reply>" (the metrics).
A listener process that ends is started again; one whose gateway ends stops (its socket pair
reads end-of-file).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from mxdesk.config import Config
from mxdesk.gateway.smtp import ConnectionLimits
from mxdesk.gateway.spool import Spool
from mxdesk.metrics import GatewayMetrics
from mxdesk.startup import StartupError

log = logging.getLogger("mxdesk.gateway.listeners")
R421_UNAVAILABLE = "421 4.3.2 Error: service not available, try again later"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # a listener process's sessions get 10 s to finish a message
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(eq=False)
class Handed:
    """A connection served by a listener process, counted in limits until it is closed."""

    listener: str
    client: str
    limits: ConnectionLimits


@dataclass
class Listener:
    index: int
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    sessions: dict[str, Handed] = field(default_factory=dict)
    ready: asyncio.Future[None] | None = None


class Intake(asyncio.Protocol):
    """Accepts one connection for a listener process, or refuses it with a 421."""

    def __init__(self, owner: ListenerProcesses, listener: str, limits: ConnectionLimits):
        self._owner, self._listener, self._limits = owner, listener, limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "local"
        handed = Handed(self._listener, client, self._limits)
        refusal = self._limits.admit(handed, client) or self._owner.hand(transport, handed)
        if refusal is not None:
            self._limits.release(handed, client)
            self._limits.refuse(transport, client, refusal)


class ListenerProcesses:
    def __init__(self, config: Config, spool: Spool, metrics: GatewayMetrics) -> None:
        if config.source is None:
            raise StartupError("gateway.listener_processes needs a configuration file")
        self._config, self._spool, self._metrics = config, spool, metrics
        self._listeners: list[Listener | None] = [None] * config.gateway.listener_processes
        self._next_id = 0
        self._restarts = [0] * len(self._listeners)
        self._stopping = False

    async def start(self) -> None:
        for index in range(len(self._listeners)):
            await self._spawn(index)

    def intake(self, listener: str, limits: ConnectionLimits) -> Callable[[], Intake]:
        return lambda: Intake(self, listener, limits)

    def hand(self, transport: asyncio.Transport, handed: Handed) -> str | None:
        """Passes the connection to the listener process with the fewest sessions; the 421
        to answer when none runs."""
        running = [p for p in self._listeners if p is not None and p.ready is None]
        if not running or self._stopping:
            return R421_UNAVAILABLE
        target = min(running, key=lambda p: len(p.sessions))
        self._next_id += 1
        conn_id = str(self._next_id)
        sock = transport.get_extra_info("socket")
        try:
            socket.send_fds(
                target.channel, [f"{conn_id} {handed.listener}".encode()], [sock.fileno()]
            )
        except OSError as exc:
            log.error("cannot hand a connection to listener process %d: %s", target.index, exc)
            return R421_UNAVAILABLE
        target.sessions[conn_id] = handed
        transport.abort()  # closes the gateway's descriptor; the listener process has its own
        return None

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "mxdesk.gateway.listener", str(self._config.source)]
        try:
            proc = subprocess.Popen(
                [*command, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        listener = Listener(index, proc, ours, ready=loop.create_future())
        self._listeners[index] = listener
        ours.setblocking(False)
        loop.add_reader(ours, self._read, listener)
        assert listener.ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(listener.ready), START_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            self._ended(listener)
            raise StartupError(
                f"listener process {index} did not start ({exc or 'no answer'}): see its"
                " lines above"
            ) from None
        listener.ready = None
        log.info("listener process %d started (pid %d)", index, proc.pid)

    def _read(self, listener: Listener) -> None:
        while True:
            try:
                packet = listener.channel.recv(1024)
            except BlockingIOError:
                return
            except OSError:
                packet = b""
            if not packet:
                self._ended(listener)
                return
            self._message(listener, packet.decode("utf-8", "replace"))

    def _message(self, listener: Listener, text: str) -> None:
        verb, _, rest = text.partition(" ")
        if verb == "closed":
            handed = listener.sessions.pop(rest, None)
            if handed is not None:
                handed.limits.release(handed, handed.client)
        elif verb == "new":
            self._spool.committed_elsewhere()
        elif verb == "accept":
            self._metrics.accept(rest)
        elif verb == "refuse":
            name, _, reply = rest.partition(" ")
            self._metrics.refuse(name, reply)
        elif verb == "ready" and listener.ready is not None and not listener.ready.done():
            listener.ready.set_result(None)

    def _ended(self, listener: Listener) -> None:
        """The listener process closed its end: it ended (or is ending)."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.channel)
        listener.channel.close()
        for handed in listener.sessions.values():
            handed.limits.release(handed, handed.client)
        listener.sessions.clear()
        if listener.ready is not None and not listener.ready.done():
            listener.ready.set_exception(ConnectionError("it ended"))
        if self._listeners[listener.index] is listener:
            self._listeners[listener.index] = None
        if self._stopping:
            return
        code = listener.proc.poll()
        if code is None:
            listener.proc.kill()
            code = listener.proc.wait()
        tries = self._restarts[listener.index]
        delay = RESTART_DELAYS[min(tries, len(RESTART_DELAYS) - 1)]
        self._restarts[listener.index] = tries + 1
        log.error(
            "listener process %d (pid %d) ended (%s): its sessions were cut; another starts"
            " in %.1fs",
            listener.index,
            listener.proc.pid,
            f"signal {-code}" if code < 0 else f"exit {code}",
            delay,
        )
        loop.call_later(delay, lambda: asyncio.ensure_future(self._respawn(listener.index)))

    async def _respawn(self, index: int) -> None:
        if self._stopping or self._listeners[index] is not None:
            return
        try:
            await self._spawn(index)
        except StartupError as exc:
            log.error("%s", exc)  # _ended has scheduled the next try

    def reload(self) -> None:
        """SIGHUP to each: it reads the configuration again and takes what the gateway took."""
        for listener in self._listeners:
            if listener is not None:
                listener.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM to each (it ends its sessions as the gateway does) and waits for them."""
        self._stopping = True
        running = [p for p in self._listeners if p is not None]
        for listener in running:
            listener.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while any(p.proc.poll() is None for p in running) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for listener in running:
            if listener.proc.poll() is None:
                log.error("listener process %d did not stop: killed", listener.index)
                listener.proc.kill()
            listener.proc.wait()
            if self._listeners[listener.index] is listener:
                self._ended(listener)
