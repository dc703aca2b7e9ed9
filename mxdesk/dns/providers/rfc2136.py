"""RFC 2136 dynamic updates over TCP, signed with TSIG (RFC 8945), to BIND, Knot, PowerDNS …"""

from __future__ import annotations

import re
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.tsig
import dns.update

from mxdesk.dns.providers import TYPES, ProviderError, RRset, read_secret, register
from mxdesk.dns.records import txt_strings
from mxdesk.dns.settings import ProviderConfig

_KEY = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>.*?)\}\s*;', re.DOTALL | re.IGNORECASE
)
_ALGORITHM = re.compile(r"algorithm\s+\"?([\w.-]+)\"?\s*;", re.IGNORECASE)
_SECRET = re.compile(r'secret\s+"([^"]+)"\s*;', re.IGNORECASE)
_COMMENT = re.compile(r'"[^"]*"|(?:#|//)[^\n]*|/\*.*?\*/', re.DOTALL)


class TsigKeyError(ValueError):
    """The TSIG key file cannot be used; the message says why."""


def parse_key(text: str) -> dns.tsig.Key:
    """A key in BIND's format, as tsig-keygen prints it: key "name" { algorithm …; secret …; };"""
    # Comments (#, //, /* */) go, but not inside a quoted secret: base64 has "//" in it.
    text = _COMMENT.sub(lambda m: m[0] if m[0].startswith('"') else " ", text)
    match = _KEY.search(text)
    if match is None:
        raise TsigKeyError('expected key "NAME" { algorithm hmac-sha256; secret "…"; };')
    algorithm = _ALGORITHM.search(match["body"])
    secret = _SECRET.search(match["body"])
    if secret is None:
        raise TsigKeyError(f"key {match['name']!r} has no secret")
    try:
        key = dns.tsig.Key(
            match["name"], secret[1], algorithm[1] if algorithm else dns.tsig.default_algorithm
        )
        # An algorithm dnspython cannot sign with fails here, not at the first update.
        dns.tsig.get_context(key)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise TsigKeyError(f"key {match['name']!r}: {exc}") from None
    return key


def to_rdatas(rrset: RRset) -> list[dns.rdata.Rdata]:
    rdtype = dns.rdatatype.from_text(rrset.type)
    if rrset.type == "TXT":
        return [
            dns.rdtypes.ANY.TXT.TXT(
                dns.rdataclass.IN, rdtype, [s.encode() for s in txt_strings(value)]
            )
            for value in rrset.values
        ]
    return [dns.rdata.from_text(dns.rdataclass.IN, rdtype, value) for value in rrset.values]


def from_rdata(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return str(rdata.to_text())


class Rfc2136Provider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        host, _, port = str(config.option("server")).rpartition(":")
        if not host or not port.isdigit():
            host, port = str(config.option("server")), "53"
        self.host, self.port = host.strip("[]"), int(port)
        self.timeout = float(config.option("timeout", 10.0))
        self._config = config
        self._key: dns.tsig.Key | None = None

    @property
    def key(self) -> dns.tsig.Key:
        if self._key is None:
            text = read_secret(self._config, "key_file", "key_credential")
            try:
                self._key = parse_key(text)
            except TsigKeyError as exc:
                raise ProviderError(f"DNS provider {self.name!r}: TSIG key file: {exc}") from None
        return self._key

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def read(self, zone: str, name: str) -> list[RRset]:
        return [rrset for rtype in TYPES for rrset in await self.read_type(name, rtype)]

    async def replace(self, zone: str, rrsets: Sequence[RRset]) -> None:
        key = self.key
        update = dns.update.UpdateMessage(
            zone + ".", keyring=key, keyname=key.name, keyalgorithm=key.algorithm
        )
        for rrset in rrsets:
            name = dns.name.from_text(rrset.name)
            if rrset.values:
                update.replace(name, rrset.ttl, *to_rdatas(rrset))
            else:
                update.delete(name, rrset.type)
        keyname = key.name.to_text(omit_final_dot=True)
        try:
            response = await self._send(update)
        except dns.tsig.PeerError as exc:
            raise ProviderError(
                f"the DNS server at {self.where} refused the TSIG key '{keyname}'"
                f" ({_tsig_error(exc)}): check its name, algorithm and secret"
            ) from None
        except dns.exception.FormError:
            # The answer was not signed: the server does not know the key, or the zone.
            raise ProviderError(
                await self._zone_reason(zone, f"refused the TSIG key '{keyname}' (unsigned answer)")
            ) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        names = ", ".join(sorted({r.name for r in rrsets}))
        if rcode == dns.rcode.REFUSED:
            unaddressed = await self._mx_targets_without_address(zone, rrsets)
            if unaddressed:
                host = unaddressed[0]
                raise ProviderError(
                    f"the DNS server at {self.where} refused the update of {names} (REFUSED):"
                    f" MX host {host} is inside zone {zone} but has no address record there, and"
                    " BIND refuses such an MX (check-integrity). Give its addresses in [dns]"
                    " mx_addresses and publish the base domain first"
                )
            raise ProviderError(
                f"the DNS server at {self.where} says key '{keyname}' is not allowed to update"
                f" {names} (REFUSED): check its update-policy or ACL"
            )
        if rcode == dns.rcode.NOTAUTH:
            # A signed NOTAUTH: the key was accepted, the zone is not the server's to update.
            raise ProviderError(
                await self._zone_reason(zone, f"is not authoritative for zone {zone} (NOTAUTH)")
            )
        if rcode == dns.rcode.NOTZONE:
            raise ProviderError(f"{names} is not inside zone {zone} at {self.where} (NOTZONE)")
        temporary = rcode == dns.rcode.SERVFAIL
        raise ProviderError(
            f"the DNS server at {self.where} answered {dns.rcode.to_text(rcode)} to the update"
            f" of {names}",
            temporary=temporary,
        )

    async def _zone_reason(self, zone: str, otherwise: str) -> str:
        """Does not serve zone (no authoritative SOA answer), else the server's otherwise."""
        query = dns.message.make_query(zone + ".", "SOA")
        query.flags &= ~dns.flags.RD
        try:
            answer = await self._send(query)
        except ProviderError:
            answer = None
        if answer is None or not answer.flags & dns.flags.AA:
            return f"the DNS server at {self.where} does not serve zone {zone}"
        return f"the DNS server at {self.where} {otherwise}"

    async def _mx_targets_without_address(self, zone: str, rrsets: Sequence[RRset]) -> list[str]:
        """MX hosts of rrsets inside zone with an address neither in rrsets nor at the server."""
        given = {r.name.lower() for r in rrsets if r.type in ("A", "AAAA") and r.values}
        targets = {
            value.split()[-1].lower().rstrip(".")
            for r in rrsets
            if r.type == "MX"
            for value in r.values
        }
        found = []
        for host in sorted(targets - given):
            if host != zone and not host.endswith("." + zone):
                continue
            try:
                addresses = [
                    a for t in ("A", "AAAA") for a in await self.read_type(host, t) if a.values
                ]
            except ProviderError:
                continue
            if not addresses:
                found.append(host)
        return found

    async def read_type(self, name: str, rtype: str) -> list[RRset]:
        query = dns.message.make_query(name + ".", rtype)
        query.flags &= ~dns.flags.RD
        answer = await self._send(query)
        return [
            RRset(name, rtype, rrset.ttl, tuple(from_rdata(r) for r in rrset))
            for rrset in answer.answer
            if rrset.name == query.question[0].name and rrset.rdtype == query.question[0].rdtype
        ]

    async def _send(self, message: dns.message.Message) -> dns.message.Message:
        try:
            return await dns.asyncquery.tcp(
                message, self.host, timeout=self.timeout, port=self.port
            )
        except (dns.tsig.PeerError, dns.exception.FormError):
            raise
        except (dns.exception.Timeout, OSError, EOFError) as exc:
            raise ProviderError(
                f"the DNS server at {self.where} did not answer ({exc or type(exc).__name__})",
                temporary=True,
            ) from None


def _tsig_error(exc: dns.tsig.PeerError) -> str:
    # BADSIG is 16, which dns.rcode.to_text calls BADVERS (RFC 8945 §5.2): label it here.
    if isinstance(exc, dns.tsig.PeerBadKey):
        return "BADKEY: it does not know this key name or algorithm"
    if isinstance(exc, dns.tsig.PeerBadSignature):
        return "BADSIG: the secret does not match"
    if isinstance(exc, dns.tsig.PeerBadTime):
        return "BADTIME: the clocks differ by more than 5 minutes"
    return type(exc).__name__


register("rfc2136")(Rfc2136Provider)
