"""The [dns] section: the records mxdesk plans, the providers that publish them, the check."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxdesk.configread import Listen, Reader, host_ports

MTA_STS_MODES = ("", "enforce", "testing", "none")
# Each provider type's options: name -> (kind, required).
PROVIDER_OPTIONS: dict[str, dict[str, tuple[type, bool]]] = {
    "rfc2136": {
        "server": (str, True),
        "key_file": (str, False),
        "key_credential": (str, False),
        "timeout": (float, False),
    },
    "powerdns": {
        "url": (str, True),
        "server_id": (str, False),
        "api_key_file": (str, False),
        "api_key_credential": (str, False),
        "timeout": (float, False),
    },
    "lexicon": {
        "provider": (str, True),
        "credentials_file": (str, False),
        "credentials_credential": (str, False),
    },
    "manual": {},
}


# Where each type finds its secret: a file, or the name of a systemd credential.
SECRET_OPTIONS = {
    "rfc2136": ("key_file", "key_credential"),
    "powerdns": ("api_key_file", "api_key_credential"),
}


@dataclass(frozen=True)
class ProviderConfig:
    """One DNS provider: its name, type and that type's options."""

    name: str
    type: str
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class DnsConfig:
    mx_hosts: tuple[tuple[int, str], ...] = ()  # (priority, host); () = 10 mx.<base_domain>
    mx_addresses: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ttl: int = 3600
    spf: str = "v=spf1 mx -all"
    dmarc: str = "v=DMARC1; p=quarantine; adkim=s; aspf=s"
    dmarc_rua: str = ""
    tlsrpt_rua: str = ""
    mta_sts: str = ""
    zones: tuple[tuple[str, str], ...] = ()
    providers: tuple[ProviderConfig, ...] = ()
    check_interval: float = 15.0
    check_timeout: float = 3.0
    resolvers: tuple[Listen, ...] = ()
    nameserver_addresses: tuple[tuple[str, tuple[Listen, ...]], ...] = ()
    notify_from: str = ""
    activation_template: Path | None = None
    recheck_interval: float = 3600.0  # seconds between two drift checks of an active domain
    admin_address: str = ""  # also told of drift in zones mxdesk cannot publish to
    # A zone mxdesk publishes to where own domains' DKIM keys live behind CNAMEs ("" = off).
    dkim_zone: str = ""

    def zone_of(self, name: str) -> tuple[str, ProviderConfig | None]:
        """The configured zone holding name (the longest that does) and the provider that
        publishes it; no provider when the zone is not configured ("") or is `manual`: its
        records are published by hand."""
        name = name.lower().rstrip(".")
        held = [z for z, _ in self.zones if name == z or name.endswith("." + z)]
        if not held:
            return "", None
        zone = max(held, key=len)
        name_of = dict(self.zones)[zone]
        provider = next((p for p in self.providers if p.name == name_of), None)
        return zone, provider if provider is not None and provider.type != "manual" else None


def _domain_ok(name: str) -> bool:
    labels = name.split(".")
    return len(labels) >= 2 and all(
        0 < len(p) <= 63 and all(c.isalnum() or c in "-_" for c in p) for p in labels
    )


def _mx_hosts(raw: Any, errors: list[str]) -> tuple[tuple[int, str], ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        errors.append('dns.mx_hosts: expected a list like ["mx.helpdesk.example"]')
        return ()
    hosts = []
    for item in raw:
        prio, _, host = item.strip().rpartition(" ")
        host = host.lower().rstrip(".")
        if (prio and not prio.strip().isdigit()) or not _domain_ok(host):
            errors.append(f'dns.mx_hosts: {item!r} is not "host" or "priority host"')
            continue
        hosts.append((int(prio) if prio else 10, host))
    return tuple(hosts)


def _string_map(raw: Any, key: str, errors: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        errors.append(f"{key}: expected a table")
        return {}
    return {str(k).lower().rstrip("."): v for k, v in raw.items()}


def _providers(raw: Any, errors: list[str]) -> tuple[ProviderConfig, ...]:
    result = []
    for name, table in sorted(_string_map(raw, "dns.providers", errors).items()):
        key = f"dns.providers.{name}"
        if not isinstance(table, dict):
            errors.append(f"{key}: expected a table with a type")
            continue
        r = Reader(table, key, errors)
        kind = r.get("type", str, "")
        if kind not in PROVIDER_OPTIONS:
            errors.append(f"{key}.type: {kind!r} is not one of {', '.join(PROVIDER_OPTIONS)}")
            continue
        options = []
        for option, (option_kind, required) in PROVIDER_OPTIONS[kind].items():
            if required and option not in table:
                errors.append(f"{r.key(option)}: required for a {kind} provider")
            value = r.get(option, option_kind, None)
            if value is not None:
                options.append((option, value))
        secret = SECRET_OPTIONS.get(kind)
        if secret and not any(table.get(option) for option in secret):
            errors.append(f"{key}: set {secret[0]} (or {secret[1]}, a systemd credential)")
        r.finish()
        result.append(ProviderConfig(name, kind, tuple(options)))
    return tuple(result)


def parse_dns(table: dict[str, Any], base_domain: str, errors: list[str]) -> DnsConfig:
    d = Reader(table, "dns", errors)
    for key in ("mx_hosts", "mx_addresses", "zones", "providers", "resolvers"):
        d.seen.add(key)
    d.seen.add("nameserver_addresses")
    # Not set: mx.<base_domain>, not checked here (a bad base_domain is its own error).
    mx_hosts = _mx_hosts(table["mx_hosts"], errors) if "mx_hosts" in table else ()
    mx_addresses = []
    for host, addrs in sorted(
        _string_map(table.get("mx_addresses", {}), "dns.mx_addresses", errors).items()
    ):
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            errors.append(f'dns.mx_addresses.{host}: expected a list like ["192.0.2.10"]')
            continue
        canonical = []
        for address in addrs:
            try:
                # As servers print it (2001:db8::10), so checks compare like with like.
                canonical.append(str(ipaddress.ip_address(address.strip())))
            except ValueError:
                errors.append(
                    f"dns.mx_addresses.{host}: {address!r} is not an IPv4 or IPv6 address"
                )
        mx_addresses.append((host, tuple(canonical)))
    providers = _providers(table.get("providers", {}), errors)
    names = {p.name for p in providers}
    zones = []
    for zone, provider in sorted(_string_map(table.get("zones", {}), "dns.zones", errors).items()):
        if not isinstance(provider, str) or (provider not in names and provider != "manual"):
            errors.append(
                f"dns.zones.{zone}: {provider!r} is not a provider in [dns.providers]"
                f" (configured: {', '.join(sorted(names)) or 'none'})"
            )
            continue
        zones.append((zone, provider))
    if any(p == "manual" for _, p in zones) and "manual" not in names:
        providers = (*providers, ProviderConfig("manual", "manual"))
    ns_addresses = []
    for ns, where in sorted(
        _string_map(
            table.get("nameserver_addresses", {}), "dns.nameserver_addresses", errors
        ).items()
    ):
        items = where if isinstance(where, list) else [where]
        ns_addresses.append((ns, host_ports(items, f"dns.nameserver_addresses.{ns}", errors)))
    mta_sts = d.get("mta_sts", str, "")
    if mta_sts not in MTA_STS_MODES:
        errors.append(f'dns.mta_sts: {mta_sts!r} is not "", enforce, testing or none')
    ttl = d.positive("ttl", int, DnsConfig.ttl)
    config = DnsConfig(
        mx_hosts=mx_hosts or ((10, f"mx.{base_domain}"),),
        mx_addresses=tuple(mx_addresses),
        ttl=ttl,
        spf=d.get("spf", str, DnsConfig.spf),
        dmarc=d.get("dmarc", str, DnsConfig.dmarc),
        dmarc_rua=d.get("dmarc_rua", str, ""),
        tlsrpt_rua=d.get("tlsrpt_rua", str, ""),
        mta_sts=mta_sts,
        zones=tuple(zones),
        providers=providers,
        check_interval=d.positive("check_interval", float, DnsConfig.check_interval),
        check_timeout=d.positive("check_timeout", float, DnsConfig.check_timeout),
        resolvers=host_ports(table.get("resolvers", []), "dns.resolvers", errors),
        nameserver_addresses=tuple(ns_addresses),
        notify_from=d.get("notify_from", str, "") or f"postmaster@{base_domain}",
        activation_template=d.path("activation_template", None),
        recheck_interval=d.positive("recheck_interval", float, DnsConfig.recheck_interval),
        admin_address=d.get("admin_address", str, ""),
        dkim_zone=d.get("dkim_zone", str, "").lower().rstrip("."),
    )
    if not config.spf.startswith("v=spf1"):
        errors.append(f"dns.spf: {config.spf!r} does not start with v=spf1")
    if not config.dmarc.startswith("v=DMARC1"):
        errors.append(f"dns.dmarc: {config.dmarc!r} does not start with v=DMARC1")
    for key in ("dmarc_rua", "tlsrpt_rua"):
        value = getattr(config, key)
        if value and not value.startswith(("mailto:", "https:")):
            errors.append(f"dns.{key}: {value!r} must start with mailto: or https:")
    if config.admin_address and "@" not in config.admin_address.strip("@"):
        errors.append(f"dns.admin_address: {config.admin_address!r} is not an e-mail address")
    if config.dkim_zone and config.zone_of(config.dkim_zone)[1] is None:
        errors.append(
            f"dns.dkim_zone: {config.dkim_zone} is not in a zone a provider publishes to"
            " (see [dns.zones])"
        )
    if config.activation_template and not config.activation_template.is_file():
        errors.append(f"dns.activation_template: {config.activation_template} does not exist")
    d.finish()
    return config
