"""A Knot primary and a lagging secondary serving the base zone, and an mxdesk config that
publishes to the primary (RFC 2136 + TSIG) and checks both: shared by the DNS end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.query
import dns.rcode
import dns.tsig
import dns.update
from authdns import BASE, Knot, TsigKey, base_zone, knot_pair, txt_values

OWN = "marca.com.br"


@dataclass
class KnotSite:
    primary: Knot
    secondary: Knot
    key: TsigKey

    def dns_section(
        self,
        key_file: Path | None,
        check_interval: float = 0.2,
        extra: str = "",
        credential: str = "",
    ) -> str:
        """The [dns] tables of a config: helpdesk.example published to the primary (its TSIG
        key in key_file, or the systemd credential named credential); both servers of both
        zones checked (marca.com.br stands for a customer's own zone)."""
        servers = ", ".join(
            f'"ns{i}.{zone}" = "127.0.0.1:{server.port}"'
            for zone in (BASE, OWN)
            for i, server in ((1, self.primary), (2, self.secondary))
        )
        return (
            f'\n[dns]\nzones = {{ "{BASE}" = "knot" }}\n'
            f'resolvers = ["127.0.0.1:{self.primary.port}"]\n'
            f"nameserver_addresses = {{ {servers} }}\n"
            f"check_interval = {check_interval}\ncheck_timeout = 1.0\n{extra}"
            f'\n[dns.providers.knot]\ntype = "rfc2136"\n'
            f'server = "127.0.0.1:{self.primary.port}"\n'
            + (f'key_file = "{key_file}"\n' if key_file else "")
            + (f'key_credential = "{credential}"\n' if credential else "")
        )

    def write_key(self, path: Path, key: TsigKey | None = None) -> Path:
        path.write_text((key or self.key).bind_text())
        return path

    def served_txt(self, name: str) -> list[str]:
        return txt_values(self.primary.host, self.primary.port, name)

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes:
        """dkimpy's DNS hook: the TXT record as the primary serves it."""
        values = self.served_txt(name.decode().rstrip("."))
        return values[0].encode() if values else b""

    def customer_update(self, zone: str, name: str, rtype: str, *values: str) -> None:
        """What a customer does in their own zone: a signed update of one RRset."""
        keyring = dns.tsig.Key(self.key.name, self.key.secret, self.key.algorithm)
        update = dns.update.UpdateMessage(zone + ".", keyring=keyring)
        update.replace(name + ".", 300, rtype, *values)
        response = dns.query.tcp(update, self.primary.host, port=self.primary.port, timeout=5)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())


@contextmanager
def knot_site() -> Iterator[KnotSite]:
    key = TsigKey.generate("mxdesk-test")
    zones = {BASE: base_zone(BASE), OWN: base_zone(OWN)}
    with knot_pair(zones, key) as (primary, secondary):
        yield KnotSite(primary, secondary, key)


def quoted(value: str) -> str:
    """A TXT value as presentation text for an update: 255-byte strings, quoted."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
