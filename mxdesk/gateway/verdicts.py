"""SPF, DKIM, DMARC and ARC verdicts of one message (blocking: it runs in a worker thread)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import dkim
import spf
from dkim.util import InvalidTagValueList, parse_tag_value

from mxdesk.gateway import dmarc
from mxdesk.gateway.authresults import field_name, field_value, header_fields
from mxdesk.gateway.dmarc import DmarcResult, Identifier
from mxdesk.gateway.verdictdns import Lookups, TempDnsError, pyspf_through
from mxdesk.names import header_addresses

# dkimpy logs each failed signature at ERROR level with text taken from the message: it gets a
# logger that goes nowhere. What matters is in the verdicts, and the MX logs them.
_DKIMPY_LOG = logging.getLogger("mxdesk.gateway.verdicts.dkimpy")
_DKIMPY_LOG.propagate = False
_DKIMPY_LOG.addHandler(logging.NullHandler())

# Signatures verified per message (RFC 6376 §6.1: a verifier may limit them); each costs a DNS
# lookup and a hash of the body.
MAX_SIGNATURES = 8
# Distinct From: domains whose DMARC policy is looked up; a message naming more is permerror.
MAX_FROM_DOMAINS = 4
MIN_KEY_BITS = 1024  # RFC 8301 §3.2
SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
ALGORITHMS = ("rsa-sha256", "rsa-sha1", "ed25519-sha256")
_DOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9])?", re.I)
_BASE64 = re.compile(r"[A-Za-z0-9+/=]{8}")


def clean(text: str, limit: int = 200) -> str:
    """Text from outside (an exception about the message, a record), fit for a log line."""
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def ascii_domain(name: str) -> str | None:
    """name as a lower-case A-label domain, or None when it cannot be a DNS domain name."""
    name = name.strip().rstrip(".")
    try:
        name = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return name.lower() if _DOMAIN.fullmatch(name) else None


def address_domain(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    return ascii_domain(domain) if at and local else None


@dataclass(frozen=True)
class Envelope:
    client_ip: str | None  # None: not received over SMTP (read from a company mailbox)
    mail_from: str = ""  # "" for the null reverse-path
    helo: str = ""


@dataclass(frozen=True)
class SpfVerdict:
    result: str
    domain: str | None = None  # the identity checked: MAIL FROM's domain, or HELO's (RFC 7208 §2.3)
    mailfrom: str | None = None
    helo: str | None = None
    reason: str | None = None
    detail: str = field(default="", compare=False)  # for the log only


@dataclass(frozen=True)
class DkimVerdict:
    result: str
    domain: str | None = None
    selector: str | None = None
    algorithm: str | None = None
    b: str | None = None
    reason: str | None = None
    detail: str = field(default="", compare=False)


@dataclass(frozen=True)
class ArcVerdict:
    result: str  # pass, fail, none (RFC 8617 §4.4)
    reason: str | None = None


@dataclass(frozen=True)
class Verdicts:
    spf: SpfVerdict
    dkim: tuple[DkimVerdict, ...]
    dmarc: DmarcResult
    arc: ArcVerdict | None  # None: not evaluated (the header then leaves arc= out)
    dmarc_reason: str | None = None

    @property
    def temporary(self) -> bool:
        """A temporary DNS error that a retry could turn into another DMARC result."""
        if self.dmarc.result == "pass":
            return False
        return "temperror" in (self.spf.result, self.dmarc.result, *(d.result for d in self.dkim))

    def summary(self) -> str:
        """One log line's worth: every result, the domains, and what went wrong."""
        parts = [f"spf={self.spf.result}:{self.spf.domain or '-'}"]
        parts += [f"dkim={d.result}:{d.domain or '-'}" for d in self.dkim] or ["dkim=none"]
        parts.append(
            f"dmarc={self.dmarc.result}:{self.dmarc.from_domain or '-'}"
            f":p={self.dmarc.policy or '-'}"
        )
        if self.arc is not None:
            parts.append(f"arc={self.arc.result}")
        details = [self.spf.detail, *(d.detail for d in self.dkim), self.dmarc_reason or ""]
        found = "; ".join(d for d in details if d)
        return " ".join(parts) + (f" ({found})" if found else "")


def unverified(envelope: Envelope, reason: str) -> Verdicts:
    """What is said of a message whose checks did not finish in time."""
    spf_result = "none" if envelope.client_ip is None else "temperror"
    return Verdicts(
        SpfVerdict(spf_result, detail=reason),
        (DkimVerdict("temperror", reason="not verified in time", detail=reason),),
        DmarcResult("temperror"),
        None,
    )


def check_spf(envelope: Envelope, lookups: Lookups) -> SpfVerdict:
    mailfrom = address_domain(envelope.mail_from) if envelope.mail_from else None
    helo = ascii_domain(envelope.helo) if envelope.helo else None
    identity = mailfrom if envelope.mail_from else helo
    if envelope.client_ip is None or identity is None:
        # No SMTP client (fetched mail), or no domain to check (RFC 7208 §4.3: "none").
        return SpfVerdict("none", identity, mailfrom, helo)
    # The same client, sender and HELO give the same result while the same DNS answers do.
    return lookups.remembered(
        ("spf", envelope.client_ip, envelope.mail_from, envelope.helo),
        lambda: _check_spf(envelope, identity, mailfrom, helo, lookups),
        keep=lambda verdict: verdict.result != "temperror",
    )


def _check_spf(
    envelope: Envelope, identity: str, mailfrom: str | None, helo: str | None, lookups: Lookups
) -> SpfVerdict:
    remaining = lookups.remaining()
    if remaining <= 0:
        return SpfVerdict("temperror", identity, mailfrom, helo, detail="spf: no time left")
    # The domain as an A-label (SMTPUTF8 mail may name a U-label).
    sender = f"{envelope.mail_from.rpartition('@')[0]}@{mailfrom}" if mailfrom else ""
    try:
        with pyspf_through(lookups):
            # pyspf counts the 10 DNS-querying terms and the 2 void lookups (RFC 7208 §4.6.4)
            # and checks postmaster@HELO when MAIL FROM is null (§2.4).
            query = spf.query(
                envelope.client_ip,
                sender,
                helo or envelope.helo,
                timeout=remaining,
                querytime=remaining,
            )
            result, _code, explanation = query.check()
    except Exception as exc:  # pyspf on input it did not expect: the same next time
        result, explanation = "permerror", f"{type(exc).__name__}: {exc}"
    if result not in SPF_RESULTS:
        result = "permerror"
    detail = f"spf: {clean(str(explanation))}" if result not in ("pass", "none") else ""
    return SpfVerdict(result, identity, mailfrom, helo, detail=detail)


def _signature(value: bytes) -> DkimVerdict:
    """The identifiers of a DKIM-Signature that are safe to repeat in our header (the result
    is filled in by the caller)."""
    try:
        tags = parse_tag_value(value)
    except (InvalidTagValueList, ValueError):
        tags = {}

    def text(tag: bytes) -> str:
        return bytes(tags.get(tag, b"")).decode("ascii", "replace")

    algorithm = text(b"a").lower()
    b = re.sub(r"\s+", "", text(b"b"))[:8]
    return DkimVerdict(
        "neutral",
        domain=ascii_domain(text(b"d")),
        selector=ascii_domain(text(b"s")),
        algorithm=algorithm if algorithm in ALGORITHMS else None,
        b=b if _BASE64.fullmatch(b) else None,
    )


def _verify_signature(signed: dkim.DKIM, idx: int, value: bytes, lookups: Lookups) -> DkimVerdict:
    sig = _signature(value)
    if sig.algorithm == "rsa-sha1":
        # RFC 8301 §3.1: rsa-sha1 MUST NOT be used for verifying.
        return replace(sig, result="permerror", reason="rsa-sha1 not accepted")
    try:
        ok = signed.verify(idx=idx, dnsfunc=lookups.dkim_key)
    except TempDnsError as exc:
        return replace(sig, result="temperror", reason="key lookup failed", detail=str(exc))
    except Exception as exc:  # dkimpy's DKIMException, or input it did not expect
        if isinstance(exc, dkim.ValidationError) and str(exc).startswith("body hash mismatch"):
            detail = f"dkim {sig.domain}: body hash mismatch"
            return replace(sig, result="fail", reason="body hash did not verify", detail=detail)
        detail = f"dkim {sig.domain}: {type(exc).__name__}: {clean(str(exc))}"
        # Nothing in the message or its key will change: another try gives the same result.
        return replace(sig, result="permerror", reason="signature not usable", detail=detail)
    if ok:
        return replace(sig, result="pass")
    name = f"{sig.selector}._domainkey.{sig.domain}"
    if name in lookups.keys:
        record = lookups.keys[name]
        if record is None:  # RFC 6376 §6.1.2: PERMFAIL (no key for signature)
            return replace(sig, result="permerror", reason="no key for signature")
        try:
            dkim.evaluate_pk(name.encode(), record)
        except Exception:
            return replace(sig, result="permerror", reason="key record not usable")
    return replace(sig, result="fail", reason="signature did not verify")


def check_dkim(message: bytes, fields: Sequence[bytes], lookups: Lookups) -> list[DkimVerdict]:
    """One verdict per DKIM-Signature, the first MAX_SIGNATURES of them."""
    count = sum(1 for f in fields if field_name(f) == b"dkim-signature")
    if not count:
        return []
    try:
        signed = dkim.DKIM(message, logger=_DKIMPY_LOG, minkey=MIN_KEY_BITS)
    except Exception as exc:
        detail = f"dkim: message not parsed: {clean(str(exc))}"
        return [DkimVerdict("permerror", reason="message not parsed", detail=detail)] * min(
            count, MAX_SIGNATURES
        )
    values = [v for n, v in signed.headers if n.lower() == b"dkim-signature"]
    return [
        _verify_signature(signed, idx, value, lookups)
        for idx, value in enumerate(values[:MAX_SIGNATURES])
    ]


def check_arc(message: bytes, fields: Sequence[bytes], lookups: Lookups) -> ArcVerdict:
    """The chain validation status (RFC 8617 §5.2) with dkimpy's ARC verifier."""
    if not any(field_name(f) == b"arc-seal" for f in fields):
        return ArcVerdict("none")
    try:
        status, _, _ = dkim.ARC(message, logger=_DKIMPY_LOG, minkey=MIN_KEY_BITS).verify(
            dnsfunc=lookups.dkim_key
        )
    except TempDnsError:
        # RFC 8617 has no temperror: the chain did not validate, and the reason says why.
        return ArcVerdict("fail", "key lookup failed")
    except Exception:
        return ArcVerdict("fail", "chain not usable")
    if status == dkim.CV_Pass:
        return ArcVerdict("pass")
    if status == dkim.CV_None:
        return ArcVerdict("none")
    return ArcVerdict("fail")


def from_domains(fields: Sequence[bytes]) -> tuple[list[str], str | None]:
    """The distinct domains of the From: addresses (RFC 7489 §6.6.1), or a reason they make
    DMARC a permerror. Read with the parser the store uses (names.header_addresses), so both
    see the same addresses."""
    values = [field_value(f) for f in fields if field_name(f) == b"from"]
    domains: list[str] = []
    found: list[tuple[str, str]] = []
    for value in values:
        pairs = header_addresses(value)
        if pairs is None:
            return [], "the From header cannot be read unambiguously"
        found.extend(pairs)
    for _, address in found:
        if not address:
            continue
        domain = address_domain(address)
        if domain is None:
            return [], "a From address has no valid domain"
        if domain not in domains:
            domains.append(domain)
    if not domains:
        return [], "no From address"
    return domains, None


def check_dmarc(
    fields: Sequence[bytes],
    spf_verdict: SpfVerdict,
    dkim_verdicts: Sequence[DkimVerdict],
    lookups: Lookups,
) -> tuple[DmarcResult, str | None]:
    domains, problem = from_domains(fields)
    if problem is not None:
        return DmarcResult("permerror"), problem
    spf_id = Identifier(spf_verdict.result, spf_verdict.domain) if spf_verdict.domain else None
    dkim_ids = [Identifier(d.result, d.domain) for d in dkim_verdicts if d.domain]
    result = dmarc.check(
        domains[:MAX_FROM_DOMAINS],
        lambda domain: lookups.remembered(
            ("dmarc", domain), lambda: dmarc.discover(domain, lookups.txt)
        ),
        spf_id,
        dkim_ids,
    )
    if len(domains) > MAX_FROM_DOMAINS:
        return dmarc.worst([result, DmarcResult("permerror")]), "too many From domains"
    return result, None


def compute(message: bytes, envelope: Envelope, lookups: Lookups) -> Verdicts:
    """Every verdict of one message; its DNS lookups end at lookups.deadline."""
    fields, _ = header_fields(message)
    spf_verdict = check_spf(envelope, lookups)
    dkim_verdicts = check_dkim(message, fields, lookups)
    arc = check_arc(message, fields, lookups)
    result, reason = check_dmarc(fields, spf_verdict, dkim_verdicts, lookups)
    return Verdicts(spf_verdict, tuple(dkim_verdicts), result, arc, reason)
