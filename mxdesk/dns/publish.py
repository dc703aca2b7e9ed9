"""Publishing a record plan: read what the provider has, change only what differs, at once."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from mxdesk.dns.providers import ProviderError, RRset, build
from mxdesk.dns.records import Record, RecordPlan, normalise
from mxdesk.dns.settings import DnsConfig

log = logging.getLogger("mxdesk.dns.publish")
RETRY_DELAYS = (1.0, 2.0, 4.0)


@dataclass(frozen=True)
class Published:
    """What publishing did in one zone: the RRsets it replaced (none: nothing to change);
    provider "" means no provider serves the zone and the records wait for a person."""

    zone: str
    provider: str
    changed: tuple[RRset, ...]


def desired_rrset(records: list[Record], current: RRset | None) -> RRset | None:
    """The RRset that holds records and keeps what they do not own (another TXT at the name,
    e.g. a site verification); None when current holds exactly that already."""
    first = records[0]
    kept = [v for v in (current.values if current else ()) if not any(r.owns(v) for r in records)]
    values = tuple(kept + [r.value for r in records])
    if current is not None and sorted(normalise(first.type, v) for v in current.values) == sorted(
        normalise(first.type, v) for v in values
    ):
        return None
    return RRset(first.name, first.type, first.ttl, values)


def by_zone(
    records: Iterable[Record], dns: DnsConfig
) -> dict[tuple[str, str], dict[tuple[str, str], list[Record]]]:
    """(zone, provider name) -> (name, type) -> records; zone "" for names no zone holds."""
    zones: dict[tuple[str, str], dict[tuple[str, str], list[Record]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for record in records:
        zone, provider = dns.zone_of(record.name)
        key = (zone, provider.name if provider else "")
        zones[key][(record.name, record.type)].append(record)
    return zones


async def publish_zone(
    dns: DnsConfig, zone: str, provider_name: str, groups: dict[tuple[str, str], list[Record]]
) -> Published:
    if not provider_name:
        return Published(zone, "", ())
    config = next(p for p in dns.providers if p.name == provider_name)
    provider = build(config)
    changes = []
    for name in sorted({n for n, _ in groups}):
        current = {r.type: r for r in await provider.read(zone, name)}
        for (rname, rtype), records in sorted(groups.items()):
            if rname == name:
                change = desired_rrset(records, current.get(rtype))
                if change is not None:
                    changes.append(change)
    if changes:
        await provider.replace(zone, changes)
        log.info(
            "zone=%s provider=%s replaced %s",
            zone,
            provider_name,
            ", ".join(f"{c.name} {c.type}" for c in changes),
        )
    return Published(zone, provider_name, tuple(changes))


async def publish(
    plan: RecordPlan, dns: DnsConfig, retry_delays: tuple[float, ...] = RETRY_DELAYS
) -> list[Published]:
    """Publishes the plan through each zone's provider; a temporary failure is retried after
    each of retry_delays, then raised like a permanent one (ProviderError)."""
    results = []
    for (zone, provider), groups in sorted(by_zone(plan.records, dns).items()):
        for attempt in range(len(retry_delays) + 1):
            try:
                results.append(await publish_zone(dns, zone, provider, groups))
                break
            except ProviderError as exc:
                if not exc.temporary or attempt == len(retry_delays):
                    raise
                log.warning("zone=%s %s: retrying in %.0fs", zone, exc, retry_delays[attempt])
                await asyncio.sleep(retry_delays[attempt])
    return results


async def withdraw(records: Iterable[Record], dns: DnsConfig) -> list[Published]:
    """Deletes records from the zones a provider publishes (what else is at their names
    stays); records in other zones are left for a person. Raises ProviderError."""
    results = []
    for (zone, provider_name), groups in sorted(by_zone(records, dns).items()):
        if not provider_name:
            results.append(Published(zone, "", ()))
            continue
        config = next(p for p in dns.providers if p.name == provider_name)
        provider = build(config)
        changes = []
        for (name, rtype), owned in sorted(groups.items()):
            current = next((r for r in await provider.read(zone, name) if r.type == rtype), None)
            if current is None:
                continue
            kept = tuple(v for v in current.values if not any(r.owns(v) for r in owned))
            if kept != current.values:
                changes.append(RRset(name, rtype, current.ttl, kept))
        if changes:
            await provider.replace(zone, changes)
            log.info(
                "zone=%s provider=%s removed %s",
                zone,
                provider_name,
                ", ".join(f"{c.name} {c.type}" for c in changes),
            )
        results.append(Published(zone, provider_name, tuple(changes)))
    return results
