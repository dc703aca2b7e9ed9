"""Gateway, store, a DNS server and smtp-sink started for one end-to-end test of replies."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from conftest import wait_for
from daemons import Daemon, activate, cli, free_port, write_config
from dns_server import DnsServer
from sink import Sink
from wire import send_message

MAILBOX = "suporte@marca.helpdesk.example"
CUSTOMER = "cliente@example.com"
QUESTION = (
    f"From: Cliente <{CUSTOMER}>\r\nTo: {MAILBOX}\r\nSubject: impressora parada\r\n"
    "Message-ID: <q1@example.com>\r\n\r\nA impressora não liga.\r\n"
).encode()


class Site:
    """Gateway, store, DNS and sink of one test; `ticket`/`json` run the CLI against them."""

    def __init__(
        self,
        root: Path,
        send_delay: float,
        sink_flags: tuple[str, ...],
        extra: str = "",
        gateway_extra: str = "",
    ) -> None:
        """extra: more config sections; gateway_extra: more keys of [gateway]."""
        self.root = root
        # The system resolver (opendkim-testmsg) speaks only to port 53: an address of our own.
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        self.dns = DnsServer(host=host, port=53)
        self.dns.add("example.com", "MX", "10 mx.example.com.").add(
            "mx.example.com", "A", "127.0.0.1"
        )
        self.sink = Sink(root, sink_flags)
        self.port = free_port()
        extra = (
            f"\n[gateway.outbound]\nsend_delay = {send_delay}\nsmtp_port = {self.sink.port}\n"
            f'nameservers = ["{host}:53"]\n'
            "\n[gateway.outbound_retry]\ninitial = 0.5\nmaximum = 1.0\n"
            "\n[dkim]\ned25519 = true\n" + extra
        )
        self.config = write_config(root, self.port, gateway_extra)
        self.config.write_text(self.config.read_text() + extra)
        cli(self.config, "init")
        cli(
            self.config, "tenant", "add", "marca", "--owner", "dono@marca.example", "--plan", "plus"
        )
        cli(self.config, "domain", "add", "marca", "--tenant", "marca")
        activate(self.config, "marca.helpdesk.example")
        cli(self.config, "mailbox", "add", MAILBOX, "--name", "Suporte Marca")
        signature = root / "ana.sig"
        signature.write_text("Ana Souza\nSuporte Marca")
        cli(
            self.config,
            "operator",
            "add",
            "Ana",
            "--tenant",
            "marca",
            "--signature-file",
            str(signature),
        )
        shown = cli(self.config, "domain", "show", "marca.helpdesk.example", "--json")
        self.txt: dict[bytes, bytes] = {}
        for record in json.loads(shown.stdout)["dkim"]:
            value = record["txt"]
            chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
            self.dns.add(record["name"], "TXT", chunks)
            self.txt[f"{record['name']}.".encode()] = value.encode()
        self.store = Daemon(self.config, "store", root / "store.log")
        self.gateway = Daemon(self.config, "gateway", root / "gateway.log")
        self.store.start()
        self.gateway.start()

    def json(self, *args: str) -> Any:
        return json.loads(cli(self.config, *args, "--json").stdout)

    def message(self, ticket: int, index: int) -> dict[str, Any]:
        return self.json("ticket", "show", str(ticket))["messages"][index]

    async def ask(self) -> int:
        reply = await send_message(self.port, CUSTOMER, [MAILBOX], QUESTION)
        assert reply.startswith("250"), reply
        tickets = await wait_for(lambda: self.json("ticket", "list"), what="the ticket")
        return int(tickets[0]["number"])

    def reply(self, ticket: int, body: str = "Já trocamos o cabo.\n") -> dict[str, Any]:
        """Replies; the command exits 1 when the reply already failed by the time it returns."""
        result = cli(
            self.config,
            "ticket",
            "reply",
            str(ticket),
            "--operator",
            "Ana",
            "--json",
            input=body,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr
        return dict(json.loads(result.stdout)) if result.stdout else {}

    def close(self) -> None:
        for daemon in (self.gateway, self.store):
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.terminate()
            daemon.close()
        self.sink.close()
        self.dns.close()
