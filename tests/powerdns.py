"""A real PowerDNS authoritative server on 127.0.0.1 for tests: the gsqlite3 backend, its HTTP
API and DNS UPDATE, started like the other servers of authdns.py."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rdatatype
import dns.zone
from authdns import AuthServer, TsigKey, free_port, query
from conftest import require_real

PDNS_SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


class PowerDns(AuthServer):
    """pdns_server with the gsqlite3 backend and its HTTP API (api_key), DNS UPDATE allowed
    from 127.0.0.0/8, security polling off (works offline)."""

    binary = "pdns_server"

    def __init__(self) -> None:
        super().__init__()
        self.api_port = free_port()
        self.api_key = secrets.token_hex(16)
        self.api_url = f"http://{self.host}:{self.api_port}"

    def config(self) -> str:
        settings = {
            "launch": "gsqlite3",
            "gsqlite3-database": str(self.root / "pdns.sqlite3"),
            "local-address": self.host,
            "local-port": str(self.port),
            "socket-dir": str(self.root),
            "daemon": "no",
            "guardian": "no",
            "disable-syslog": "yes",
            "setuid": "",
            "setgid": "",
            "security-poll-suffix": "",
            "api": "yes",
            "api-key": self.api_key,
            "webserver": "yes",
            "webserver-address": self.host,
            "webserver-port": str(self.api_port),
            "webserver-allow-from": "127.0.0.0/8",
            "dnsupdate": "yes",
            "allow-dnsupdate-from": "127.0.0.0/8",
        }
        return "".join(f"{name}={value}\n" for name, value in settings.items())

    def command(self, binary: str) -> list[str]:
        if not PDNS_SCHEMA.exists():
            require_real("pdns-backend-sqlite3")  # not a program: skips (or fails) with its name
        with contextlib.closing(sqlite3.connect(self.root / "pdns.sqlite3")) as db:
            db.executescript(PDNS_SCHEMA.read_text())
        (self.root / "pdns.conf").write_text(self.config())
        return [binary, f"--config-dir={self.root}"]

    def ready(self) -> bool:
        # No zone yet: any DNS answer (REFUSED) will do, and the API must answer too. Not a name
        # a test will use: the packet cache would keep that REFUSED for 20 s after create_zone.
        query(self.host, self.port, "ready.invalid", "SOA", timeout=0.2)
        self.api("GET", "/api/v1/servers/localhost")
        return True

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Calls the HTTP API; returns the decoded JSON answer (None when empty)."""
        request = urllib.request.Request(
            self.api_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                data = response.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"PowerDNS API {method} {path}: {e.code} {e.read()!r}") from None
        return json.loads(data) if data else None

    def create_zone(self, zone: str, zone_text: str) -> None:
        """Creates a Native zone holding every RRset of zone_text (its SOA included)."""
        parsed = dns.zone.from_text(zone_text, origin=zone, relativize=False)
        rrsets = [
            {
                "name": name.to_text(),
                "type": dns.rdatatype.to_text(rdataset.rdtype),
                "ttl": rdataset.ttl,
                "records": [{"content": rdata.to_text(), "disabled": False} for rdata in rdataset],
            }
            for name, rdataset in parsed.iterate_rdatasets()
        ]
        body = {"name": f"{zone}.", "kind": "Native", "nameservers": [], "rrsets": rrsets}
        self.api("POST", "/api/v1/servers/localhost/zones", body)

    def add_tsig_key(self, key: TsigKey, zone: str) -> None:
        """Adds key and makes it required for DNS UPDATEs of zone."""
        body = {"name": key.name, "algorithm": key.algorithm, "key": key.secret}
        self.api("POST", "/api/v1/servers/localhost/tsigkeys", body)
        path = f"/api/v1/servers/localhost/zones/{zone}./metadata/TSIG-ALLOW-DNSUPDATE"
        self.api("PUT", path, {"metadata": [key.name]})


@contextlib.contextmanager
def powerdns_server() -> Iterator[PowerDns]:
    server = PowerDns()
    try:
        server.start()
        yield server
    finally:
        server.close()
