"""A small authoritative DNS server for tests (dnspython): MX, A, AAAA, TXT … from a table."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def _key(name: str) -> str:
    return name.rstrip(".").lower() + "."


class DnsServer:
    """Serves records over UDP on host:port until close().

    A name with no records at all gets NXDOMAIN; a name with records of other types (or one made
    with `exists`) gets NOERROR with an empty answer. Names in `servfail` get SERVFAIL and names
    in `silent` get no reply, so the resolver times out.
    """

    def __init__(
        self,
        records: Iterable[tuple[str, str, str]] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = 60,
    ) -> None:
        self.ttl = ttl
        self.zone: dict[str, dict[str, list[str]]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.queries: list[str] = []
        self.questions: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        for name, rdtype, rdata in records:
            self.add(name, rdtype, rdata)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, name: str, rdtype: str, *rdata: str) -> DnsServer:
        """Adds records, e.g. add("example.com", "MX", "10 mx1.example.com.")."""
        self.zone.setdefault(_key(name), {}).setdefault(rdtype.upper(), []).extend(rdata)
        return self

    def exists(self, name: str) -> DnsServer:
        """The name exists but has no records (NOERROR, no data)."""
        self.zone.setdefault(_key(name), {})
        return self

    def fail(self, name: str) -> DnsServer:
        self.servfail.add(_key(name))
        return self

    def drop(self, name: str) -> DnsServer:
        self.silent.add(_key(name))
        return self

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = str(question.name).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append(name)
        self.questions.append((name, rdtype))
        if name in self.silent:
            return None
        if name in self.servfail:
            reply.set_rcode(dns.rcode.SERVFAIL)
            return reply
        records = self.zone.get(name)
        if records is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif rdtype in records:
            reply.answer.append(
                dns.rrset.from_text_list(name, self.ttl, "IN", rdtype, records[rdtype])
            )
        return reply

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self._answer(dns.message.from_wire(data))
            except (dns.exception.DNSException, IndexError):  # garbage, or no question
                continue
            if reply is not None:
                self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        # A datagram to ourselves wakes the thread now instead of at its next timeout.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
            wake.sendto(b"\0", (self.host, self.port))
        self._thread.join()
        self.sock.close()


class TxtServer(DnsServer):
    """Serves TXT records from a dict; other names get NXDOMAIN."""

    def __init__(self, records: dict[str, str], host: str = "127.0.0.1", port: int = 0) -> None:
        # A TXT string holds at most 255 octets (RFC 1035 §3.3.14); keys need several.
        txt = [
            (name, "TXT", " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255)))
            for name, value in records.items()
        ]
        super().__init__(txt, host, port)
        self.records = {_key(name): value for name, value in records.items()}
