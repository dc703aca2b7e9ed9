"""Verdicts of real senders: Knot serves their SPF, DKIM and DMARC records; OpenDKIM (the milter
of a private Postfix) and dkimpy sign; Postfix and swaks deliver to the daemons started from a
config file whose [gateway.inbound_auth] resolver asks Knot."""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest
from authdns import Knot, base_zone, free_port
from conftest import MAILBOX, require_real, wait_for_sync
from cryptography.hazmat.primitives import serialization
from daemons import Daemon, mx_port, provision, write_config
from postfix_harness import PostfixInstance, port_open

from mxdesk.gateway.dkim import generate_key

pytestmark = pytest.mark.real

HOST = "mx.helpdesk.example"
SENDERS = ("pass.example", "bank.example", "soft.example", "none.example", "perm.example")


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def _public_txt(pem: bytes) -> str:
    key: Any = serialization.load_pem_private_key(pem, None)
    public = key.public_key()
    if hasattr(public, "key_size"):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def zones(opendkim_pem: bytes, ed25519_pem: bytes) -> dict[str, str]:
    """What each test sender publishes (the gateway and Postfix connect from 127.0.0.1)."""
    records = {
        "pass.example": [
            '@ TXT "v=spf1 ip4:127.0.0.1 -all"',
            '_dmarc TXT "v=DMARC1; p=reject"',
            f"od1._domainkey TXT {_txt(_public_txt(opendkim_pem))}",
            f"e1._domainkey TXT {_txt(_public_txt(ed25519_pem))}",
        ],
        "bank.example": [
            '@ TXT "v=spf1 ip4:192.0.2.0/24 -all"',
            '_dmarc TXT "v=DMARC1; p=reject"',
        ],
        "soft.example": ['@ TXT "v=spf1 ip4:192.0.2.1 ~all"'],
        "none.example": [],
        # Eleven DNS-querying terms: one more than RFC 7208 §4.6.4 allows.
        "perm.example": [
            '@ TXT "v=spf1 ' + " ".join(f"a:h{i}.perm.example" for i in range(11)) + ' -all"',
            *(f"h{i} A 192.0.2.1" for i in range(11)),
        ],
    }
    return {
        zone: base_zone(zone) + "".join(f"{r}\n" for r in lines) for zone, lines in records.items()
    }


class SigningPostfix(PostfixInstance):
    """A private Postfix whose mail passes through an OpenDKIM milter."""

    milter = ""

    def write_config(self) -> None:
        super().write_config()
        with (self.config_dir / "main.cf").open("a") as main:
            main.write(
                f"smtpd_milters = {self.milter}\nnon_smtpd_milters = {self.milter}\n"
                "milter_default_action = tempfail\n"
            )


@contextlib.contextmanager
def opendkim(root: Path, pem: bytes) -> Iterator[str]:
    """OpenDKIM in signing mode for pass.example (selector od1, rsa-sha256); yields its milter
    address for Postfix."""
    binary = require_real("opendkim")
    key = root / "od1.private"
    key.write_bytes(pem)
    key.chmod(0o600)
    port = free_port()
    settings = {
        "Mode": "s",
        "Domain": "pass.example",
        "Selector": "od1",
        "KeyFile": str(key),
        "Socket": f"inet:{port}@127.0.0.1",
        "SignatureAlgorithm": "rsa-sha256",
        "Canonicalization": "relaxed/relaxed",
        "Background": "no",
        "Syslog": "no",
        "RequireSafeKeys": "false",
        "PidFile": str(root / "opendkim.pid"),
    }
    conf = root / "opendkim.conf"
    conf.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
    log = (root / "opendkim.log").open("wb")
    proc = subprocess.Popen([binary, "-f", "-x", str(conf)], stdout=log, stderr=log)
    try:
        wait_for_sync(lambda: port_open(port) or proc.poll() is not None, 15, "opendkim")
        assert proc.poll() is None, (root / "opendkim.log").read_text()
        yield f"inet:127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@dataclass
class Site:
    root: Path
    port: int
    postfix: SigningPostfix
    ed25519: bytes  # dkimpy's key for e1._domainkey.pass.example (base64 seed)

    def filed(self, message_id: str) -> bytes | None:
        database = self.root / "state" / "tickets.db"
        if not database.exists():
            return None
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT raw FROM messages").fetchall()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()
        found = [bytes(r[0]) for r in rows if message_id.encode() in bytes(r[0])]
        return found[0] if found else None

    def swaks(self, sender: str, data: bytes, helo: str = "mta.example") -> str:
        path = self.root / f"{uuid.uuid4().hex}.eml"
        path.write_bytes(data)
        result = subprocess.run(
            [
                require_real("swaks"),
                *("--server", f"127.0.0.1:{self.port}", "--helo", helo),
                *("--from", sender, "--to", MAILBOX, "--data", f"@{path}"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="mx", dir="/tmp"))
    opendkim_pem = generate_key("rsa")
    ed25519_pem = generate_key("ed25519")
    knot = Knot(zones(opendkim_pem, ed25519_pem))
    stack = contextlib.ExitStack()
    try:
        knot.start()
        stack.callback(knot.close)
        milter = stack.enter_context(opendkim(root, opendkim_pem))
        auth = f'inbound_auth = {{ nameservers = ["127.0.0.1:{knot.port}"], dns_timeout = 3 }}'
        config = write_config(root, gateway_extra=auth)
        provision(config)
        port = mx_port(config)
        for name in ("store", "gateway"):
            daemon = Daemon(config, name, root / f"{name}.log")
            stack.callback(daemon.close)
            daemon.start()
        postfix = SigningPostfix.relaying("helpdesk.example", port)
        postfix.milter = milter
        postfix.start()
        stack.callback(postfix.cleanup)
        stack.callback(postfix.stop)
        key: Any = serialization.load_pem_private_key(ed25519_pem, None)
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        yield Site(root, port, postfix, base64.b64encode(seed))
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


def message(sender: str, extra: str = "") -> tuple[str, bytes]:
    message_id = f"<{uuid.uuid4()}@test.example>"
    text = (
        f"{extra}From: Cliente <{sender}>\r\nTo: {MAILBOX}\r\nSubject: Pedido\r\n"
        f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: {message_id}\r\n"
        "\r\nOla, preciso de ajuda.\r\n"
    )
    return message_id, text.encode()


def verdict(raw: bytes) -> str:
    """Our Authentication-Results field, unfolded: the only one naming us, above Received."""
    lines = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").split(b"\r\n")
    ours = [
        line.decode()
        for line in lines
        if line.lower().startswith(b"authentication-results: " + HOST.encode() + b";")
    ]
    assert len(ours) == 1, lines
    first_received = next(i for i, line in enumerate(lines) if line.startswith(b"Received:"))
    assert lines.index(ours[0].encode()) < first_received
    return ours[0]


def filed(site: Site, message_id: str) -> bytes:
    raw: bytes = wait_for_sync(lambda: site.filed(message_id), 30, f"{message_id} filed")
    return raw


def test_opendkim_signed_mail_through_postfix(site: Site) -> None:
    forged = "Authentication-Results: mx.helpdesk.example; dmarc=pass header.from=bank.example\r\n"
    message_id, data = message("ana@pass.example", forged)
    site.postfix.sendmail(data, "ana@pass.example", [MAILBOX])
    raw = filed(site, message_id)
    assert b"bank.example" not in raw  # the forged verdict is gone
    assert re.search(rb"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=pass.example;", raw)
    header = verdict(raw)
    assert "spf=pass smtp.mailfrom=pass.example" in header
    assert "dkim=pass header.d=pass.example header.a=rsa-sha256 header.s=od1" in header
    assert "dmarc=pass header.from=pass.example policy.dmarc=reject" in header


def test_dkimpy_ed25519_signed_mail_through_swaks(site: Site) -> None:
    message_id, data = message("ana@pass.example")
    signature = dkim.sign(
        data,
        b"e1",
        b"pass.example",
        site.ed25519,
        signature_algorithm=b"ed25519-sha256",
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    output = site.swaks("ana@pass.example", signature + data)
    assert "<-  250 2.0.0 Ok: queued as" in output, output
    header = verdict(filed(site, message_id))
    assert "dkim=pass header.d=pass.example header.a=ed25519-sha256 header.s=e1" in header
    assert "dmarc=pass" in header


@pytest.mark.parametrize(
    ("sender", "spf"),
    [
        ("ana@soft.example", "spf=softfail"),
        ("ana@none.example", "spf=none"),
        ("ana@perm.example", "spf=permerror"),
        # Knot serves no such zone and refuses: no answer to be had now.
        ("ana@gone.example", "spf=temperror"),
    ],
)
def test_spf_verdicts_through_swaks(site: Site, sender: str, spf: str) -> None:
    message_id, data = message(sender)
    output = site.swaks(sender, data)
    assert "<-  250 2.0.0 Ok: queued as" in output, output
    domain = sender.split("@")[1]
    assert f"{spf} smtp.mailfrom={domain};" in verdict(filed(site, message_id))


def test_p_reject_spoof_is_refused_and_never_filed(site: Site) -> None:
    message_id, data = message("ceo@bank.example")
    output = site.swaks("ceo@bank.example", data)
    assert "<** 550 5.7.1 " in output, output
    # Through Postfix: it gets the 550 and returns the message to its sender.
    other_id, data = message("ceo@bank.example")
    site.postfix.sendmail(data, "ceo@bank.example", [MAILBOX])
    bounced = wait_for_sync(lambda: site.postfix.deliveries("bounced"), 30, "Postfix to bounce")
    assert any("550 5.7.1" in line for line in bounced), bounced
    # A message sent after both is filed, and the two spoofs never were.
    last_id, data = message("ana@pass.example")
    site.postfix.sendmail(data, "ana@pass.example", [MAILBOX])
    filed(site, last_id)
    assert site.filed(message_id) is None and site.filed(other_id) is None
