"""What can go wrong while talking to a company mailbox, sorted by what the fetcher does next."""

from __future__ import annotations


class FetchError(Exception):
    """A temporary failure (connection lost or refused, timeout, a server error): reconnect with
    back-off. The message is one line a sysadmin can act on; it never holds a password."""


class ProtocolError(FetchError):
    """The server sent something that is not the protocol (garbage, a truncated literal)."""


class FetchTimeout(FetchError):
    """The server stopped answering in the middle of a command (a stalled literal, a dead link)."""


class ConnectionLost(FetchError):
    """The server closed the connection (BYE, EOF, reset)."""


class TlsFailed(FetchError):
    """The TLS handshake failed: the message names the host and the certificate's problem."""


class AuthFailed(FetchError):
    """The server refused the login (password changed, app password revoked, token refused):
    retrying soon will not help."""


class FolderFailed(FetchError):
    """The login worked but the folder cannot be opened (Microsoft's "User is authenticated but
    not connected", a folder that does not exist)."""


class CommandFailed(FetchError):
    """The server answered NO/BAD (IMAP) or -ERR (POP3) to a command after login."""
