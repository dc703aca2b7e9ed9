"""One SMTP client session to a remote server or smarthost: connect, TLS, AUTH, a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiosmtplib

from mxdesk.config import OutboundConfig
from mxdesk.gateway import pipelining
from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.mxroute import Target
from mxdesk.gateway.spool import SpoolEntry

log = logging.getLogger("mxdesk.gateway.outbound")

QUIT_SECONDS = 2.0
MAX_TEXT = 400
_ENHANCED = re.compile(r"^[245]\.(\d{1,3}\.\d{1,3})\b ?")
BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")


@dataclass(frozen=True)
class RemoteReply(Reply):
    remote: str = ""  # the host that gave the answer, e.g. "mx1.example.com[192.0.2.1]"


Replies = dict[str, RemoteReply]


@dataclass(frozen=True)
class Smarthost:
    host: str
    port: int
    security: str  # "ssl" (implicit TLS), "starttls" (required) or "none"
    user: str  # "" = no AUTH
    password: str = dataclasses.field(repr=False)
    address: str  # the envelope sender to use with this smarthost ("" = the entry's own)
    verify: bool = True
    ca_file: str = ""
    # An OAuth 2.0 access token for SASL XOAUTH2 instead of the password (a channel's grant).
    token: Callable[[], Awaitable[str]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class Unusable(Exception):
    """This server cannot take the message now; another one may (RFC 5321 §5.1)."""

    def __init__(self, reply: RemoteReply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class _TlsFailed(Unusable):
    """The TLS handshake failed where TLS was only opportunistic."""


@dataclass(eq=False)
class SmtpSession:
    smtp: aiosmtplib.SMTP
    remote: str  # host[address]
    port: int
    ident: object  # who may reuse it: None for MX hosts, the smarthost's settings otherwise
    tls: bool = False
    timer: asyncio.TimerHandle | None = None
    # Kept from an earlier message and not checked since: the next pipelined group starts
    # with an RSET answered within this many seconds (pipelining.commands).
    probe: float | None = None

    @property
    def relay(self) -> str:
        return f"{self.remote}:{self.port}"


@dataclass(frozen=True)
class Job:
    """One transaction: the entry's message from sender to rcpts, at dest."""

    entry: SpoolEntry
    dest: str  # the domain, or the smarthost's host:port
    sender: str
    rcpts: list[str]
    label: str = ""  # "smarthost host:port": our own words go into its refusals


def _oneline(text: str) -> str:
    return " ".join(text.split())[:MAX_TEXT]


def reason_of(exc: BaseException) -> str:
    """The most specific text of an error (aiosmtplib wraps the OSError that says what)."""
    for e in (exc.__cause__, exc):
        if e is not None and str(e):
            return _oneline(str(e))
    return type(exc).__name__


def _server_reply(code: int, message: str, remote: str) -> RemoteReply:
    """A server's own reply, given an RFC 3463 class code when it has no enhanced code."""
    text = _oneline(message)
    return RemoteReply(code, text if _ENHANCED.match(text) else f"{code // 100}.0.0 {text}", remote)


def _explain(
    code: int, code_was: int, message: str, what: str, remote: str, detail: str = "0.0"
) -> RemoteReply:
    """Our reply about a server's answer: "<enhanced code> <what>: <its code> <its text>"."""
    text = _oneline(message)
    match = _ENHANCED.match(text)
    enhanced = f"{code // 100}.{match[1] if match else detail}"
    return RemoteReply(code, f"{enhanced} {what}: {code_was} {text}", remote)


def soften(reply: RemoteReply) -> RemoteReply:
    """The same reply as a temporary failure."""
    if reply.temporary:
        return reply
    text = "4" + reply.text[1:] if _ENHANCED.match(reply.text) else reply.text
    return RemoteReply(451, text, reply.remote)


@contextlib.contextmanager
def _step(
    label: str, remote: str, refused: str, failed: str, code: int = 0, detail: str = "0.0"
) -> Iterator[None]:
    """Turns the errors of one step of a session into Unusable: the server refused (with code
    in place of its 5xx code if given), or the connection failed ("failed" names the step)."""
    try:
        yield
    except aiosmtplib.SMTPResponseException as exc:
        new, what = code if code and exc.code >= 500 else exc.code, f"{label} refused {refused}"
        raise Unusable(_explain(new, exc.code, exc.message, what, remote, detail)) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        # A connection that never got a greeting has no remote that answered.
        remote = "" if isinstance(exc, aiosmtplib.SMTPConnectError) else remote
        raise Unusable(RemoteReply(451, f"{failed}: {reason_of(exc)}", remote)) from None


async def _token(host: Smarthost, label: str) -> str:
    """The outbox's OAuth 2.0 access token; any failure to get one is temporary here (the
    channel whose grant it is tells the owner when a person must act)."""
    assert host.token is not None
    try:
        return await host.token()
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise Unusable(RemoteReply(454, f"4.7.0 {label}: no OAuth 2.0 token: {text}")) from None


def client_context(verify: bool, ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _angle(address: str) -> bytes:
    return f"<{address}>".encode()


class Connector:
    """Opens SMTP sessions: connect, EHLO, TLS and AUTH, each failure a reply naming the host."""

    def __init__(self, config: OutboundConfig, helo_name: str) -> None:
        self._cfg = config
        self._helo = helo_name
        # RFC 7435 opportunistic TLS: encryption without authentication beats plain text.
        self._may_tls = client_context(False, "")

    async def open_mx(self, target: Target) -> SmtpSession:
        port = self._cfg.smtp_port
        args = (target.host, target.address, port, f"{target.remote}:{port}", None)
        if self._cfg.tls == "may":
            try:
                return await self._open(*args, "may", self._may_tls)
            except _TlsFailed as exc:
                # Like Postfix: a failed handshake gets one more connection without TLS.
                log.info("%s; trying again without TLS", exc.reply.text)
        return await self._open(*args, "none", None)

    async def open_smarthost(self, host: Smarthost, ident: Smarthost) -> SmtpSession:
        label = f"smarthost {host.name}"
        try:
            context = await asyncio.to_thread(client_context, host.verify, host.ca_file)
        except (OSError, ValueError) as exc:
            reason = f"cannot use the CA file {host.ca_file!r}: {reason_of(exc)}"
            raise Unusable(RemoteReply(451, f"4.7.5 {label}: {reason}")) from None
        tls = {"ssl": "ssl", "starttls": "require", "none": "none"}.get(host.security)
        if tls is None:  # never fall back to plain text with a password on a typo
            raise Unusable(RemoteReply(451, f"4.3.5 {label}: unknown security {host.security!r}"))
        session = await self._open(host.host, host.host, host.port, label, ident, tls, context)
        if host.user:
            # Temporary even when the server says 5xx: the mail goes once the password is fixed.
            refused, failed = f"the login for user '{host.user}'", f"4.7.0 {label}: login failed"
            try:
                token = await _token(host, label) if host.token is not None else ""
                with _step(label, session.remote, refused, failed, 454, "7.8"):  # RFC 4954 §6
                    if token:
                        await session.smtp.auth_xoauth2(host.user, token)
                    else:
                        await session.smtp.login(host.user, host.password)
            except Unusable:
                session.smtp.close()
                raise
        return session

    async def _open(
        self,
        name: str,
        address: str,
        port: int,
        label: str,
        ident: object,
        tls: str,
        context: ssl.SSLContext | None,
    ) -> SmtpSession:
        """Connects, says EHLO and sets TLS up: "ssl", "require", "may" or "none"."""
        smtp = aiosmtplib.SMTP(
            hostname=address,
            port=port,
            local_hostname=self._helo,
            start_tls=False,
            timeout=self._cfg.command_timeout,
            use_tls=tls == "ssl",
            tls_context=context,
        )
        greeter = f"{name}[{address}]" if name != address else name
        with _step(label, greeter, "to talk to me", f"4.4.1 {label}: cannot connect"):
            await smtp.connect(timeout=self._cfg.connect_timeout)
        peer = smtp.transport.get_extra_info("peername") if smtp.transport else None
        remote = f"{name}[{peer[0] if peer else address}]"
        session = SmtpSession(smtp, remote, port, ident, tls == "ssl")
        try:
            await self._hello(session, label)
            if tls == "require" and not smtp.supports_extension("starttls"):
                raise Unusable(RemoteReply(451, f"4.7.4 {label} does not offer STARTTLS", remote))
            if tls in ("require", "may") and smtp.supports_extension("starttls"):
                await self._starttls(session, label, name, context, optional=tls == "may")
        except BaseException:
            smtp.close()
            raise
        return session

    async def _starttls(
        self,
        session: SmtpSession,
        label: str,
        name: str,
        context: ssl.SSLContext | None,
        optional: bool,
    ) -> None:
        try:
            # SNI takes a host name, not an address literal (RFC 6066 §3).
            sni = None if name.startswith("[") else name
            await session.smtp.starttls(server_hostname=sni, tls_context=context)
        except aiosmtplib.SMTPResponseException as exc:
            if optional and session.smtp.is_connected:
                return  # RFC 3207 §4: the server may refuse; opportunistic TLS goes on in clear
            what = f"{label} refused STARTTLS"
            raise Unusable(_explain(451, exc.code, exc.message, what, session.remote)) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            text = f"4.7.5 {label}: TLS failed: {reason_of(exc)}"
            failure = (_TlsFailed if optional else Unusable)(RemoteReply(451, text, session.remote))
            raise failure from None
        session.tls = True
        await self._hello(session, label)  # RFC 3207 §4.2: forget what was said before TLS

    async def _hello(self, session: SmtpSession, label: str) -> None:
        with _step(label, session.remote, "HELO", f"4.4.2 {label}: lost connection in HELO"):
            try:
                await session.smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                if not session.smtp.is_connected:
                    raise
                await session.smtp.helo()  # RFC 5321 §4.1.1.1: a server without EHLO knows HELO


async def transaction(job: Job, session: SmtpSession, results: Replies) -> None:
    """MAIL, RCPT for each recipient, DATA (in one write when the server offers PIPELINING):
    the replies go into results as they come."""
    smtp, remote, data = session.smtp, session.remote, job.entry.data
    refusal = _refusal(job, session)
    if refusal is not None:
        results.update(dict.fromkeys(job.rcpts, refusal))
        return
    mail_line = b" ".join([b"MAIL FROM:" + _angle(job.sender), *_options(job, smtp)])
    rcpt_lines = [b"RCPT TO:" + _angle(rcpt) for rcpt in job.rcpts]
    start: aiosmtplib.SMTPResponse | None = None
    if pipelining.can_pipeline(smtp):
        probe, session.probe = session.probe, None
        mail, *answers, start = await pipelining.commands(
            smtp, [mail_line, *rcpt_lines, b"DATA"], smtp.timeout, probe=probe
        )
    else:
        mail = await smtp.execute_command(mail_line)
        answers = []
    if mail.code == 421:  # RFC 5321 §3.8: the server is going away; another host may do
        raise Unusable(_server_reply(mail.code, mail.message, remote))
    if mail.code != 250:
        await _end_data(smtp, start)
        reply = _server_reply(mail.code, mail.message, remote)
        if job.label:
            what = f"{job.label} refused the sender <{job.sender}>"
            reply = _explain(mail.code, mail.code, mail.message, what, remote)
        results.update(dict.fromkeys(job.rcpts, reply))
        return
    if start is None:
        answers = [await smtp.execute_command(line) for line in rcpt_lines]
    accepted: list[str] = []
    for rcpt, answer in zip(job.rcpts, answers, strict=True):
        if answer.code in (250, 251):
            accepted.append(rcpt)
        else:
            results[rcpt] = _server_reply(answer.code, answer.message, remote)
    if not accepted:
        await _end_data(smtp, start)
        return
    if start is None:
        try:
            final = await smtp.data(data)
            reply = _server_reply(final.code, final.message, remote)
        except aiosmtplib.SMTPDataError as exc:  # a refusal of DATA or of the message
            reply = _server_reply(exc.code, exc.message, remote)
    elif start.code != 354:
        reply = _server_reply(start.code, start.message, remote)
    else:
        final = await pipelining.message(smtp, data, smtp.timeout)
        reply = _server_reply(final.code, final.message, remote)
    results.update(dict.fromkeys(accepted, reply))


async def _end_data(smtp: aiosmtplib.SMTP, start: aiosmtplib.SMTPResponse | None) -> None:
    """A pipelined DATA that the server took although no recipient was (RFC 2920 §3.1): an
    empty message ends it, and its reply is of no use."""
    if start is not None and start.code == 354:
        await pipelining.message(smtp, b"", smtp.timeout)


def _refusal(job: Job, session: SmtpSession) -> RemoteReply | None:
    """What the server's EHLO already tells: the message cannot go to it."""
    size, remote = len(job.entry.data), session.remote
    limit = session.smtp.esmtp_extensions.get("size", "").strip()
    if limit.isdigit() and 0 < int(limit) < size:  # RFC 1870 §4: SIZE 0 means no limit
        text = f"5.3.4 message size {size} exceeds the limit of {remote}: {limit} bytes"
        return RemoteReply(552, text, remote)
    if _needs_utf8(job) and not session.smtp.supports_extension("smtputf8"):
        # RFC 6531 §3.2: without SMTPUTF8 a non-ASCII address cannot be sent at all.
        text = f"5.6.7 {remote} does not support SMTPUTF8, needed for a non-ASCII address"
        return RemoteReply(553, text, remote)
    return None


def _needs_utf8(job: Job) -> bool:
    return not all(a.isascii() for a in (job.sender, *job.rcpts))


def _options(job: Job, smtp: aiosmtplib.SMTP) -> list[bytes]:
    """The MAIL parameters: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531)."""
    options = [f"SIZE={len(job.entry.data)}".encode()] if smtp.supports_extension("size") else []
    if not job.entry.data.isascii() and smtp.supports_extension("8bitmime"):
        options.append(b"BODY=8BITMIME")
    if _needs_utf8(job):
        options.append(b"SMTPUTF8")
    return options


async def quit_quietly(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit(timeout=QUIT_SECONDS)
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()
