"""An asyncio IMAP4rev1 client (RFC 3501) for a fetcher that must never lose or double a mail."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from mxdesk.gateway.fetch import imapdata as data
from mxdesk.gateway.fetch.errors import (
    AuthFailed,
    CommandFailed,
    ConnectionLost,
    FetchError,
    FetchTimeout,
    FolderFailed,
    ProtocolError,
)
from mxdesk.gateway.fetch.imapdata import astring, folder_name, uid_set
from mxdesk.gateway.fetch.imapsession import ImapSession
from mxdesk.gateway.fetch.imapwire import ImapStream, Value, tls_failed

SECURITY = ("ssl", "starttls", "none")
MIN_HIDDEN = 4
INFO_ITEMS = b"(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int  # 0 when the server did not say (RFC 3501 lets it)
    exists: int


@dataclass(frozen=True)
class MessageInfo:
    uid: int
    size: int
    internaldate: float  # epoch seconds
    message_id: str  # "" when absent; the raw header value, unfolded and stripped


def _reason(error: OSError) -> str:
    # asyncio tries every address of the name; refused on each is "Multiple exceptions: …".
    errnos = re.findall(r"\[Errno (\d+)\]", str(error))
    if isinstance(error, ConnectionRefusedError) or (
        errnos and all(int(n) == errno.ECONNREFUSED for n in errnos)
    ):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"host name not found ({error.strerror})"
    return (error.strerror or str(error)).lower()


@contextlib.contextmanager
def _hiding(secret: str) -> Iterator[None]:
    """Our code never puts a secret in an error; this keeps a server that echoes one (in a BAD
    to a mangled command) from doing it. Shorter secrets stay: replacing them mangles text."""
    try:
        yield
    except FetchError as e:
        if len(secret) >= MIN_HIDDEN and secret in str(e):
            raise type(e)(str(e).replace(secret, "***")) from None
        raise


class ImapClient(ImapSession):
    """The commands a fetcher needs. One at a time; after any error other than AuthFailed,
    FolderFailed and CommandFailed, or a cancellation, the connection is closed: connect again.

    ``exists_seen`` is set whenever the server reports new mail (EXISTS or RECENT), whatever the
    command; ``select`` clears it, ``idle`` and ``noop`` return and clear it, so mail reported
    during a fetch is not missed by the next ``idle``."""

    @classmethod
    async def connect(
        cls, host: str, port: int, security: str, context: ssl.SSLContext | None, timeout: float
    ) -> ImapClient:
        """Connects and reads the greeting; security is "ssl" (implicit TLS), "starttls"
        (FetchError if the server does not offer it) or "none"."""
        if security not in SECURITY:
            raise ValueError(f"security {security!r}: use one of {', '.join(SECURITY)}")
        if security != "none" and context is None:
            context = ssl.create_default_context()
        peer = f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout):
                if security == "ssl":
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=context, server_hostname=host, ssl_handshake_timeout=timeout
                    )
                else:
                    reader, writer = await asyncio.open_connection(host, port)
        except ssl.SSLError as e:
            raise tls_failed(host, e) from None
        except TimeoutError:
            raise FetchTimeout(f"{peer}: no connection within {timeout:g}s") from None
        except OSError as e:
            raise FetchError(f"{peer}: {_reason(e)}") from None
        client = cls(ImapStream(reader, writer, peer, timeout), host)
        try:
            await client._greeting()
            if security == "starttls":
                assert context is not None
                await client._starttls(context)
        except BaseException:
            client.close()
            raise
        return client

    async def _greeting(self) -> None:
        greeting = await self._stream.read()
        if greeting.tag == "*" and greeting.name == "BYE":
            self.close()
            raise ConnectionLost(f"{self._stream.peer}: the server refused: {greeting.status}")
        if greeting.tag != "*" or greeting.name not in ("OK", "PREAUTH"):
            self.close()
            raise ProtocolError(f"{self._stream.peer}: not an IMAP greeting: {greeting.status}")
        self._untagged(greeting)
        if not self.capabilities:
            await self._run([b"CAPABILITY"], "CAPABILITY")

    async def _starttls(self, context: ssl.SSLContext) -> None:
        if "STARTTLS" not in self.capabilities:
            raise FetchError(
                f"{self._stream.peer}: the server does not offer STARTTLS: use security"
                ' "ssl" (port 993), or "none" on a trusted network only'
            )
        await self._run([b"STARTTLS"], "STARTTLS")
        await self._stream.start_tls(context, self._host)
        # RFC 3501 §6.2.1: what the server said before TLS no longer counts.
        self.capabilities = frozenset()
        await self._run([b"CAPABILITY"], "CAPABILITY")

    # -- commands ---------------------------------------------------------------------------

    async def login(self, user: str, password: str) -> None:
        """LOGIN, or AUTHENTICATE PLAIN if the server says LOGINDISABLED; AuthFailed if refused."""
        self._capabilities_new = False
        with _hiding(password):
            if "LOGINDISABLED" in self.capabilities:
                plain = f"\0{user}\0{password}".encode()
                await self._sasl("PLAIN", plain)
            else:
                parts = [b"LOGIN ", astring(user), b" ", astring(password)]
                await self._run(parts, "LOGIN", AuthFailed)
        await self._after_login()

    async def authenticate_xoauth2(self, user: str, token: str) -> None:
        """SASL XOAUTH2 (Google, Microsoft); AuthFailed with the token error's status if refused."""
        self._capabilities_new = False
        with _hiding(token):
            await self._sasl("XOAUTH2", f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
        await self._after_login()

    async def _sasl(self, mechanism: str, response: bytes) -> None:
        initial = base64.b64encode(response)
        sent = "SASL-IR" in self.capabilities  # RFC 4959: the response goes with the command
        errors: list[str] = []

        def respond(challenge: str) -> bytes:
            nonlocal sent
            if not sent:
                sent = True
                return initial
            # A challenge after the response is an error report; the empty answer ends it.
            errors.append(data.sasl_error(challenge))
            return b""

        command = b"AUTHENTICATE " + mechanism.encode() + (b" " + initial if sent else b"")
        try:
            await self._run([command], f"AUTHENTICATE {mechanism}", AuthFailed, respond)
        except AuthFailed as e:
            raise AuthFailed(f"{e} ({errors[0]})" if errors else str(e)) from None

    async def _after_login(self) -> None:
        if not self._capabilities_new:  # RFC 3501 §6.2.3: they may change at login
            await self._run([b"CAPABILITY"], "CAPABILITY")

    async def select(self, folder: str, readonly: bool = False) -> FolderStatus:
        """SELECT (EXAMINE when readonly) the folder, named in Unicode; FolderFailed if refused."""
        verb = "EXAMINE" if readonly else "SELECT"
        answers = await self._run([f"{verb} ".encode(), folder_name(folder)], verb, FolderFailed)
        found: dict[str, int] = {}
        with self._parsing():
            for r in answers:
                if r.name == "EXISTS" and r.number is not None:
                    found["EXISTS"] = r.number
                elif r.name == "OK" and r.code in ("UIDVALIDITY", "UIDNEXT"):
                    found[r.code] = data.number(r.code_arg.encode())
            if "UIDVALIDITY" not in found or "EXISTS" not in found:
                raise ValueError(f"{verb} without UIDVALIDITY or EXISTS")
        self.exists_seen = False
        return FolderStatus(found["UIDVALIDITY"], found.get("UIDNEXT", 0), found["EXISTS"])

    async def search_uids(self, criteria: str) -> list[int]:
        """UID SEARCH criteria (ASCII, no CHARSET), e.g. "UID 120:*": sorted, as the server
        says ("120:*" also matches the highest UID when it is below 120)."""
        if "\r" in criteria or "\n" in criteria:
            raise ValueError("search criteria must be one line")
        answers = await self._run([b"UID SEARCH " + criteria.encode("ascii")], "UID SEARCH")
        found = (v for r in answers if r.name == "SEARCH" for v in r.values)
        with self._parsing():
            # Values in parentheses are a CONDSTORE "(MODSEQ n)".
            return sorted({data.number(v) for v in found if not isinstance(v, list)})

    async def fetch_info(self, uids: Sequence[int]) -> list[MessageInfo]:
        """Size, INTERNALDATE and Message-ID of those messages that are still there."""
        if not uids:
            return []
        command = b"UID FETCH " + uid_set(uids) + b" " + INFO_ITEMS
        merged: dict[int, dict[str, Value]] = {}  # a server may split a message's items
        infos: dict[int, MessageInfo] = {}
        wanted = set(uids)
        with self._parsing():
            for r in await self._run([command], "UID FETCH"):
                if r.name == "FETCH" and r.number is not None:
                    merged.setdefault(r.number, {}).update(data.fetch_items(r))
            for items in merged.values():
                uid, size, date = (items.get(k) for k in ("UID", "RFC822.SIZE", "INTERNALDATE"))
                if uid is None or size is None or date is None or data.number(uid) not in wanted:
                    continue  # an unsolicited flag update (ProtonMail Bridge)
                header = data.section(items, "BODY[HEADER.FIELDS")
                info = MessageInfo(
                    data.number(uid),
                    data.number(size),
                    data.internaldate(date),
                    data.message_id(header),
                )
                infos[info.uid] = info
        return [infos[uid] for uid in sorted(infos)]

    async def fetch_bodies(self, uids: Sequence[int]) -> AsyncIterator[tuple[int, bytes]]:
        """(uid, message) for each of those messages still there, as soon as it is read;
        BODY.PEEK[] leaves \\Seen alone. Stop iterating early and the connection is closed."""
        if not uids:
            return
        command = b"UID FETCH " + uid_set(uids) + b" (UID BODY.PEEK[])"
        merged: dict[int, dict[str, Value]] = {}
        wanted = set(uids)  # each message once, even if a server sent it twice
        answers = self._command([command], "UID FETCH", CommandFailed)
        async with contextlib.aclosing(answers):
            async for r in answers:
                if r.name != "FETCH" or r.number is None:
                    continue
                with self._parsing():
                    items = merged.setdefault(r.number, {})
                    items.update(data.fetch_items(r))
                    uid, body = items.get("UID"), data.section(items, "BODY[]")
                    if uid is None or not isinstance(body, bytes):
                        continue
                    del merged[r.number]
                    uid_number = data.number(uid)
                if uid_number in wanted:
                    wanted.discard(uid_number)
                    yield uid_number, body

    async def add_flags(self, uids: Sequence[int], flags: str) -> None:
        """UID STORE +FLAGS.SILENT, flags space-separated: "\\Seen \\Deleted"."""
        flag_list = data.flag_list(flags)
        if uids:
            command = b"UID STORE " + uid_set(uids) + b" +FLAGS.SILENT " + flag_list
            await self._run([command], "UID STORE")

    async def uid_expunge(self, uids: Sequence[int]) -> None:
        """Removes exactly these messages (RFC 4315); CommandFailed without UIDPLUS, where only
        EXPUNGE exists and would also remove what other clients flagged \\Deleted."""
        if "UIDPLUS" not in self.capabilities:
            raise CommandFailed(f"{self._stream.peer}: no UIDPLUS, so no UID EXPUNGE")
        if uids:
            await self._run([b"UID EXPUNGE " + uid_set(uids)], "UID EXPUNGE")

    async def move(self, uids: Sequence[int], folder: str) -> None:
        """UID MOVE (RFC 6851), else UID COPY, \\Deleted and UID EXPUNGE; without UIDPLUS the
        originals stay flagged \\Deleted until someone expunges the folder."""
        if not uids:
            return
        target = [b" ", folder_name(folder)]
        if "MOVE" in self.capabilities:
            await self._run([b"UID MOVE " + uid_set(uids), *target], "UID MOVE")
            return
        await self._run([b"UID COPY " + uid_set(uids), *target], "UID COPY")
        await self.add_flags(uids, "\\Deleted")
        if "UIDPLUS" in self.capabilities:
            await self.uid_expunge(uids)

    async def create(self, folder: str) -> None:
        """CREATE the folder; one that already exists is fine."""
        try:
            await self._run([b"CREATE ", folder_name(folder)], "CREATE")
        except CommandFailed:
            # Servers without the RFC 5530 code say so in words (Exchange).
            if self._last.code != "ALREADYEXISTS" and "already exist" not in self._last.text:
                raise

    async def idle(self, wait: float) -> bool:
        """IDLE (RFC 2177) for up to wait seconds: True as soon as new mail is reported (or at
        once when exists_seen is set), False when wait passes. Renew within 29 minutes."""
        if self.exists_seen:
            self.exists_seen = False
            return True
        if "IDLE" not in self.capabilities:
            raise CommandFailed(f"{self._stream.peer}: the server does not offer IDLE: poll")
        tag = await self._send(b"IDLE\r\n", "IDLE")
        try:
            while (r := await self._stream.read()).tag != "+":
                if self._finished(r, tag):
                    raise ProtocolError(f"{self._stream.peer}: IDLE ended before it began")
            deadline = asyncio.get_running_loop().time() + wait
            while not self.exists_seen:
                left = deadline - asyncio.get_running_loop().time()
                answer = await self._stream.read_within(left) if left > 0 else None
                if answer is None:
                    break
                if self._finished(answer, tag):
                    return self._new_mail()  # the server ended the IDLE itself
            await self._stream.write(b"DONE\r\n")
            while not self._finished(await self._stream.read(), tag):
                pass
        finally:
            if self._busy == tag:
                self.close()
        return self._new_mail()

    async def noop(self) -> bool:
        """NOOP: True when new mail was reported since the last idle, noop or select."""
        await self._run([b"NOOP"], "NOOP")
        return self._new_mail()

    async def logout(self) -> None:
        """LOGOUT and close; never raises."""
        self._logging_out = True
        with contextlib.suppress(Exception):
            await self._run([b"LOGOUT"], "LOGOUT")
        self.close()
