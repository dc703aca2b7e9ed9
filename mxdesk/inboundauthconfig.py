"""[gateway.inbound_auth]: settings of the SPF, DKIM, DMARC and ARC verdicts on inbound mail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mxdesk.configread import Listen, Reader, host_ports


@dataclass(frozen=True)
class InboundAuthConfig:
    """[gateway.inbound_auth]: SPF, DKIM, DMARC and ARC verdicts on inbound mail."""

    enabled: bool = True
    dmarc_reject: bool = True  # 550 5.7.1 to a DMARC failure from a domain with p=reject
    spf_fail: str = "flag"  # "flag" or "reject" (550 5.7.23) an SPF fail
    temperror: str = "accept"  # a temporary DNS error: "accept" (and flag) or "defer" (451)
    dns_timeout: float = 5.0  # seconds for all the lookups of one message
    nameservers: tuple[Listen, ...] = ()  # () = the system's resolvers


def parse_inbound_auth(table: Any, errors: list[str]) -> InboundAuthConfig:
    r = Reader(table if isinstance(table, dict) else {}, "gateway.inbound_auth", errors)
    r.seen.add("nameservers")
    d = InboundAuthConfig()
    found = InboundAuthConfig(
        enabled=r.get("enabled", bool, d.enabled),
        dmarc_reject=r.get("dmarc_reject", bool, d.dmarc_reject),
        spf_fail=r.get("spf_fail", str, d.spf_fail),
        temperror=r.get("temperror", str, d.temperror),
        dns_timeout=r.positive("dns_timeout", float, d.dns_timeout),
        nameservers=host_ports(
            r.table.get("nameservers", []), "gateway.inbound_auth.nameservers", errors
        ),
    )
    if found.spf_fail not in ("flag", "reject"):
        errors.append(f"gateway.inbound_auth.spf_fail: {found.spf_fail!r} is not flag or reject")
    if found.temperror not in ("accept", "defer"):
        errors.append(f"gateway.inbound_auth.temperror: {found.temperror!r} is not accept or defer")
    r.finish()
    return found
