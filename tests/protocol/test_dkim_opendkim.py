"""OpenDKIM's own verifier accepts mxdesk's RSA and Ed25519 signatures.

opendkim-testmsg looks dkim_keys up in DNS through the system resolver, so the test runs it in a
private mount namespace whose /etc/resolv.conf names a local DNS server serving the dkim_keys.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import TxtServer
from opendkim import opendkim_verify

from mxdesk.gateway import dkim as mxdkim

MESSAGE = (
    b'From: "Suporte Marca" <suporte@marca.helpdesk.example>\n'
    b"To: cliente@example.org\nSubject: Re: Pedido\nDate: Sat, 21 Nov 2026 05:44:09 +0000\n"
    b"Message-ID: <t1@marca.helpdesk.example>\n\nOl\xc3\xa1\r\nLF only\ncr only\rfim\n"
)


@pytest.fixture
def resolver(dkim_keys: list[mxdkim.DkimKey], short_tmp: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("MXDESK_REQUIRE_REAL") == "1":
            pytest.fail("root and unshare are needed to point OpenDKIM at a local DNS server")
        pytest.skip("needs root and unshare for a private /etc/resolv.conf")
    # The system resolver only speaks to port 53: a loopback address of our own avoids clashes.
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    server = TxtServer(
        {f"{k.selector}._domainkey.{k.domain}": k.dns_txt() for k in dkim_keys}, host=host, port=53
    )
    conf = short_tmp / "resolv.conf"
    conf.write_text(f"nameserver {host}\noptions timeout:1 attempts:2\n")
    yield conf
    server.close()


@pytest.mark.parametrize("which", [0, 1], ids=["rsa-sha256", "ed25519-sha256"])
def test_opendkim_verifies_our_signatures(
    dkim_keys: list[mxdkim.DkimKey], resolver: Path, which: int
) -> None:
    signed = mxdkim.sign(MESSAGE, [dkim_keys[which]])
    result = opendkim_verify(signed, resolver)
    assert result.returncode == 0, result.stderr.decode()
    tampered = opendkim_verify(signed.replace(b"LF only", b"changed"), resolver)
    assert tampered.returncode != 0
    assert b"Bad signature" in tampered.stderr or b"body hash" in tampered.stderr.lower()
