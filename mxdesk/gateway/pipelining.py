"""SMTP PIPELINING (RFC 2920) for the outbound client: MAIL, RCPT and DATA in one write."""

from __future__ import annotations

from collections.abc import Sequence

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from mxdesk.gateway.lmtp import dot_stuff


class Stale(Exception):
    """A kept connection did not answer the RSET in front of a pipelined group: nothing of the
    message was accepted, so another connection may take it."""


def can_pipeline(smtp: aiosmtplib.SMTP) -> bool:
    """The server offers PIPELINING and this aiosmtplib has the reading of buffered replies
    that sending several commands at once needs (aiosmtplib itself sends one at a time: a
    later version without these parts gets the one-at-a-time path)."""
    protocol = smtp.protocol
    return (
        smtp.supports_extension("pipelining")
        and isinstance(protocol, SMTPProtocol)
        and hasattr(protocol, "_read_response_from_buffer")
        and hasattr(protocol, "_command_lock")
    )


async def commands(
    smtp: aiosmtplib.SMTP,
    lines: Sequence[bytes],
    timeout: float | None,
    *,
    probe: float | None = None,
) -> list[aiosmtplib.SMTPResponse]:
    """Sends lines (without CRLF) in one write and returns their replies, in order.

    probe: the connection was kept from an earlier message; an RSET goes first in the same
    write, and if it is not answered 250 within probe seconds, Stale is raised (a server may
    close an idle connection at any time; RFC 2920 lets RSET lead a group).

    aiosmtplib parses one reply per wait and keeps what follows in its buffer: the next ones
    are taken from there, or waited for. No other coroutine runs between taking one reply and
    waiting for the next, so none that arrives meanwhile can be missed."""
    protocol = smtp.protocol
    assert isinstance(protocol, SMTPProtocol)
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise ValueError("a command line contains CR or LF")
    sent = [b"RSET", *lines] if probe is not None else list(lines)
    async with protocol._command_lock:  # type: ignore[union-attr]
        protocol._response_pending = True
        replies = []
        try:
            protocol.write(b"".join(line + b"\r\n" for line in sent))
            if probe is not None:
                first = protocol._read_response_from_buffer()
                first = first or await protocol.read_response(timeout=probe)
                if first.code != 250:
                    raise Stale(f"RSET answered {first.code} {first.message}")
        except (aiosmtplib.SMTPException, OSError) as exc:
            if probe is None:
                raise
            raise Stale(f"{type(exc).__name__}: {exc}") from exc
        for _ in lines:
            buffered = protocol._read_response_from_buffer()
            replies.append(buffered or await protocol.read_response(timeout=timeout))
    return replies


async def message(
    smtp: aiosmtplib.SMTP, data: bytes, timeout: float | None
) -> aiosmtplib.SMTPResponse:
    """After a 354: the message, dot-stuffed with CRLF line endings, and the final reply."""
    protocol = smtp.protocol
    assert isinstance(protocol, SMTPProtocol)
    async with protocol._command_lock:  # type: ignore[union-attr]
        protocol._response_pending = True
        protocol.write(dot_stuff(data))
        return await protocol.read_response(timeout=timeout)
