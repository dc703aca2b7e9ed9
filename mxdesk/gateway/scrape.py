"""The metrics endpoint: GET /metrics over HTTP/1.x, in Prometheus's text format."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mxdesk.configread import Listen
from mxdesk.gateway.spool import Spool
from mxdesk.metrics import CONTENT_TYPE, GatewayMetrics

log = logging.getLogger("mxdesk.gateway.metrics")
READ_TIMEOUT = 5.0
MAX_HEAD = 8192  # bytes of request line and headers; a scraper sends a few hundred


class MetricsEndpoint:
    """One request per connection; the spool gauges are read at each scrape."""

    def __init__(self, metrics: GatewayMetrics, spool: Spool, listen: Listen) -> None:
        self._metrics = metrics
        self._spool = spool
        self._listen = listen
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._listen.host, self._listen.port, reuse_address=True, limit=MAX_HEAD
        )
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("metrics on http://%s:%d/metrics", host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            except asyncio.LimitOverrunError:
                await _respond(writer, "431 Request Header Fields Too Large", b"")
                return
            await self._answer(writer, head.split(b"\r\n", 1)[0].split())
        except (ConnectionError, OSError) as exc:
            log.debug("metrics client went away: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, request: list[bytes]) -> None:
        if len(request) != 3 or not request[2].startswith(b"HTTP/1."):
            await _respond(writer, "400 Bad Request", b"not an HTTP/1.x request\n")
            return
        method, target = request[0], request[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            await _respond(writer, "405 Method Not Allowed", b"GET /metrics\n", "Allow: GET, HEAD")
            return
        if target != b"/metrics":
            await _respond(writer, "404 Not Found", b"the metrics are at /metrics\n")
            return
        try:
            self._metrics.set_spool(*await self._spool.counts())
        except Exception as exc:
            # The counters are still worth serving; the spool's trouble is in its own log.
            log.warning("metrics: cannot read the spool: %s", exc)
        body = self._metrics.exposition()
        await _respond(writer, "200 OK", body, head_only=method == b"HEAD")


async def _respond(
    writer: asyncio.StreamWriter,
    status: str,
    body: bytes,
    extra: str = "",
    head_only: bool = False,
) -> None:
    content_type = CONTENT_TYPE if status.startswith("200") else "text/plain"
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *([extra] if extra else []),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body))
    await writer.drain()
