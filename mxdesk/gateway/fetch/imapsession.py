"""One IMAP connection's exchange: tags, literals, continuations, what untagged answers say."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence

from mxdesk.gateway.fetch.errors import CommandFailed, ConnectionLost, FetchError, ProtocolError
from mxdesk.gateway.fetch.imapdata import Literal, Part
from mxdesk.gateway.fetch.imapwire import ImapStream, Response


class ImapSession:
    """Runs one command at a time over a stream. After any error other than the command's own
    (its NO or BAD), and after a cancellation, the connection is closed: connect again.

    ``exists_seen`` is set whenever the server reports new mail (EXISTS or RECENT), whatever the
    command; ``capabilities`` follow what the server last said."""

    def __init__(self, stream: ImapStream, host: str) -> None:
        self.capabilities: frozenset[str] = frozenset()
        self.exists_seen = False
        self._stream, self._host = stream, host
        self._tags = itertools.count(1)
        self._busy = ""  # the tag of the command whose answer is not read to its end
        self._last = Response("")  # the last tagged answer
        self._logging_out = False
        self._capabilities_new = False

    def _new_mail(self) -> bool:
        seen, self.exists_seen = self.exists_seen, False
        return seen

    def close(self) -> None:
        """Aborts the connection; never raises."""
        self._stream.close()

    @contextlib.contextmanager
    def _parsing(self) -> Iterator[None]:
        """Data from the server that makes no sense ends the session."""
        try:
            yield
        except ValueError as e:
            self._stream.close(str(e))
            raise ProtocolError(f"{self._stream.peer}: {e}") from None

    def _set_capabilities(self, names: Sequence[str]) -> None:
        self.capabilities = frozenset(name.upper() for name in names)
        self._capabilities_new = True

    # -- the exchange -----------------------------------------------------------------------

    async def _run(
        self,
        parts: Sequence[Part],
        what: str,
        error: type[FetchError] = CommandFailed,
        respond: Callable[[str], bytes] | None = None,
    ) -> list[Response]:
        return [r async for r in self._command(parts, what, error, respond)]

    async def _send(self, line: bytes, what: str) -> str:
        """Sends a command's first line (its CRLF included); returns its tag."""
        if self._busy:
            self._stream.close(f"the answer to {self._stream.doing} was not read to its end")
        self._stream.doing = what
        tag = self._busy = f"A{next(self._tags):04d}"
        await self._stream.write(tag.encode() + b" " + line)
        return tag

    async def _command(
        self,
        parts: Sequence[Part],
        what: str,
        error: type[FetchError],
        respond: Callable[[str], bytes] | None = None,
    ) -> AsyncGenerator[Response, None]:
        """Sends a command, yields its untagged answers; returns at its tagged OK, raises error
        at NO or BAD. Each literal waits for the server's "+" (RFC 3501 §7.5)."""
        lines, line = [], b""
        for part in parts:
            if isinstance(part, Literal):
                lines.append(line + b"{%d}\r\n" % len(part.data))
                line = part.data
            else:
                line += part
        tag = await self._send(lines[0] if lines else line + b"\r\n", what)
        try:
            for following in [*lines[1:], line + b"\r\n"] if lines else []:
                while (r := await self._stream.read()).tag != "+":
                    if self._finished(r, tag, error):
                        raise ProtocolError(f"{self._stream.peer}: {what} ended before its end")
                    yield r
                await self._stream.write(following)
            while True:
                r = await self._stream.read()
                if r.tag == "+" and respond is not None:
                    await self._stream.write(respond(r.text) + b"\r\n")
                elif self._finished(r, tag, error):
                    return
                else:
                    yield r
        finally:
            if self._busy == tag:
                self.close()

    def _finished(
        self, response: Response, tag: str, error: type[FetchError] = CommandFailed
    ) -> bool:
        """Handles one response: False for an untagged one, True for the command's OK."""
        peer = self._stream.peer
        if response.tag == "*":
            self._untagged(response)
            return False
        if response.tag != tag:
            self.close()
            raise ProtocolError(f"{peer}: unexpected {response.tag} {response.status}")
        self._busy, self._last = "", response
        if response.code == "CAPABILITY":
            self._set_capabilities(response.code_arg.split())
        if response.name != "OK":
            raise error(f"{peer}: {self._stream.doing} refused: {response.status}")
        return True

    def _untagged(self, response: Response) -> None:
        if response.name == "EXISTS" or (response.name == "RECENT" and response.number):
            self.exists_seen = True
        elif response.name == "CAPABILITY":
            names = [v.decode("ascii", "replace") for v in response.values if isinstance(v, bytes)]
            self._set_capabilities(names)
        elif response.code == "CAPABILITY":
            self._set_capabilities(response.code_arg.split())
        elif response.name == "BYE" and not self._logging_out:
            self.close()
            raise ConnectionLost(f"{self._stream.peer}: the server said {response.status}")
