"""Running a daemon: logging, signals, and systemd readiness notifications (sd_notify)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("mxdesk")


class Service(Protocol):
    async def close(self) -> None: ...


def notify(state: str) -> None:
    """Sends a datagram to $NOTIFY_SOCKET (systemd Type=notify); does nothing without it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", path, exc)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal adds the time; elsewhere it is useful.
    fmt = (
        "%(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command at INFO; its events reach our log through the handler.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


async def serve(start: Callable[[], Awaitable[list[Service]]]) -> int:
    """Starts the services, reports READY=1, runs until SIGTERM or SIGINT, then closes them."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    services = await start()
    notify("READY=1\nSTATUS=accepting mail")
    log.info("ready")
    await stop.wait()
    log.info("stopping: finishing work in flight")
    notify("STOPPING=1")
    for service in services:
        await service.close()
    log.info("stopped")
    return 0
