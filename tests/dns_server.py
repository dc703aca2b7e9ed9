"""A small authoritative DNS server for tests (dnspython), answering TXT from a dict."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rrset


class TxtServer:
    """Serves TXT records on host:port over UDP until close(); other names get NXDOMAIN."""

    def __init__(self, records: dict[str, str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.records = {name.rstrip(".").lower() + ".": value for name, value in records.items()}
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            reply = dns.message.make_response(query)
            name = str(query.question[0].name).lower()
            self.queries.append(name)
            value = self.records.get(name)
            if value is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                # A TXT string holds at most 255 octets (RFC 1035 §3.3.14); keys need several.
                chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
                reply.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", chunks))
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
