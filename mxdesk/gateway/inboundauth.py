"""Inbound verdicts off the event loop (worker threads, one DNS deadline per message) and the
replies [gateway.inbound_auth] makes of them."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.resolver

from mxdesk.gateway import authresults, dmarc
from mxdesk.gateway.verdictdns import Lookups, Memo, NotCached, build_resolver, cached_only
from mxdesk.gateway.verdicts import Envelope, Verdicts, compute, unverified
from mxdesk.inboundauthconfig import InboundAuthConfig

log = logging.getLogger("mxdesk.gateway.verdicts")

R550_DMARC_REJECT = "550 5.7.1 Message refused by the DMARC policy of the sender's domain"
R550_SPF_FAIL = "550 5.7.23 Message refused: SPF validation failed"  # RFC 7372
R451_AUTH_TEMP = "451 4.7.5 Cannot verify the sender's authentication now, try again later"
# Messages checked at the same time. Most of a check is waiting for DNS, the rest is hashing
# and one public-key operation per signature; a few threads keep a slow DNS server from
# holding up every session, and the GIL makes more of them pointless.
WORKERS = 4
# How much longer than dns_timeout the loop waits for a worker (hashing a large message)
# before it records the message as not verified in time.
GRACE = 2.0
# A message up to this size is checked on the event loop first, with the DNS answers in the
# cache only (about 0.1 ms, and a few more per DKIM signature): handing it to a worker and back
# cost four times the check itself. A lookup the cache cannot answer sends it to a worker.
ON_LOOP_BYTES = 64 * 1024


@dataclass(frozen=True)
class Checked:
    verdicts: Verdicts
    header: bytes  # the Authentication-Results field to prepend, CRLF-terminated


def refusal(config: InboundAuthConfig, verdicts: Verdicts) -> str | None:
    """The reply for a message the policy refuses, None to accept it (flagged in the header)."""
    dmarc = verdicts.dmarc
    if config.dmarc_reject and dmarc.result == "fail" and dmarc.policy == "reject":
        return R550_DMARC_REJECT
    if config.spf_fail == "reject" and verdicts.spf.result == "fail":
        return R550_SPF_FAIL
    # A temporary error never rejects: accepted with temperror in the header, or deferred.
    if config.temperror == "defer" and verdicts.temporary:
        return R451_AUTH_TEMP
    return None


class InboundVerifier:
    """Computes the verdicts of inbound messages; one per gateway, shared by the MX sessions
    and the channel fetchers (one DNS cache for all)."""

    def __init__(
        self,
        config: InboundAuthConfig,
        host_name: str,
        resolver: dns.resolver.Resolver | None = None,
    ) -> None:
        self.config = config
        self.host_name = host_name
        self._resolver = resolver or build_resolver(config.nameservers)
        self._offline = cached_only(self._resolver)
        self._memo = Memo()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="mxdesk-verdicts")
        dmarc.preload()  # DMARC's organizational domains: not by the first messages

    async def check(self, message: bytes, envelope: Envelope) -> Checked:
        """The verdicts of message as received (before anything is added or removed) and the
        header that says them; bounded by dns_timeout (plus GRACE for the hashing)."""
        timeout = self.config.dns_timeout
        try:
            verdicts = await self._compute(message, envelope, timeout)
        except TimeoutError:
            verdicts = unverified(envelope, f"not finished within {timeout + GRACE:g}s")
        except Exception as exc:  # a bug of ours or of a library: said, and not fatal to the mail
            log.exception("verdicts failed: %r", exc)
            verdicts = unverified(envelope, f"internal error: {type(exc).__name__}")
        return Checked(verdicts, authresults.build(self.host_name, verdicts))

    async def _compute(self, message: bytes, envelope: Envelope, timeout: float) -> Verdicts:
        deadline = time.monotonic() + timeout
        if len(message) <= ON_LOOP_BYTES:
            offline = Lookups(self._offline, deadline, offline=True, memo=self._memo)
            try:
                verdicts = compute(message, envelope, offline)
            except NotCached:
                pass
            else:
                # pyspf swallows any error of an exp= or ptr lookup: a miss there is seen here.
                if not offline.missed:
                    return verdicts
        lookups = Lookups(self._resolver, deadline, memo=self._memo)
        job = functools.partial(compute, message, envelope, lookups)
        async with asyncio.timeout(timeout + GRACE):
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def refusal(self, verdicts: Verdicts) -> str | None:
        return refusal(self.config, verdicts)

    def without_ours(self, message: bytes) -> bytes:
        """message without the Authentication-Results fields that claim our host name."""
        return authresults.strip_ours(message, self.host_name)

    async def verdict_for_fetched(self, raw: bytes) -> bytes:
        """The Authentication-Results header for a message read from a company mailbox, to
        prepend to without_ours(raw). No SMTP client there, so spf=none; DKIM, DMARC and ARC
        as for the MX. Never refuses: the message is already in the company's mailbox."""
        return (await self.check(raw, Envelope(None))).header

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
