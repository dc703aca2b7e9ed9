"""The authoritative check of many active domains against a local Knot primary and secondary.

Every domain d0001.helpdesk.example … has its five planned records (MX, SPF, DMARC, one RSA-2048
DKIM TXT, TLS-RPT) in the zone file the primary starts from; the secondary transfers the zone
before the first pass, so both serve everything. Each pass is a fresh AuthoritativeChecker (the
gateway's class, with its cache empty) checking every domain, --in-flight domains at a time (16,
as the gateway's DomainLifecycle does; 0: all at once), its record queries bounded by its
semaphore (--concurrency); a pass fails loudly unless every record is served by both servers.

Figures per pass: seconds for the whole pass, record queries per second (domains × records ×
servers, the queries the check is for), the zone and NS lookups the checker makes on the way
(counted apart), queries that fell back to TCP, and this process's CPU time.

    .venv/bin/python bench/dns_check.py [--domains 1000] [--passes 3] [--concurrency 64]
        [--in-flight 16] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import platform
import pstats
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from authdns import BASE, TsigKey, base_zone, knot_pair
from machine import cpus, interpreter

from mxdesk import config as cfg
from mxdesk.dns.check import AuthoritativeChecker, CheckReport
from mxdesk.dns.lifecycle import DomainLifecycle
from mxdesk.dns.records import DkimTxt, Record, plan, zone_file
from mxdesk.dns.settings import DnsConfig
from mxdesk.gateway.dkim import generate_key, load_key

SELECTOR = "mx202601"
TLSRPT_RUA = f"mailto:tls@{BASE}"


def domain_name(i: int) -> str:
    return f"d{i:04d}.{BASE}"


def dns_config(**table: Any) -> DnsConfig:
    """The [dns] section with TLS-RPT on (the fifth record) and whatever else table says."""
    data = {"mxdesk": {"base_domain": BASE}, "dns": {"tlsrpt_rua": TLSRPT_RUA, **table}}
    return cfg.parse(data).dns


class Queries:
    """Counts the DNS exchanges of this process by wrapping dnspython's UDP and TCP queries:
    the checker's own (recursion off, one per record and server) apart from the zone and NS
    lookups it sends its resolver (recursion on); TCP counts the truncated answers retried."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._udp = dns.asyncquery.udp
        self._tcp = dns.asyncquery.tcp

    def install(self) -> None:
        udp, tcp, counts = self._udp, self._tcp, self.counts

        def kind(q: dns.message.Message) -> str:
            return "lookups" if q.flags & dns.flags.RD else "records"

        async def counted_udp(q: dns.message.Message, *args: Any, **kwargs: Any) -> Any:
            counts[kind(q)] += 1
            return await udp(q, *args, **kwargs)

        async def counted_tcp(q: dns.message.Message, *args: Any, **kwargs: Any) -> Any:
            counts["tcp"] += 1
            return await tcp(q, *args, **kwargs)

        dns.asyncquery.udp = counted_udp
        dns.asyncquery.tcp = counted_tcp

    def take(self) -> Counter[str]:
        counts = Counter(self.counts)
        self.counts.clear()
        return counts


@dataclass
class Pass:
    seconds: float
    cpu: float  # time.process_time of this process during the pass
    record_queries: int  # domains × records × servers, from the reports
    counts: Counter[str]

    @property
    def rate(self) -> float:
        return self.record_queries / self.seconds


async def check_all(
    config: DnsConfig, domains: dict[str, tuple[Record, ...]], concurrency: int, in_flight: int
) -> list[CheckReport]:
    """Every domain checked by one fresh checker; at most in_flight domains at a time (as the
    gateway's DomainLifecycle does), or all at once when in_flight is 0."""
    checker = AuthoritativeChecker(config, concurrency=concurrency)
    limit = asyncio.Semaphore(in_flight or max(1, len(domains)))

    async def check(domain: str, records: tuple[Record, ...]) -> CheckReport:
        async with limit:
            return await checker.check(domain, records)

    return await asyncio.gather(*(check(d, records) for d, records in domains.items()))


def one_pass(
    config: DnsConfig,
    domains: dict[str, tuple[Record, ...]],
    args: argparse.Namespace,
    queries: Queries,
    profile: cProfile.Profile | None = None,
) -> Pass:
    queries.take()
    cpu, start = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    reports = asyncio.run(check_all(config, domains, args.concurrency, args.in_flight))
    if profile is not None:
        profile.disable()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    bad = [r for r in reports if not r.ok]
    if bad:
        shown = "\n".join(f"  {r.problems()[0]}" for r in bad[:5])
        raise SystemExit(
            f"{len(bad)} of {len(reports)} domains not served everywhere"
            f" ({seconds:.2f} s, queries sent: {dict(queries.take())}); the first:\n{shown}"
        )
    counted = sum(r.expected for r in reports)
    wanted = sum(len(records) * 2 for records in domains.values())
    if counted != wanted or any(r.served != r.expected for r in reports):
        raise SystemExit(f"{counted} answers checked, {wanted} expected (records × 2 servers)")
    return Pass(seconds, cpu, counted, queries.take())


def knot_version() -> str:
    try:
        out = subprocess.run(["knotd", "-V"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    return out.rsplit("version", 1)[-1].strip() or "?"


def machine() -> list[str]:
    return [
        cpus(),
        f"kernel: {platform.release()}, {interpreter()}, Knot {knot_version()}",
    ]


def report(args: argparse.Namespace, records: int, passes: list[Pass]) -> None:
    print()
    print(
        f"{args.domains} domains × {records} records × 2 servers (Knot primary and secondary"
        f" on 127.0.0.1), {args.in_flight or 'all'} domains at a time, checker concurrency"
        f" {args.concurrency}, a fresh checker per pass"
    )
    for line in machine():
        print(line)
    print()
    print(
        f"{'pass':<6}{'seconds':>8}{'queries/s':>11}{'records':>9}{'lookups':>9}{'tcp':>6}"
        f"{'CPU s':>7}{'CPU %':>7}"
    )
    for i, p in enumerate(passes, start=1):
        print(
            f"{i:<6}{p.seconds:>8.2f}{p.rate:>11.0f}{p.counts['records']:>9}"
            f"{p.counts['lookups']:>9}{p.counts['tcp']:>6}{p.cpu:>7.2f}"
            f"{100 * p.cpu / p.seconds:>7.0f}"
        )
    best = min(passes, key=lambda p: p.seconds)
    mean = sum(p.seconds for p in passes) / len(passes)
    print()
    print(
        f"best pass (of {len(passes)}): {best.seconds:.2f} s for {args.domains} domains,"
        f" {best.rate:.0f} record queries/s, {1000 * best.cpu / args.domains:.2f} ms CPU per"
        f" domain; mean {mean:.2f} s"
    )
    exchanges = best.counts["records"] + best.counts["lookups"] + best.counts["tcp"]
    print(
        f"with the lookups: {exchanges / best.seconds:.0f} DNS exchanges/s,"
        f" {1000 * best.cpu / exchanges:.2f} ms CPU each"
    )
    print(
        f"rechecked hourly, one pass takes {100 * best.seconds / 3600:.2f}% of the hour"
        f" ({best.seconds:.1f} s of 3600 s)"
    )
    print()
    print("queries/s: record queries (domains × records × 2 servers, recursion off) ÷ the pass;")
    print("lookups: the zone (SOA) and NS queries to the resolver, not in queries/s;")
    print("tcp: answers that came back truncated over UDP and were asked again over TCP;")
    print("CPU: time.process_time of this process (the checker), not Knot's.")
    command = [".venv/bin/python", "bench/dns_check.py"]
    for name in ("domains", "passes", "concurrency", "in_flight"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    print("reproduce:")
    print("  " + shlex.join(command))


def print_profile(profile: cProfile.Profile, top: int = 15) -> None:
    """The top functions by own time, then where the checker's time goes (cumulative)."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(
        r"mxdesk/dns/check|asyncquery|asyncresolver|message\.py:\d+\((from_wire|to_wire|make_query)",
        top,
    )
    print()
    print(f"cProfile of the profiled pass (its times are inflated by the profiler), top {top}:")
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--domains", type=int, default=1000, help="active domains to check")
    parser.add_argument("--passes", type=int, default=3, help="full passes, each timed")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="the checker's bound on record queries"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=DomainLifecycle.concurrency,
        help="domains checked at a time (the gateway's default); 0: all at once",
    )
    parser.add_argument(
        "--profile", action="store_true", help="one more pass under cProfile (not in the figures)"
    )
    args = parser.parse_args()

    key = load_key(generate_key("rsa"), BASE, SELECTOR)  # one RSA-2048 key's TXT for all
    dkim = [DkimTxt(SELECTOR, key.dns_txt())]
    plan_config = dns_config()
    plans = [plan(domain_name(i), plan_config, dkim) for i in range(1, args.domains + 1)]
    domains = {p.domain: p.records for p in plans}
    records = {len(r) for r in domains.values()}
    assert records == {5}, f"{records} records per domain, 5 expected"
    zone = base_zone(BASE) + "".join(zone_file(p) for p in plans)

    queries = Queries()
    queries.install()
    with knot_pair({BASE: zone}, TsigKey.generate("mxdesk-bench")) as (primary, secondary):
        secondary.refresh(BASE, timeout=60)
        config = dns_config(
            resolvers=[f"{primary.host}:{primary.port}"],
            nameserver_addresses={
                f"ns1.{BASE}": f"{primary.host}:{primary.port}",
                f"ns2.{BASE}": f"{secondary.host}:{secondary.port}",
            },
            check_timeout=2.0,
        )
        passes = []
        for i in range(args.passes):
            print(f"pass {i + 1}/{args.passes} …", flush=True)
            passes.append(one_pass(config, domains, args, queries))
        profile = None
        if args.profile:
            print("profiled pass …", flush=True)
            profile = cProfile.Profile()
            one_pass(config, domains, args, queries, profile)
    report(args, 5, passes)
    if profile is not None:
        print_profile(profile)


if __name__ == "__main__":
    main()
