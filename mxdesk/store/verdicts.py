"""A message's SPF, DKIM, DMARC and ARC verdicts as the gateway recorded them, and whether they
prove its From: address."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from mxdesk.store.authresults import Resinfo, trusted_results

MAX_DKIM = 8
MAX_DOMAIN = 253
_RESULT = re.compile(r"[a-z]{1,16}")
_DOMAIN = re.compile(r"[a-z0-9._-]{1,253}")
_POLICY = re.compile(r"(?:^|\s)p=([a-z]{1,16})")


@dataclass(frozen=True)
class DkimVerdict:
    result: str
    domain: str  # header.d (or the domain of header.i)


@dataclass(frozen=True)
class Verdicts:
    """The compact form kept with a message; results as RFC 8601 names them ("pass", "fail" …)."""

    spf: str = "none"
    spf_domain: str = ""  # of the MAIL FROM identity ('' for a HELO-only result)
    dkim: tuple[DkimVerdict, ...] = ()
    dmarc: str = "none"
    dmarc_from: str = ""  # header.from: the domain DMARC was evaluated for
    dmarc_policy: str = ""  # the domain's published policy: none, quarantine, reject
    arc: str = "none"

    def summary(self) -> str:
        """One line: `spf=pass dkim=pass (marca.example) dmarc=pass (marca.example, p=reject)
        arc=none`."""
        dkim = (
            " ".join(
                f"dkim={d.result} ({d.domain})" if d.domain else f"dkim={d.result}"
                for d in self.dkim
            )
            or "dkim=none"
        )
        detail = ", ".join(
            x for x in (self.dmarc_from, f"p={self.dmarc_policy}" if self.dmarc_policy else "") if x
        )
        dmarc = f"dmarc={self.dmarc}" + (f" ({detail})" if detail else "")
        return f"spf={self.spf} {dkim} {dmarc} arc={self.arc}"

    def to_json(self) -> str:
        return _as_json(self)

    @classmethod
    def from_json(cls, text: str | None) -> Verdicts | None:
        """The stored verdicts; None for a message filed without them (or unreadable ones)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            dkim = tuple(DkimVerdict(str(d["result"]), str(d["domain"])) for d in data["dkim"])
            return cls(**{**data, "dkim": dkim})
        except (ValueError, TypeError, KeyError):
            return None


@functools.lru_cache(maxsize=512)
def _as_json(verdicts: Verdicts) -> str:
    data = {f.name: getattr(verdicts, f.name) for f in fields(verdicts)}
    data["dkim"] = [{"result": d.result, "domain": d.domain} for d in verdicts.dkim]
    return json.dumps(data, separators=(",", ":"))


def read_verdicts(raw: bytes, host_name: str) -> Verdicts | None:
    """The verdicts of the gateway's own Authentication-Results header (the one naming
    host_name); None when the message has none: nothing about its sender is known."""
    results = trusted_results(raw, host_name)
    return None if results is None else _remembered_verdicts(results)


@functools.lru_cache(maxsize=512)
def _remembered_verdicts(results: tuple[Resinfo, ...]) -> Verdicts:
    return verdicts_of(results)


def verdicts_of(results: Sequence[Resinfo]) -> Verdicts:
    """Verdicts from parsed results: the first of each method counts, every DKIM signature."""
    spf = [r for r in results if r.method == "spf"]
    # RFC 7208 §2.3-2.4: the MAIL FROM identity is the one DMARC aligns; HELO is only shown.
    mail_from = next((r for r in spf if r.prop("smtp.mailfrom")), spf[0] if spf else None)
    dmarc = next((r for r in results if r.method == "dmarc"), None)
    arc = next((r for r in results if r.method == "arc"), None)
    dkim = [r for r in results if r.method == "dkim"][:MAX_DKIM]
    return Verdicts(
        spf=_result(mail_from),
        spf_domain=_domain(mail_from.prop("smtp.mailfrom")) if mail_from else "",
        dkim=tuple(
            DkimVerdict(_result(r), _domain(r.prop("header.d") or r.prop("header.i"))) for r in dkim
        ),
        dmarc=_result(dmarc),
        dmarc_from=_domain(dmarc.prop("header.from")) if dmarc else "",
        dmarc_policy=_policy(dmarc) if dmarc else "",
        arc=_result(arc),
    )


def sender_verified(verdicts: Verdicts | None, from_addr: str) -> bool:
    """Whether the From: domain is proven: DMARC passed for it; or, without a DMARC verdict
    (none, temperror, permerror), a passing DKIM signature or SPF MAIL FROM of that domain or
    of a parent of it. A DMARC fail is final: the domain's own alignment rules said no."""
    domain = _domain(from_addr)
    if verdicts is None or not domain:
        return False
    if verdicts.dmarc_from in ("", domain):
        if verdicts.dmarc == "pass":
            return True
        if verdicts.dmarc == "fail":
            return False
    dkim = any(d.result == "pass" and aligned(d.domain, domain) for d in verdicts.dkim)
    return dkim or (verdicts.spf == "pass" and aligned(verdicts.spf_domain, domain))


def sender_forged(verdicts: Verdicts | None, from_addr: str) -> bool:
    """Whether the verdicts contradict the From: address: DMARC failed for its domain."""
    domain = _domain(from_addr)
    return (
        verdicts is not None
        and bool(domain)
        and verdicts.dmarc == "fail"
        and verdicts.dmarc_from in ("", domain)
    )


def aligned(identity: str, from_domain: str) -> bool:
    """The identity is the From: domain or a parent of it (never a single label such as a TLD).
    Without the public suffix list this is stricter than DMARC's relaxed mode, never looser."""
    return bool(identity) and (
        identity == from_domain or ("." in identity and from_domain.endswith("." + identity))
    )


def _result(r: Resinfo | None) -> str:
    return r.result if r is not None and _RESULT.fullmatch(r.result) else "none"


def _domain(value: str) -> str:
    """The domain of an address or a domain name, lower case; '' when it is not one."""
    domain = value.rpartition("@")[2].strip().lower().rstrip(".")
    return domain if _DOMAIN.fullmatch(domain) else ""


def _policy(r: Resinfo) -> str:
    """policy.dmarc, else the p= tag that authheaders and OpenDMARC write in a comment."""
    value = r.prop("policy.dmarc").lower()
    if not value:
        found = next((m for c in r.comments if (m := _POLICY.search(c.lower()))), None)
        value = found.group(1) if found else ""
    return value if _RESULT.fullmatch(value) else ""
