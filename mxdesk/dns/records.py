"""The record plan: the DNS records a domain needs, as a pure function of it and the config."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mxdesk.dns.settings import DnsConfig

_TXT_SEPARATOR = re.compile(r"\s*;\s*")
_DECIMAL = re.compile(r"[0-9]{3}")
MAX_STRING = 255  # one character-string of a TXT record (RFC 1035 §3.3)
OWNERSHIP_LABEL = "_mxdesk"
OWNERSHIP_PREFIX = "mxdesk-verification="
# A TXT record of a purpose is recognised among others at its name by how it starts; the
# purposes missing here own every TXT at their name (DKIM selectors, the ownership proof).
TXT_PREFIX = {
    "spf": "v=spf1",
    "dmarc": "v=dmarc1",
    "tlsrpt": "v=tlsrptv1",
    "mta-sts": "v=stsv1",
}


@dataclass(frozen=True)
class Record:
    """One record: name without the final dot; TXT values are the joined text, unquoted."""

    name: str
    type: str
    value: str
    purpose: str
    ttl: int

    def owns(self, value: str) -> bool:
        """Whether a value served at this name and type is this record's to replace."""
        prefix = TXT_PREFIX.get(self.purpose)
        if self.type != "TXT" or prefix is None:
            return True
        return value.strip().lower().startswith(prefix)

    def same(self, value: str) -> bool:
        return normalise(self.type, value) == normalise(self.type, self.value)


@dataclass(frozen=True)
class RecordPlan:
    domain: str
    records: tuple[Record, ...]
    mta_sts_policy: str = ""  # the text to serve at https://mta-sts.<domain>/.well-known/…


@dataclass(frozen=True)
class DkimTxt:
    selector: str
    txt: str
    name: str = ""  # where the TXT is published when not <selector>._domainkey.<domain>


def normalise(rtype: str, value: str) -> str:
    """Compares values as DNS does: names without case or final dot; TXT without the spaces
    some providers add or drop around ';' (OVH inserts them) and without runs of blanks."""
    if rtype == "TXT":
        return _TXT_SEPARATOR.sub(";", " ".join(value.split())).rstrip(";")
    return " ".join(value.lower().split()).rstrip(".")


def txt_strings(value: str) -> list[str]:
    """Splits a TXT value into character-strings of at most 255 bytes, never inside a UTF-8
    sequence; readers join them back (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
    data = value.encode()
    chunks, start = [], 0
    while start < len(data):
        end = min(start + MAX_STRING, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        chunks.append(data[start:end].decode())
        start = end
    return chunks or [""]


def quote_txt(value: str) -> str:
    """The zone-file form of a TXT value: its strings quoted, '"' and '\\' escaped."""
    return " ".join(
        '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in txt_strings(value)
    )


def unquote_txt(content: str) -> str:
    """A TXT value in presentation form ("a" "b", quotes, \\X and \\DDD escapes, as servers and
    dnspython print it) joined into one; a value without quotes is returned as it is."""
    if '"' not in content:
        return content
    out, inside, i = bytearray(), False, 0
    while i < len(content):
        ch = content[i]
        if ch == "\\" and inside and i + 1 < len(content):
            digits = content[i + 1 : i + 4]
            if _DECIMAL.fullmatch(digits) and int(digits) < 256:
                out.append(int(digits))  # \DDD: one byte, e.g. of a UTF-8 sequence
                i += 4
                continue
            out += content[i + 1].encode()
            i += 2
            continue
        if ch == '"':
            inside = not inside
        elif inside:
            out += ch.encode()
        i += 1
    return out.decode("utf-8", "replace")


def plan(
    domain: str,
    dns: DnsConfig,
    dkim: Sequence[DkimTxt],
    *,
    token: str = "",
    base: bool = False,
    dkim_cnames: Sequence[tuple[str, str]] = (),
) -> RecordPlan:
    """Every record domain needs: MX, SPF, DMARC, each DKIM selector, TLS-RPT and MTA-STS when
    configured, the ownership proof of an own domain, the CNAMEs of a delegated one's DKIM
    selectors (dkim_cnames: name, target), and for the base domain the addresses
    of the MX hosts inside it (BIND refuses an MX whose in-zone target has no address)."""
    ttl = dns.ttl
    records = [Record(domain, "MX", f"{prio} {host}.", "mx", ttl) for prio, host in dns.mx_hosts]
    records.append(Record(domain, "TXT", dns.spf, "spf", ttl))
    dmarc = dns.dmarc + (f"; rua={dns.dmarc_rua}" if dns.dmarc_rua else "")
    records.append(Record(f"_dmarc.{domain}", "TXT", dmarc, "dmarc", ttl))
    for key in dkim:
        name = key.name or f"{key.selector}._domainkey.{domain}"
        records.append(Record(name, "TXT", key.txt, "dkim", ttl))
    # A delegated own domain: the customer's CNAMEs into the DKIM zone, one per slot.
    for name, target in dkim_cnames:
        records.append(Record(name, "CNAME", f"{target}.", "dkim-cname", ttl))
    if dns.tlsrpt_rua:
        txt = f"v=TLSRPTv1; rua={dns.tlsrpt_rua}"
        records.append(Record(f"_smtp._tls.{domain}", "TXT", txt, "tlsrpt", ttl))
    policy = ""
    if dns.mta_sts:
        policy = mta_sts_policy(dns)
        policy_id = hashlib.sha256(policy.encode()).hexdigest()[:20]
        txt = f"v=STSv1; id={policy_id}"
        records.append(Record(f"_mta-sts.{domain}", "TXT", txt, "mta-sts", ttl))
    if token:
        txt = OWNERSHIP_PREFIX + token
        records.append(Record(f"{OWNERSHIP_LABEL}.{domain}", "TXT", txt, "ownership", ttl))
    if base:
        addresses = dict(dns.mx_addresses)
        for _, host in dns.mx_hosts:
            if host == domain or host.endswith("." + domain):
                for address in addresses.get(host, ()):
                    rtype = "AAAA" if ":" in address else "A"
                    records.append(Record(host, rtype, address, "address", ttl))
    return RecordPlan(domain, tuple(records), policy)


def mta_sts_policy(dns: DnsConfig) -> str:
    """The MTA-STS policy file (RFC 8461 §3.2), lines ending in CRLF."""
    lines = ["version: STSv1", f"mode: {dns.mta_sts}"]
    lines += [f"mx: {host}" for _, host in dns.mx_hosts]
    lines.append("max_age: 604800")
    return "\r\n".join(lines) + "\r\n"


def missing_mx_addresses(dns: DnsConfig, domain: str) -> list[str]:
    """MX hosts inside domain that [dns] mx_addresses gives no address for."""
    addresses = dict(dns.mx_addresses)
    return [
        host
        for _, host in dns.mx_hosts
        if (host == domain or host.endswith("." + domain)) and not addresses.get(host)
    ]


def zone_file(plan_: RecordPlan) -> str:
    """The plan as zone-file lines with absolute names: pastes into BIND, Knot or NSD."""
    width = max((len(r.name) for r in plan_.records), default=0) + 1
    lines = [f"; mxdesk records for {plan_.domain}"]
    for r in plan_.records:
        value = quote_txt(r.value) if r.type == "TXT" else r.value
        lines.append(f"{(r.name + '.').ljust(width)} {r.ttl} IN {r.type.ljust(4)} {value}")
    return "\n".join(lines) + "\n"
