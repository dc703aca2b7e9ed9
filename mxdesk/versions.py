"""The start-up gate: no daemon on a Python or library with a mail-parsing flaw mxdesk relies on
being fixed."""

from __future__ import annotations

import sys

from mxdesk.startup import StartupError
from mxdesk.store.parse import parse_message

# CVE-2023-27043 (python/cpython#102988): email.utils.getaddresses and parseaddr read
# `alice@example.org <bob@example.net>` as two addresses and `alice@example.org)<bob@example.net>`
# as alice. Fixed in 3.13.0 (strict=True by default, email.utils.supports_strict_parsing) and
# backported to 3.12.6, 3.11.10, 3.10.15, 3.9.20 and 3.8.20 (September 2024); distributions
# backport it without changing the version number. Python 3.11.7 does not have it. mxdesk
# reads address headers with mxdesk.names.header_addresses instead, which refuses these forms on
# any version: what mxdesk relies on, and so what is checked, is that the store takes no sender
# from them and the right one from their well-formed neighbours.
CVE_2023_27043 = (
    ("alice@example.org <bob@example.net>", ""),
    ("alice@example.org)<bob@example.net>", ""),
    ("alice@example.org(<bob@example.net>", ""),
    ("alice@example.org@bob@example.net", ""),
    ("alice@example.org<bob@example.net>", ""),
    ('"alice@example.org" <bob@example.net>', "bob@example.net"),
    ("Alice <alice@example.org>", "alice@example.org"),
)
# CVE-2024-27305 (SMTP smuggling) and CVE-2024-34083 (commands behind STARTTLS), aiosmtpd's,
# do not concern mxdesk: its SMTP and LMTP sessions are its own (mxdesk/gateway/smtpwire.py),
# which end DATA only at CR LF "." CR LF and discard what is pipelined behind STARTTLS
# (tests/protocol/test_mx.py, test_starttls_injection.py).


def check() -> None:
    """Raises StartupError (exit 3) naming the version to install when a known flaw mxdesk
    relies on being fixed is present."""
    problem = address_headers()
    if problem:
        raise StartupError(problem)


def address_headers() -> str:
    """Why this Python cannot be trusted to read From: as mxdesk relies on; "" when it can."""
    for value, expected in CVE_2023_27043:
        found = parse_message(f"From: {value}\r\n\r\n".encode()).from_addr
        if found != expected:
            python = ".".join(str(n) for n in sys.version_info[:3])
            return (
                f"Python {python} reads From: {value} as {found or 'no address'!r}"
                f" (CVE-2023-27043): use Python 3.13, or 3.12.6, 3.11.10 or later"
            )
    return ""
