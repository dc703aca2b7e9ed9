"""SPF, DKIM, DMARC and ARC verdicts of mail through the MX, with real DNS: a small authoritative
server on loopback serves the test senders' records, the gateway's resolver asks it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import MAILBOX, Running, make_config, provision, wait_for
from cryptography.hazmat.primitives import serialization
from dns_server import DnsServer
from wire import Wire, stored_messages

from mxdesk.configread import Listen
from mxdesk.gateway import inboundauth, verdictdns
from mxdesk.gateway.dkim import generate_key
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.verdictdns import Lookups, Memo, NotCached, build_resolver, cached_only
from mxdesk.gateway.verdicts import MAX_SIGNATURES, Envelope
from mxdesk.inboundauthconfig import InboundAuthConfig

HOST = "mx.helpdesk.example"
# The client is 127.0.0.1; SPF allows it for these domains, and 127.0.0.2 is "another host".
SPF_OK = '"v=spf1 ip4:127.0.0.1 -all"'


@dataclass(frozen=True)
class Key:
    selector: bytes
    domain: bytes
    private: bytes  # what dkimpy's sign() takes
    algorithm: bytes
    txt: str

    def sign(self, message: bytes) -> bytes:
        signature: bytes = dkim.sign(
            message,
            self.selector,
            self.domain,
            self.private,
            signature_algorithm=self.algorithm,
            include_headers=[b"from", b"to", b"subject", b"date"],
        )
        return signature + message


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def _rsa(selector: str, domain: str) -> Key:
    pem = generate_key("rsa")
    public = serialization.load_pem_private_key(pem, None).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    return Key(selector.encode(), domain.encode(), pem, b"rsa-sha256", txt)


def _ed25519(selector: str, domain: str) -> Key:
    key: Any = serialization.load_pem_private_key(generate_key("ed25519"), None)
    raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
    seed = key.private_bytes(*raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    txt = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    return Key(selector.encode(), domain.encode(), base64.b64encode(seed), b"ed25519-sha256", txt)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "rsa": _rsa("r1", "pass.example"),
        "ed25519": _ed25519("e1", "pass.example"),
        "arc": _rsa("a1", "relay.example"),
        "unpublished": _rsa("gone", "pass.example"),
    }


def records(server: DnsServer, keys: dict[str, Key]) -> DnsServer:
    """The senders: what each publishes is what its verdicts must say."""
    for key in keys.values():
        if key.selector != b"gone":
            name = f"{key.selector.decode()}._domainkey.{key.domain.decode()}"
            server.add(name, "TXT", _txt(key.txt))
    server.add("pass.example", "TXT", SPF_OK)
    server.add("_dmarc.pass.example", "TXT", '"v=DMARC1; p=reject"')
    server.add("mta.pass.example", "TXT", SPF_OK)  # the HELO identity
    server.add("bank.example", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    server.add("_dmarc.bank.example", "TXT", '"v=DMARC1; p=reject; rua=mailto:d@bank.example"')
    server.add("quar.example", "TXT", '"v=spf1 -all"')
    server.add("_dmarc.quar.example", "TXT", '"v=DMARC1; p=quarantine"')
    server.add("fail.example", "TXT", SPF_OK)
    server.add("_dmarc.fail.example", "TXT", '"v=DMARC1; p=none"')
    server.add("soft.example", "TXT", '"v=spf1 ip4:192.0.2.1 ~all"')
    server.exists("none.example")
    many = " ".join(f"a:h{i}.perm.example" for i in range(11))
    server.add("perm.example", "TXT", f'"v=spf1 {many} -all"')
    for i in range(11):
        server.add(f"h{i}.perm.example", "A", "192.0.2.1")
    server.add("broken.example", "TXT", SPF_OK).fail("broken.example")
    server.add("slow.example", "TXT", SPF_OK).drop("slow.example")
    return server


@pytest.fixture
def dns(keys: dict[str, Key]) -> Iterator[DnsServer]:
    server = records(DnsServer(), keys)
    yield server
    server.close()


async def start(short_tmp: Path, dns: DnsServer, **auth: Any) -> Running:
    settings = {"nameservers": [f"{dns.host}:{dns.port}"], "dns_timeout": 2.0, **auth}
    config = make_config(short_tmp, inbound_auth=settings)
    provision(config)
    running = Running(config)
    await running.start_store()
    await running.start_gateway()
    return running


@pytest.fixture
async def site(short_tmp: Path, dns: DnsServer) -> AsyncIterator[Running]:
    running = await start(short_tmp, dns)
    yield running
    await running.close()


def message(sender: str, subject: str = "Ajuda", extra: bytes = b"") -> bytes:
    return (
        (
            f"From: Cliente <{sender}>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{uuid.uuid4()}@test>\r\n"
        ).encode()
        + extra
        + b"\r\nOla, preciso de ajuda.\r\n"
    )


async def send(
    port: int,
    mail_from: str,
    data: bytes,
    helo: str = "mta.pass.example",
    source: str | None = None,
) -> str:
    w = await Wire.open(port, source)
    try:
        assert (await w.reply()).startswith("220")
        await w.cmd(f"EHLO {helo}")
        assert (await w.cmd(f"MAIL FROM:<{mail_from}>")).startswith("250")
        assert (await w.cmd(f"RCPT TO:<{MAILBOX}>")).startswith("250")
        assert (await w.cmd("DATA")).startswith("354")
        await w.send(data + b".\r\n")
        return await w.reply()
    finally:
        await w.close()


async def stored(running: Running, reply: str) -> bytes:
    """The raw message the store filed for the 250 reply (waits for it)."""
    assert reply.startswith("250 "), reply
    queue_id = reply.split()[-1]

    def raw() -> bytes | None:
        database = running.config.store.database
        if not database.exists():
            return None
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT raw FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()
        return bytes(row[0]) if row else None

    found: bytes = await wait_for(raw, what=f"{queue_id} filed")
    return found


def verdict(raw: bytes) -> str:
    """Our Authentication-Results field, unfolded; it must be the only one naming us and sit
    above our Received: line."""
    lines = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").split(b"\r\n")
    ours = [line for line in lines if line.lower().startswith(b"authentication-results:")]
    ours = [line for line in ours if b" " + HOST.encode() + b";" in line[:60]]
    assert len(ours) == 1, lines
    received = next(i for i, line in enumerate(lines) if line.startswith(b"Received:"))
    assert lines.index(ours[0]) < received
    return ours[0].decode()


async def test_aligned_rsa_and_ed25519_signatures_and_spf_pass(
    site: Running, keys: dict[str, Key]
) -> None:
    data = keys["ed25519"].sign(keys["rsa"].sign(message("ana@pass.example")))
    header = verdict(await stored(site, await send(site.port, "ana@pass.example", data)))
    assert "spf=pass smtp.mailfrom=pass.example" in header
    assert "dkim=pass header.d=pass.example header.a=rsa-sha256 header.s=r1" in header
    assert "dkim=pass header.d=pass.example header.a=ed25519-sha256 header.s=e1" in header
    assert "dmarc=pass header.from=pass.example policy.dmarc=reject" in header
    assert header.endswith("arc=none")


@pytest.mark.parametrize(
    ("domain", "source", "spf", "dmarc"),
    [
        ("pass.example", None, "spf=pass", "dmarc=pass header.from=pass.example"),
        ("fail.example", "127.0.0.2", "spf=fail", "dmarc=fail header.from=fail.example"),
        ("soft.example", None, "spf=softfail", "dmarc=none"),
        ("none.example", None, "spf=none", "dmarc=none"),
        ("perm.example", None, "spf=permerror", "dmarc=none"),  # 11 lookups (RFC 7208 §4.6.4)
        ("broken.example", None, "spf=temperror", "dmarc=none"),  # SERVFAIL
    ],
)
async def test_spf_results_as_the_records_say(
    site: Running, domain: str, source: str | None, spf: str, dmarc: str
) -> None:
    sender = f"ana@{domain}"
    header = verdict(
        await stored(site, await send(site.port, sender, message(sender), source=source))
    )
    assert f"{spf} smtp.mailfrom={domain};" in header
    assert dmarc in header and "dkim=none" in header


async def test_a_silent_name_server_is_temperror_within_dns_timeout(site: Running) -> None:
    start = time.monotonic()
    reply = await send(site.port, "ana@slow.example", message("ana@slow.example"))
    assert time.monotonic() - start < 2.0 + 1.5  # dns_timeout, plus the rest of the session
    header = verdict(await stored(site, reply))
    assert "spf=temperror smtp.mailfrom=slow.example" in header


async def test_the_loop_serves_others_while_one_message_waits_for_dns(
    site: Running, dns: DnsServer, keys: dict[str, Key]
) -> None:
    data = keys["rsa"].sign(message("ana@pass.example"))
    slow = asyncio.create_task(send(site.port, "ana@slow.example", message("ana@slow.example")))
    await wait_for(lambda: ("slow.example.", "TXT") in dns.questions, what="the silent lookup")
    started = time.monotonic()
    fast = await send(site.port, "ana@pass.example", data)
    assert time.monotonic() - started < 1.5  # the silent lookup alone takes dns_timeout (2 s)
    assert not slow.done()
    assert "dmarc=pass" in verdict(await stored(site, fast))
    assert (await slow).startswith("250 ")


async def test_null_sender_checks_the_helo_identity(site: Running) -> None:
    reply = await send(site.port, "", message("mailer-daemon@pass.example"))
    assert "spf=pass smtp.helo=mta.pass.example;" in verdict(await stored(site, reply))


async def test_p_reject_spoof_gets_550_and_never_reaches_the_store(site: Running) -> None:
    spoof = message("ceo@bank.example", "Mude o endereço de entrega")
    reply = await send(site.port, "ceo@bank.example", spoof)
    assert reply.startswith("550 5.7.1 ")
    assert "bank" not in reply  # generic text; the details are in the log
    # Through another envelope sender too: the From: domain is what DMARC protects.
    reply = await send(site.port, "x@none.example", spoof, helo="mta.none.example")
    assert reply.startswith("550 5.7.1 ")
    genuine = await send(site.port, "ana@pass.example", message("ana@pass.example"))
    await stored(site, genuine)
    rows = stored_messages(site.config.store.database)
    assert [r["queue_id"] for r in rows] == [genuine.split()[-1]]


async def test_quarantine_is_accepted_and_flagged(site: Running) -> None:
    reply = await send(site.port, "ana@quar.example", message("ana@quar.example"))
    header = verdict(await stored(site, reply))
    assert "dmarc=fail header.from=quar.example policy.dmarc=quarantine" in header


async def test_dkim_fail_no_key_and_rsa_sha1(site: Running, keys: dict[str, Key]) -> None:
    signed = keys["rsa"].sign(keys["unpublished"].sign(message("ana@pass.example")))
    tampered = signed.replace(b"preciso de ajuda", b"troque a senha")
    header = verdict(await stored(site, await send(site.port, "ana@pass.example", tampered)))
    assert 'dkim=fail reason="body hash did not verify" header.d=pass.example' in header
    assert 'dkim=permerror reason="no key for signature" header.d=pass.example' in header
    assert "header.s=gone" in header
    assert "dmarc=pass" in header  # through SPF
    sha1 = dkim.sign(
        message("ana@pass.example"),
        b"r1",
        b"pass.example",
        keys["rsa"].private,
        signature_algorithm=b"rsa-sha1",
    )
    data = sha1 + message("ana@pass.example")
    header = verdict(await stored(site, await send(site.port, "ana@pass.example", data)))
    assert 'dkim=permerror reason="rsa-sha1 not accepted"' in header


async def test_signatures_verified_at_the_bound(site: Running, keys: dict[str, Key]) -> None:
    data = message("ana@pass.example")
    for _ in range(MAX_SIGNATURES + 1):
        data = keys["rsa"].sign(data)
    header = verdict(await stored(site, await send(site.port, "ana@pass.example", data)))
    assert header.count("dkim=pass") == MAX_SIGNATURES


async def test_arc_chain(site: Running, keys: dict[str, Key]) -> None:
    arc = keys["arc"]

    def sealed() -> tuple[bytes, bytes]:
        relayed = b"Authentication-Results: relay.example; dkim=pass header.d=pass.example\r\n"
        relayed += keys["rsa"].sign(message("ana@pass.example"))
        seal = dkim.arc_sign(relayed, arc.selector, arc.domain, arc.private, arc.domain)
        return b"".join(seal), relayed

    seal, relayed = sealed()
    header = verdict(await stored(site, await send(site.port, "ana@pass.example", seal + relayed)))
    assert header.endswith("arc=pass")
    seal, relayed = sealed()
    broken = seal.replace(b"cv=none", b"cv=pass") + relayed
    header = verdict(await stored(site, await send(site.port, "ana@pass.example", broken)))
    assert header.endswith("arc=fail")


async def test_a_forged_verdict_is_removed_and_others_stay(site: Running) -> None:
    forged = (
        b"Authentication-Results: mx.helpdesk.example; dmarc=pass header.from=bank.example\r\n"
        b"Authentication-Results: (x) MX.Helpdesk.Example.;\r\n"
        b"\tdkim=pass header.d=bank.example\r\n"
        b"Authentication-Results: relay.example; spf=pass\r\n"
    )
    data = forged + message("ana@none.example")
    raw = await stored(
        site, await send(site.port, "ana@none.example", data, helo="mta.none.example")
    )
    header = verdict(raw)  # exactly one naming us: ours
    assert "dmarc=none" in header
    assert b"bank.example" not in raw
    assert b"Authentication-Results: relay.example; spf=pass\r\n" in raw


async def test_lookups_are_cached(site: Running, dns: DnsServer) -> None:
    for _ in range(2):
        reply = await send(site.port, "ana@pass.example", message("ana@pass.example"))
        await stored(site, reply)
    asked = [q for q in dns.questions if q[0].endswith("pass.example.")]
    assert ("pass.example.", "TXT") in asked and ("_dmarc.pass.example.", "TXT") in asked
    assert sorted(set(asked)) == sorted(asked)  # each name and type once


@pytest.mark.parametrize(("ttl", "queries"), [(0, 2), (60, 1)])
def test_the_cache_keeps_an_answer_for_its_ttl(ttl: int, queries: int) -> None:
    server = DnsServer([("c.example", "TXT", SPF_OK)], ttl=ttl)
    try:
        resolver = build_resolver([Listen(server.host, server.port)])
        for _ in range(2):
            lookups = Lookups(resolver, time.monotonic() + 2)
            assert lookups.txt("c.example") == [b"v=spf1 ip4:127.0.0.1 -all"]
        assert server.questions.count(("c.example.", "TXT")) == queries
    finally:
        server.close()


@pytest.mark.parametrize(("ttl", "made"), [(0, 2), (60, 1)])
def test_a_result_is_remembered_while_its_answers_are_valid(ttl: int, made: int) -> None:
    server = DnsServer([("c.example", "TXT", SPF_OK)], ttl=ttl)
    try:
        resolver, memo = build_resolver([Listen(server.host, server.port)]), Memo()
        calls: list[str] = []

        def look(name: str) -> list[bytes]:
            calls.append(name)
            return lookups.txt(name)

        for _ in range(2):
            lookups = Lookups(resolver, time.monotonic() + 2, memo=memo)
            assert lookups.remembered("c", lambda: look("c.example")) == [SPF_OK[1:-1].encode()]
        assert calls.count("c.example") == made
    finally:
        server.close()


def test_what_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    server = DnsServer([("c.example", "TXT", SPF_OK)])
    try:
        resolver, memo = build_resolver([Listen(server.host, server.port)]), Memo()
        calls: list[str] = []

        def swallowed(cached: Lookups) -> str:
            calls.append("miss")
            with contextlib.suppress(NotCached):
                cached.txt("x.example")
            return "made"

        def look(name: str) -> list[bytes]:
            calls.append(name)
            return lookups.txt(name)

        monkeypatch.setattr(verdictdns, "NEGATIVE_SECONDS", 0.0)
        for _ in range(2):
            lookups = Lookups(resolver, time.monotonic() + 2, memo=memo)
            # An NXDOMAIN lives NEGATIVE_SECONDS; a result keep() refuses is made again.
            assert lookups.remembered("nx", lambda: look("nx.example")) == []
            assert lookups.remembered("tmp", lambda: look("c.example"), keep=lambda v: False)
            with pytest.raises(ZeroDivisionError):  # an exception is never kept
                lookups.remembered("err", lambda: [calls.append("err"), 1 / 0])
            # Made while an offline lookup missed the cache (pyspf swallows some errors of
            # its lookups): made again, where the network may be asked.
            cached = Lookups(cached_only(resolver), time.monotonic() + 2, offline=True, memo=memo)
            assert cached.remembered("miss", functools.partial(swallowed, cached)) == "made"
        assert [calls.count(n) for n in ("nx.example", "c.example", "err", "miss")] == [2, 2, 2, 2]
    finally:
        server.close()


async def test_an_spf_result_follows_its_record_once_the_ttl_has_passed() -> None:
    server = DnsServer([("c.example", "TXT", SPF_OK)], ttl=0)
    config = InboundAuthConfig(nameservers=(Listen(server.host, server.port),))
    verifier = InboundVerifier(config, HOST)
    envelope = Envelope("127.0.0.1", "ana@c.example", "mta.c.example")
    try:
        assert (await verifier.check(message("ana@c.example"), envelope)).verdicts.spf.result == (
            "pass"
        )
        server.zone["c.example."]["TXT"] = ['"v=spf1 -all"']
        checked = await verifier.check(message("ana@c.example"), envelope)
        assert checked.verdicts.spf.result == "fail"
    finally:
        verifier.close()
        server.close()


async def test_policy_settings(short_tmp: Path, dns: DnsServer) -> None:
    r = await start(short_tmp, dns, spf_fail="reject", temperror="defer", dmarc_reject=False)
    try:
        spoof = message("ceo@bank.example")
        reply = await send(r.port, "ceo@bank.example", spoof)
        assert reply.startswith("550 5.7.23 ")  # SPF fail; with dmarc_reject off, DMARC lets it
        reply = await send(r.port, "a@pass.example", message("a@pass.example"), source="127.0.0.2")
        assert reply.startswith("550 5.7.23 ")
        reply = await send(r.port, "ana@broken.example", message("ana@broken.example"))
        assert reply.startswith("451 4.7.5 ")
        reply = await send(r.port, "ana@soft.example", message("ana@soft.example"))
        await stored(r, reply)
        assert len(stored_messages(r.config.store.database)) == 1
    finally:
        await r.close()


async def test_disabled_adds_nothing_but_still_removes_forgeries(
    short_tmp: Path, dns: DnsServer
) -> None:
    r = await start(short_tmp, dns, enabled=False)
    try:
        forged = b"Authentication-Results: mx.helpdesk.example; dmarc=pass\r\n"
        raw = await stored(
            r, await send(r.port, "ceo@bank.example", forged + message("ceo@bank.example"))
        )
        assert b"Authentication-Results" not in raw
        assert dns.questions == []
    finally:
        await r.close()


async def test_verdict_for_fetched_mail(site: Running, keys: dict[str, Key]) -> None:
    assert site.gateway is not None and site.gateway.verifier is not None
    verifier = site.gateway.verifier
    raw = b"Authentication-Results: mx.helpdesk.example; dmarc=pass\r\n"
    raw += keys["rsa"].sign(message("ana@pass.example"))
    header = (await verifier.verdict_for_fetched(raw)).decode()
    assert header.startswith(f"Authentication-Results: {HOST};\r\n")
    unfolded = header.replace("\r\n\t", " ")
    assert "spf=none;" in unfolded and "dkim=pass header.d=pass.example" in unfolded
    assert "dmarc=pass header.from=pass.example" in unfolded
    assert b"Authentication-Results" not in verifier.without_ours(raw)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_a_message_whose_answers_are_cached_is_checked_on_the_loop(
    dns: DnsServer, keys: dict[str, Key], signed: bool
) -> None:
    config = InboundAuthConfig(nameservers=(Listen(dns.host, dns.port),))
    verifier = InboundVerifier(config, HOST)
    handed: list[object] = []
    submit = verifier._pool.submit
    verifier._pool.submit = lambda *a, **k: handed.append(a) or submit(*a, **k)  # type: ignore[method-assign]
    try:
        for sender in ("ana@pass.example", "ana@none.example"):
            data = message(sender)
            data = keys["rsa"].sign(data) if signed else data
            envelope = Envelope("127.0.0.1", sender, "mta.pass.example")
            first = await verifier.check(data, envelope)
            assert len(handed) == 1, "the first asks the DNS server, in a worker"
            again = await verifier.check(data, envelope)
            assert len(handed) == 1, "the second is answered from the cache, on the loop"
            assert again.header == first.header and again.verdicts == first.verdicts
            handed.clear()
        big = message("ana@pass.example", extra=b"x" * inboundauth.ON_LOOP_BYTES)
        await verifier.check(big, Envelope("127.0.0.1", "ana@pass.example", "mta.pass.example"))
        assert len(handed) == 1, "a large message is hashed in a worker, cached or not"
    finally:
        verifier.close()


async def test_checks_that_overrun_or_break_are_temperror(
    dns: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = InboundAuthConfig(dns_timeout=0.2, nameservers=(Listen(dns.host, dns.port),))
    verifier = InboundVerifier(config, HOST)
    envelope = Envelope("127.0.0.1", "ana@pass.example", "mta.pass.example")
    release = threading.Event()
    monkeypatch.setattr(inboundauth, "GRACE", 0.1)
    monkeypatch.setattr(inboundauth, "ON_LOOP_BYTES", 0)  # what a worker does
    monkeypatch.setattr(inboundauth, "compute", lambda *args: release.wait(10))
    try:
        started = time.monotonic()
        checked = await verifier.check(message("ana@pass.example"), envelope)
        assert time.monotonic() - started < 0.2 + 0.1 + 0.5  # dns_timeout + GRACE
        release.set()
        assert checked.verdicts.temporary
        unfolded = checked.header.decode().replace("\r\n\t", " ")
        assert "spf=temperror; dkim=temperror" in unfolded and "dmarc=temperror" in unfolded

        def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(inboundauth, "compute", broken)
        checked = await verifier.check(message("ana@pass.example"), envelope)
        assert checked.verdicts.temporary
        assert "internal error: RuntimeError" in checked.verdicts.summary()
    finally:
        release.set()
        verifier.close()
