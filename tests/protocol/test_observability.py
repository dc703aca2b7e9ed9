"""The gateway's metrics endpoint after a known load, and the history each entry leaves behind;
the gateway and the store run on loopback, remote servers are a deliverer answering as told."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import MAILBOX, make_config, provision, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_submission import outbound_config, submit
from wire import Wire, send_message, stored_messages

from mxdesk import config as cfg
from mxdesk.configread import Listen
from mxdesk.gateway import queuectl
from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.queuectl import QueueControlError, list_entries
from mxdesk.gateway.service import GatewayService
from mxdesk.gateway.spool import SpoolEntry
from mxdesk.store.service import StoreService, start_store

MSG = b"From: Cliente <cliente@example.org>\r\nSubject: Ajuda\r\n\r\nOla\r\n"


class Remote:
    """Answers by the recipient's local part: ok (250), no (550), later (451, then 250) and
    wait (250 once released)."""

    def __init__(self) -> None:
        self.tries: Counter[str] = Counter()
        self.release = asyncio.Event()

    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        replies = {}
        for r in entry.pending:
            local = r.mailbox.split("@")[0]
            self.tries[local] += 1
            if local == "wait":
                await self.release.wait()
            if local == "no":
                replies[r.mailbox] = Reply(550, "5.1.1 <no@example.com>: no such user")
            elif local == "later" and self.tries[local] == 1:
                replies[r.mailbox] = Reply(451, "4.7.1 greylisted, try again later")
            else:
                replies[r.mailbox] = Reply(250, "2.0.0 ok")
        return replies


class Site:
    def __init__(
        self, config: cfg.Config, gateway: GatewayService, store: StoreService | None
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.store = store
        assert isinstance(gateway.outbound, Remote)
        self.remote: Remote = gateway.outbound

    @property
    def port(self) -> int:
        return self.gateway.ports[0]

    @property
    def spool(self) -> Path:
        return self.config.gateway.spool_path

    async def http(self, request: bytes) -> tuple[str, bytes]:
        assert self.gateway.metrics_endpoint is not None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.gateway.metrics_endpoint.port
        )
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return head.decode(), body

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, parsed by prometheus_client's own parser."""
        head, body = await self.http(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert head.startswith("HTTP/1.1 200 OK"), head
        assert "Content-Type: text/plain; version=0.0.4" in head
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples


@pytest.fixture
async def site(short_tmp: Path) -> AsyncIterator[Site]:
    config = outbound_config(short_tmp)
    config = dataclasses.replace(config, metrics=cfg.MetricsConfig(Listen("127.0.0.1", 0)))
    store = await start_store(config)
    gateway = GatewayService(config, outbound=Remote())
    await gateway.start()
    site = Site(config, gateway, store)
    yield site
    site.remote.release.set()
    await gateway.close()
    await store.close()


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_a_known_load(site: Site) -> None:
    for i in range(3):
        reply = await send_message(site.port, f"c{i}@example.org", [MAILBOX], MSG)
        assert reply.startswith("250 2.0.0")
    for rcpt in ("nobody@marca.helpdesk.example", "ninguem@marca.helpdesk.example"):
        assert (await send_message(site.port, "c@example.org", [rcpt], MSG)).startswith("550 5.1.1")
    relay = await send_message(site.port, "c@example.org", ["x@elsewhere.example"], MSG)
    assert relay.startswith("550 5.7.1")
    for local in ("ok", "no", "later", "wait"):
        assert (
            await submit(site.config, rcpts=(f"{local}@example.com",), notify="NEVER")
        ).startswith("2.0.0 Ok")
    await wait_for(lambda: len(stored_messages(site.config.store.database)) == 3, what="tickets")
    await wait_for(
        lambda: [(e.kind, e.state) for e in list_entries(site.spool)] == [("out", "delivering")],
        what="every entry but the one being delivered gone",
    )

    samples = await site.scrape()
    assert value(samples, "mxdesk_messages_accepted_total", listener="mx") == 3
    assert value(samples, "mxdesk_messages_accepted_total", listener="submission") == 4
    refusals = {
        (labels, v) for (name, labels), v in samples.items() if name == "mxdesk_smtp_refusals_total"
    }
    assert refusals == {
        ((("code", "550"), ("enhanced", "5.1.1"), ("listener", "mx")), 2.0),
        ((("code", "550"), ("enhanced", "5.7.1"), ("listener", "mx")), 1.0),
    }
    attempts = {
        (kind, result): value(samples, "mxdesk_delivery_attempts_total", kind=kind, result=result)
        for kind in ("in", "out")
        for result in ("delivered", "deferred", "failed")
    }
    assert attempts == {
        ("in", "delivered"): 3,
        ("in", "deferred"): 0,
        ("in", "failed"): 0,
        ("out", "delivered"): 2,
        ("out", "deferred"): 1,
        ("out", "failed"): 1,
    }
    # Signed as they leave, at every attempt: ok, no, later twice, wait.
    assert value(samples, "mxdesk_dkim_signatures_total", algorithm="rsa-sha256") == 5
    assert value(samples, "mxdesk_spool_entries", kind="out", state="delivering") == 1
    assert value(samples, "mxdesk_spool_entries", kind="in", state="queued") == 0
    assert value(samples, "mxdesk_spool_oldest_entry_age_seconds") >= 0
    assert value(samples, "mxdesk_inbound_delivery_seconds_count") == 3
    assert value(samples, "mxdesk_inbound_delivery_seconds_bucket", le="+Inf") == 3
    assert value(samples, "mxdesk_outbound_delivery_seconds_count") == 2

    site.remote.release.set()
    await wait_for(lambda: not list_entries(site.spool), what="the spool empty")
    samples = await site.scrape()
    assert value(samples, "mxdesk_delivery_attempts_total", kind="out", result="delivered") == 3
    assert value(samples, "mxdesk_outbound_delivery_seconds_count") == 3
    assert value(samples, "mxdesk_spool_entries", kind="out", state="delivering") == 0


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 Method Not Allowed"),
        (b"hello\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "431 "),
    ],
)
async def test_the_endpoint_answers_only_get_metrics(
    site: Site, request_bytes: bytes, status: str
) -> None:
    head, _ = await site.http(request_bytes)
    assert head.startswith(f"HTTP/1.1 {status}"), head


async def test_head_gives_the_length_without_the_body(site: Site) -> None:
    head, body = await site.http(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK") and body == b""
    assert int(head.split("Content-Length: ")[1].split("\r\n")[0]) > 0


def events(site: Site, queue_id: str) -> list[tuple[str, str, str]]:
    return [(e.event, e.result, e.detail) for e in queuectl.entry_history(site.spool, queue_id)]


async def test_history_tells_what_became_of_each_entry(site: Site) -> None:
    later = (await submit(site.config, rcpts=("later@example.com",), notify="NEVER")).split()[-1]
    refused = (await submit(site.config, rcpts=("no@example.com",), notify="FAILURE")).split()[-1]
    await wait_for(
        lambda: not [e for e in list_entries(site.spool) if e.kind == "out"], what="both done"
    )

    accepted, *rest = events(site, later)
    assert accepted[:2] == ("accepted", "")
    assert accepted[2].startswith(f"from <{MAILBOX}> to <later@example.com> (uid {os.getuid()}, ")
    assert rest == [
        ("attempt", "deferred", "451 4.7.1 greylisted, try again later"),
        ("attempt", "delivered", "250 2.0.0 ok"),
        ("delivered", "", "to its recipient"),
    ]
    bounced = events(site, refused)
    assert [(e, r) for e, r, _ in bounced] == [
        ("accepted", ""),
        ("attempt", "failed"),
        ("notice", ""),
        ("bounced", ""),
    ]
    assert bounced[1][2] == "550 5.1.1 <no@example.com>: no such user"
    assert bounced[2][2].endswith(f"to <{MAILBOX}>")
    assert "550 5.1.1" in bounced[3][2]

    # The entries have left the spool: show says what became of them, not "already gone".
    with pytest.raises(QueueControlError, match=r"it was delivered to its recipient at "):
        queuectl.show(site.spool, later)
    with pytest.raises(QueueControlError, match=r"it bounced at .*550 5\.1\.1"):
        queuectl.show(site.spool, refused)
    with pytest.raises(QueueControlError, match="no history of queue entry NOPE"):
        queuectl.entry_history(site.spool, "NOPE")


async def test_connections_over_the_limit_are_counted_as_refusals(short_tmp: Path) -> None:
    config = make_config(short_tmp, max_connections_per_client=1)
    provision(config)
    config = dataclasses.replace(config, metrics=cfg.MetricsConfig(Listen("127.0.0.1", 0)))
    gateway = GatewayService(config, outbound=Remote())
    await gateway.start()
    try:
        first = await Wire.open(gateway.ports[0])
        await first.hello()
        second = await Wire.open(gateway.ports[0])
        assert (await second.reply()).startswith("421 4.7.0")
        await first.close()
        await second.close()
        site = Site(config, gateway, None)
        samples = await site.scrape()
        refused = {"listener": "mx", "code": "421", "enhanced": "4.7.0"}
        assert value(samples, "mxdesk_smtp_refusals_total", **refused) == 1
    finally:
        await gateway.close()
