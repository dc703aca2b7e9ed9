"""DMARC (RFC 7489): the From: domain's policy record, identifier alignment, the result."""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The Public Suffix List parser and the copy of the list that authheaders itself uses.
from authheaders.dmarc_lookup import PublicSuffixList

from mxdesk.gateway.verdictdns import TempDnsError

POLICIES = ("none", "quarantine", "reject")
# §6.6.4: a message outside pct gets the next lesser policy.
LESSER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
# §6.3: "v=DMARC1" must be the first tag, matched exactly; other records are discarded.
_VERSION = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")
# Worst first: the result of a message with several From: domains is the worst of theirs.
_RANK = {"fail": 0, "temperror": 1, "permerror": 2, "none": 3, "pass": 4}
_POLICY_RANK = {"reject": 0, "quarantine": 1, "none": 2, None: 3}


@dataclass(frozen=True)
class DmarcRecord:
    policy: str
    subdomain_policy: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str | None = None
    policy: str | None = None  # what the domain asks for this message; None without a record


@dataclass(frozen=True)
class Identifier:
    """A domain and its SPF or DKIM result: the MAIL FROM (or HELO) domain, a signature's d=."""

    result: str
    domain: str


def parse_record(text: str) -> DmarcRecord | None:
    """The policy tags of a DMARC record (§6.3), or None when it is not one that applies."""
    if not _VERSION.match(text):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    policy = tags.get("p", "")
    if policy not in POLICIES:
        # §6.6.3 step 6: a bad or missing p= reads as p=none when there is a report address.
        if "rua" not in tags:
            return None
        policy = "none"
    subdomain = tags.get("sp", "")
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(
        policy,
        subdomain if subdomain in POLICIES else policy,
        "s" if tags.get("adkim") == "s" else "r",
        "s" if tags.get("aspf") == "s" else "r",
        pct,
    )


_suffix_list: Any = None
_suffix_lock = threading.Lock()


def _suffixes() -> Any:
    """The public suffix list, read once (30 ms or more) by whichever thread asks first:
    functools.cache let every verdict thread that asked meanwhile read it again."""
    global _suffix_list
    if _suffix_list is None:
        with _suffix_lock:
            if _suffix_list is None:
                ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
                with ref.open(encoding="utf-8") as text:
                    _suffix_list = PublicSuffixList(text)
    return _suffix_list


def preload() -> None:
    """Reads the public suffix list now (at start) rather than for the first message."""
    _suffixes()


@functools.lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """The organizational domain (§3.2): the public suffix and one label more. Under a TLD the
    list does not know, the suffix is that TLD (the list's implicit "*" rule)."""
    labels = domain.lower().rstrip(".").split(".")
    suffix = _suffixes().get_tld(".".join(labels), wildcard=True, strict=True)
    size = suffix.count(".") + 1 if suffix else 1
    return ".".join(labels[-(size + 1) :])


def aligned(domain: str, from_domain: str, strict: bool) -> bool:
    """Identifier alignment (§3.1): the same domain (strict) or organizational domain."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return a == b if strict else org_domain(a) == org_domain(b)


def discover(from_domain: str, txt: Callable[[str], list[bytes]]) -> tuple[DmarcRecord, str] | None:
    """The record that applies and the domain it was found at (§6.6.3): the From: domain's,
    else its organizational domain's; None when neither has exactly one. Raises TempDnsError."""
    for domain in dict.fromkeys((from_domain, org_domain(from_domain))):
        texts = [t.decode("utf-8", "replace") for t in txt(f"_dmarc.{domain}")]
        records = [t for t in texts if _VERSION.match(t)]
        if len(records) > 1:
            return None  # step 5: several records end policy discovery
        if records:
            record = parse_record(records[0])
            return (record, domain) if record is not None else None
    return None


def evaluate(
    from_domain: str,
    record: DmarcRecord,
    at: str,
    spf: Identifier | None,
    dkim: Sequence[Identifier],
) -> DmarcResult:
    """pass with an aligned pass; temperror when only an aligned identifier that failed for now
    could have passed (so that a temporary error never turns into a rejection); else fail.
    record was found at the domain `at` (the From: domain or its organizational domain)."""
    policy = record.policy if at == from_domain else record.subdomain_policy
    if record.pct < 100 and random.randrange(100) >= record.pct:
        policy = LESSER[policy]
    results = {i.result for i in dkim if aligned(i.domain, from_domain, record.adkim == "s")}
    if spf is not None and aligned(spf.domain, from_domain, record.aspf == "s"):
        results.add(spf.result)
    if "pass" in results:
        return DmarcResult("pass", from_domain, policy)
    if "temperror" in results:
        return DmarcResult("temperror", from_domain, policy)
    return DmarcResult("fail", from_domain, policy)


def check(
    from_domains: Sequence[str],
    find: Callable[[str], tuple[DmarcRecord, str] | None],
    spf: Identifier | None,
    dkim: Sequence[Identifier],
) -> DmarcResult:
    """The DMARC result of a message whose From: fields name from_domains (at least one);
    find(domain) is discover(domain, txt), or what it said before (the verdicts' memo)."""
    results = []
    for domain in from_domains:
        try:
            found = find(domain)
        except TempDnsError:
            results.append(DmarcResult("temperror", domain))
            continue
        if found is None:
            results.append(DmarcResult("none", domain))
            continue
        record, at = found
        results.append(evaluate(domain, record, at, spf, dkim))
    return worst(results)


def worst(results: Sequence[DmarcResult]) -> DmarcResult:
    return min(results, key=lambda r: (_RANK.get(r.result, 0), _POLICY_RANK.get(r.policy, 3)))
