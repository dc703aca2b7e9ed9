"""The commands of an SMTP session, as aiosmtpd answered them (RFC 5321, 1869, 2920, 3207),
with enhanced status codes (RFC 2034): the MX's sessions, and the submission socket's
(mxdesk/gateway/submission.py adds its DSN parameters). Reading and writing are smtpwire.py's.
"""

from __future__ import annotations

from mxdesk.gateway.smtp import R550_SOURCE_ROUTE, R552_TOO_BIG
from mxdesk.gateway.smtpwire import SmtpWire
from mxdesk.smtpfast import MessageData, parse_path

COMMAND_LIMIT = 512  # RFC 5321 §4.5.3.1.4; MAIL after EHLO may carry SIZE and SMTPUTF8 too
MAIL_LIMIT = COMMAND_LIMIT + 26 + 10
BOGUS_LIMIT = 5  # unknown commands before the session is ended (aiosmtpd's)
ECHOED = 100  # characters of the client's text a reply repeats: a reply line stays under 512
SYNTAX = {
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "MAIL": "MAIL FROM: <address>",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO: <address>",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}
PARAMETERS = " [SP <mail-parameters>]"  # after MAIL's and RCPT's syntax, once EHLO was said
R250_OK = "250 OK"
R503_NO_AUTH = "503 5.5.1 Error: authentication not enabled"


def _params(options: list[str]) -> dict[str, str | bool] | None:
    """ESMTP parameters as a dictionary; None when one is not keyword[=value] (RFC 1869)."""
    result: dict[str, str | bool] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        result[key] = value if eq else True
    return result


class SmtpSession(SmtpWire):
    """One SMTP session. What is accepted and how it is kept is the handler's."""

    extensions: tuple[str, ...] = ()  # EHLO lines of this listener's own (250-DSN)
    syntax = SYNTAX  # the commands taken, and their syntax for HELP and 501 replies
    hello = "HELO"  # the greeting a transaction needs first (LMTP: LHLO)
    _bogus = BOGUS_LIMIT

    def _command(self, line: bytes) -> None:
        """One command line, taken as aiosmtpd takes it."""
        if not line:
            self._reply("500 Error: bad syntax")
            return
        verb_bytes, _, arg_bytes = line.partition(b" ")
        try:
            verb = verb_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            self._reply("500 Error: bad syntax")
            return
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        limit = MAIL_LIMIT if verb == "MAIL" and self.extended_smtp else COMMAND_LIMIT
        if len(line) > limit:
            self._reply("500 Command line too long")
            return
        method = getattr(self, f"smtp_{verb}", None) if verb in self.syntax else None
        if verb == "AUTH":
            self._reply(R503_NO_AUTH)  # no listener takes a login, encrypted or not
            return
        if verb == "EXPN":
            self._reply("502 EXPN not implemented")
            return
        if method is None:
            self._bogus -= 1
            if self._bogus < 1:
                self._reply("502 5.5.1 Too many unrecognized commands, goodbye.")
                self._flush()
                assert self.transport is not None
                self.transport.close()
                return
            self._reply(f'500 Error: command "{verb[:ECHOED]}" not recognized')
            return
        self._touch()
        method(arg)

    # -- commands ---------------------------------------------------------------------------

    def _no_hello(self) -> str | None:
        """The refusal of a transaction's command before the greeting; None after it."""
        return None if self.host_name else f"503 Error: send {self.hello} first"

    def _helo_needed(self) -> bool:
        refusal = self._no_hello()
        if refusal is not None:
            self._reply(refusal)
        return refusal is not None

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self._reply("501 Syntax: HELO hostname", enhanced=False)
            return
        self.envelope = self.new_envelope()
        self.extended_smtp = False
        self.host_name = arg
        self._reply(f"250 {self.hostname}", enhanced=False)

    def smtp_EHLO(self, arg: str) -> None:
        self._extended_hello(arg, "EHLO")

    def _extended_hello(self, arg: str, verb: str) -> None:
        """EHLO's reply (LMTP's LHLO's): the session starts again, the extensions offered."""
        if not arg:
            self._reply(f"501 Syntax: {self.syntax[verb]}", enhanced=False)
            return
        self.envelope = self.new_envelope()
        self.extended_smtp = True
        self.host_name = arg
        lines = [f"250-{self.hostname}"]
        if self._size_limit:
            lines.append(f"250-SIZE {self._size_limit}")
        lines += ["250-8BITMIME", "250-SMTPUTF8"]
        if self._tls is not None and self.ssl is None:
            lines.append("250-STARTTLS")
        # Every listener honours PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES (RFC 2034); none
        # takes a login, so no AUTH.
        lines += [*self.extensions, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]
        self._reply("\r\n".join(lines), enhanced=False)

    def smtp_NOOP(self, arg: str) -> None:
        self._reply(R250_OK)

    def smtp_RSET(self, arg: str) -> None:
        if arg:
            self._reply("501 Syntax: RSET")
            return
        self.envelope = self.new_envelope()
        self._reply(R250_OK)

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self._reply("501 Syntax: QUIT")
            return
        self._reply("221 Bye")
        self._flush()
        assert self.transport is not None
        self.transport.close()

    def smtp_HELP(self, arg: str) -> None:
        available = sorted(v for v in self.syntax if v != "STARTTLS" or self._tls is not None)
        if arg:
            verb = arg.upper()
            if verb in available:
                extra = PARAMETERS if verb in ("MAIL", "RCPT") and self.extended_smtp else ""
                self._reply(f"250 Syntax: {self.syntax[verb]}{extra}")
                return
        self._reply(f"{501 if arg else 250} Supported commands: {' '.join(available)}")

    def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            self._reply("501 Syntax: VRFY <address>")
        elif parse_path(arg)[0] is None:
            self._reply(f"502 Could not VRFY {arg[:ECHOED]}")
        else:
            self._reply("252 Cannot VRFY user, but will accept message and attempt delivery")

    def _path(self, arg: str, verb: str, keyword: str) -> tuple[str, list[str]] | None:
        """MAIL's or RCPT's address and parameters; None once the error is answered."""
        syntax = f"501 Syntax: {self.syntax[verb]}"
        if self.extended_smtp:
            syntax += PARAMETERS
        if arg[: len(keyword)].upper() != keyword:
            self._reply(syntax)
            return None
        address, rest = parse_path(arg[len(keyword) :].strip())
        if address is None or rest is None:
            self._reply("553 5.1.3 Error: malformed address")
            return None
        if not address or (rest and not self.extended_smtp):
            self._reply(syntax)
            return None
        return address, rest.upper().split()

    def smtp_MAIL(self, arg: str) -> None:
        if self._helo_needed():
            return
        path = self._path(arg, "MAIL", "FROM:")
        if path is None:
            return
        address, options = path
        if self.envelope.mail_from:
            self._reply("503 Error: nested MAIL command")
            return
        params = _params(options)
        syntax = f"501 Syntax: {self.syntax['MAIL']}{PARAMETERS}"
        if params is None:
            self._reply(syntax)
            return
        if params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
            self._reply("501 Error: BODY can only be one of 7BIT, 8BITMIME")
            return
        smtputf8 = params.pop("SMTPUTF8", False)
        if not isinstance(smtputf8, bool):
            self._reply("501 Error: SMTPUTF8 takes no arguments")
            return
        size = params.pop("SIZE", None)
        # ASCII digits only (RFC 1870 §3): str.isdigit() also takes '²', which int() refuses.
        if size is not None and (isinstance(size, bool) or not (size.isascii() and size.isdigit())):
            self._reply(syntax)
            return
        if size is not None and self._size_limit and int(size) > self._size_limit:
            self._reply(R552_TOO_BIG)
            return
        if params:
            self._reply("555 MAIL FROM parameters not recognized or not implemented")
            return
        self.envelope.smtp_utf8 = smtputf8
        self._reply(self.handler.mail(self, self.envelope, address, options))

    def smtp_RCPT(self, arg: str) -> None:
        if self._helo_needed():
            return
        if not self.envelope.mail_from:
            self._reply("503 Error: need MAIL command")
            return
        if arg[:3].upper() == "TO:" and arg[3:].lstrip().startswith("<@"):
            # A source route (<@a,@b:user@c>): the parser would keep user@c; it is refused.
            self._reply(R550_SOURCE_ROUTE)
            return
        path = self._path(arg, "RCPT", "TO:")
        if path is None:
            return
        address, options = path
        params = _params(options)
        if params is None:
            self._reply(f"501 Syntax: {self.syntax['RCPT']}{PARAMETERS}")
            return
        if params:
            self._reply("555 RCPT TO parameters not recognized or not implemented")
            return
        self._reply(self.handler.rcpt(self, self.envelope, address, options))

    def smtp_DATA(self, arg: str) -> None:
        if self._helo_needed():
            return
        if not self.envelope.rcpt_tos:
            self._reply("503 Error: need RCPT command")
            return
        if arg:
            self._reply("501 Syntax: DATA")
            return
        self._reply("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        data = self._data = MessageData(self._size_limit)
        rest = bytes(self._buffer)
        self._buffer.clear()
        if rest and data.feed(rest):  # the client sent the message without waiting
            self._message(data)
