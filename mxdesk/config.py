"""The configuration file: TOML parsed once into frozen dataclasses; errors name their keys."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxdesk.channelconfig import ChannelsConfig, parse_channels
from mxdesk.configlines import BOM, locate, toml_error
from mxdesk.configread import Listen, Problem, Reader, did_you_mean, host_ports
from mxdesk.configtls import read_settings
from mxdesk.dns.settings import DnsConfig, parse_dns
from mxdesk.inboundauthconfig import InboundAuthConfig, parse_inbound_auth

DEFAULT_CONFIG_PATH = Path("/etc/mxdesk/mxdesk.toml")
CONFIG_ENV = "MXDESK_CONFIG"
LANGUAGES = ("pt", "en")


class ConfigError(Exception):
    """One or more configuration errors; each names the key it concerns (and, read from a
    file, the file and line). as_read: the file's settings, defaults for the wrong ones, for
    check-config's warnings; nothing runs with it."""

    def __init__(self, problems: Sequence[Problem | str], as_read: Config | None = None) -> None:
        self.problems = [p if isinstance(p, Problem) else Problem.parse(p) for p in problems]
        self.as_read = as_read
        self.errors = [str(p) for p in self.problems]
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class GeneralConfig:
    base_domain: str = "helpdesk.example"
    # The daemons refuse the example base domain unless this says it is meant (tests, labs).
    allow_example_domain: bool = False
    hostname: str = ""
    state_dir: Path = Path("/var/lib/mxdesk")
    runtime_dir: Path = Path("/run/mxdesk")
    reserved_labels_file: Path | None = None
    log_level: str = "info"
    secrets_key_file: Path = Path("/var/lib/mxdesk/secrets.key")
    secrets_credential: str = "mxdesk-secrets"
    language: str = "pt"
    # The daemons' Unix user: files the CLI makes as root are given to it ("" = nobody else:
    # the CLI and the daemons run as the same user, as in a demo or a test).
    user: str = "mxdesk"

    @property
    def host_name(self) -> str:
        return self.hostname or f"mx.{self.base_domain}"

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"


@dataclass(frozen=True)
class GatewayConfig:
    listen: tuple[Listen, ...] = (Listen("0.0.0.0", 25),)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_client: int = 20
    idle_timeout: float = 300.0
    session_timeout: float = 1800.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    postmaster_tenant: str = ""
    spool_path: Path = Path("/var/lib/mxdesk/spool.db")
    history_days: int = 30
    # MAIL FROM is answered 452 4.3.1 while the spool's filesystem has less free space (MiB).
    min_free_mb: int = 100
    # Processes that serve the SMTP sessions (MX and submission); 0: the gateway's own.
    listener_processes: int = 0


@dataclass(frozen=True)
class RetryConfig:
    initial: float = 30.0
    maximum: float = 1800.0
    factor: float = 2.0
    hold_after: float = 5 * 24 * 3600.0
    concurrency: int = 32


@dataclass(frozen=True)
class SubmissionConfig:
    socket: Path = Path("/run/mxdesk/gateway/submit.sock")
    socket_group: str = ""
    # Unix user name -> tenant slugs it may send for ("*" = every tenant).
    senders: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class OutboundConfig:
    send_delay: float = 10.0
    smtp_port: int = 25
    nameservers: tuple[Listen, ...] = ()
    per_destination: int = 4
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    tls: str = "may"


OUTBOUND_RETRY = RetryConfig(
    initial=300.0, maximum=4 * 3600.0, factor=2.0, hold_after=5 * 24 * 3600.0, concurrency=20
)


@dataclass(frozen=True)
class StoreConfig:
    lmtp_socket: Path = Path("/run/mxdesk/store/lmtp.sock")
    database: Path = Path("/var/lib/mxdesk/tickets.db")
    socket_group: str = ""
    # The same message arriving again (a sender's retry after a lost 250, two mailboxes of
    # one tenant, the MX and a channel) within this many days is filed once.
    duplicate_window_days: float = 7.0


@dataclass(frozen=True)
class DkimConfig:
    keys_dir: Path = Path("/var/lib/mxdesk/dkim")
    ed25519: bool = False
    # Rotation: a new key signs once every authoritative server has served it this long; the
    # old one stays published retire_after more; rotate_every 0 = only by hand.
    publish_lag: float = 4 * 3600.0
    retire_after: float = 4 * 86400.0
    rotate_every: float = 180 * 86400.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: Listen | None = None  # the gateway's Prometheus endpoint (None: off)


@dataclass(frozen=True)
class Config:
    general: GeneralConfig = field(default_factory=GeneralConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    inbound_retry: RetryConfig = field(default_factory=RetryConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    outbound_retry: RetryConfig = OUTBOUND_RETRY
    inbound_auth: InboundAuthConfig = field(default_factory=InboundAuthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    source: Path | None = None


def _listen(raw: Any, key: str, errors: list[str]) -> tuple[Listen, ...]:
    if isinstance(raw, list) and not raw:
        errors.append(f'{key}: expected a non-empty list of "host:port" strings')
    return host_ports(raw, key, errors) or GatewayConfig.listen


def _retry(table: Any, key: str, default: RetryConfig, errors: list[str]) -> RetryConfig:
    r = Reader(table if isinstance(table, dict) else {}, key, errors)
    retry = RetryConfig(
        initial=r.positive("initial", float, default.initial),
        maximum=r.positive("maximum", float, default.maximum),
        factor=r.positive("factor", float, default.factor),
        hold_after=r.positive("hold_after", float, default.hold_after),
        concurrency=r.positive("concurrency", int, default.concurrency),
    )
    if retry.factor < 1:
        errors.append(f"{key}.factor: must be at least 1")
    r.finish()
    return retry


def _senders(raw: Any, key: str, errors: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(raw, dict):
        errors.append(f'{key}: expected a table of user = ["tenant", …]')
        return ()
    result = []
    for user, tenants in sorted(raw.items()):
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            errors.append(f'{key}.{user}: expected a list of tenant slugs (or ["*"])')
            continue
        result.append((user, tuple(tenants)))
    return tuple(result)


def _label_ok(name: str) -> bool:
    return 0 < len(name) <= 63 and all(c.isalnum() or c == "-" for c in name)


def parse(data: dict[str, Any], source: Path | None = None) -> Config:
    """Builds a Config from a parsed TOML document; raises ConfigError listing every problem."""
    errors: list[str] = []

    def table(name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            errors.append(f"{name}: expected a table")
            return {}
        return value

    sections = {"mxdesk", "gateway", "store", "dkim", "dns", "metrics", "channels", "oauth2"}
    for extra in sorted(set(data) - sections):
        errors.append(f"{extra}: unknown section{did_you_mean(extra, sections)}")

    g = Reader(table("mxdesk"), "mxdesk", errors)
    base = g.get("base_domain", str, GeneralConfig.base_domain).lower().rstrip(".")
    if not all(_label_ok(p) for p in base.split(".")) or "." not in base:
        errors.append(f"mxdesk.base_domain: {base!r} is not a domain name (e.g. helpdesk.example)")
    state_dir = g.path("state_dir", GeneralConfig.state_dir) or GeneralConfig.state_dir
    runtime_dir = g.path("runtime_dir", GeneralConfig.runtime_dir) or GeneralConfig.runtime_dir
    log_level = g.get("log_level", str, "info")
    language = g.get("language", str, GeneralConfig.language)
    if language not in LANGUAGES:
        errors.append(f"mxdesk.language: {language!r} is not one of {', '.join(LANGUAGES)}")
    if log_level not in ("debug", "info", "warning", "error"):
        errors.append(f"mxdesk.log_level: {log_level!r} is not debug, info, warning or error")
    general = GeneralConfig(
        base_domain=base,
        allow_example_domain=g.get("allow_example_domain", bool, False),
        hostname=g.get("hostname", str, ""),
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        reserved_labels_file=g.path("reserved_labels_file", None),
        log_level=log_level,
        secrets_key_file=g.path("secrets_key_file", None) or state_dir / "secrets.key",
        secrets_credential=g.get("secrets_credential", str, GeneralConfig.secrets_credential),
        language=language,
        user=g.get("user", str, GeneralConfig.user),
    )
    if general.reserved_labels_file and not general.reserved_labels_file.is_file():
        errors.append(f"mxdesk.reserved_labels_file: {general.reserved_labels_file} does not exist")
    g.finish()

    gw_table = dict(table("gateway"))
    retry_table = gw_table.pop("inbound_retry", {})
    out_retry_table = gw_table.pop("outbound_retry", {})
    sub_table = gw_table.pop("submission", {})
    out_table = gw_table.pop("outbound", {})
    auth_table = gw_table.pop("inbound_auth", {})
    w = Reader(gw_table, "gateway", errors)
    w.seen.update(
        ("listen", "inbound_retry", "outbound_retry", "submission", "outbound", "inbound_auth")
    )
    listen = _listen(gw_table.get("listen", ["0.0.0.0:25"]), "gateway.listen", errors)
    tls_cert, tls_key = read_settings(w)
    gateway = GatewayConfig(
        listen=listen,
        max_message_size=w.positive("max_message_size", int, GatewayConfig.max_message_size),
        max_recipients=w.positive("max_recipients", int, GatewayConfig.max_recipients),
        max_connections=w.positive("max_connections", int, GatewayConfig.max_connections),
        max_connections_per_client=w.positive(
            "max_connections_per_client", int, GatewayConfig.max_connections_per_client
        ),
        idle_timeout=w.positive("idle_timeout", float, GatewayConfig.idle_timeout),
        session_timeout=w.positive("session_timeout", float, GatewayConfig.session_timeout),
        tls_cert=tls_cert,
        tls_key=tls_key,
        postmaster_tenant=w.get("postmaster_tenant", str, ""),
        spool_path=w.path("spool_path", state_dir / "spool.db") or state_dir / "spool.db",
        history_days=w.positive("history_days", int, GatewayConfig.history_days),
        min_free_mb=w.get("min_free_mb", int, GatewayConfig.min_free_mb),
        listener_processes=w.get("listener_processes", int, GatewayConfig.listener_processes),
    )
    if gateway.min_free_mb < 0:
        errors.append("gateway.min_free_mb: must be 0 or more MiB")
    if not 0 <= gateway.listener_processes <= 64:
        errors.append("gateway.listener_processes: must be 0 (none) to 64")
    w.finish()
    inbound_auth = parse_inbound_auth(auth_table, errors)

    retry = _retry(retry_table, "gateway.inbound_retry", RetryConfig(), errors)
    outbound_retry = _retry(out_retry_table, "gateway.outbound_retry", OUTBOUND_RETRY, errors)

    sub = Reader(sub_table if isinstance(sub_table, dict) else {}, "gateway.submission", errors)
    sub.seen.add("senders")
    submission = SubmissionConfig(
        socket=sub.path("socket", None) or runtime_dir / "gateway" / "submit.sock",
        socket_group=sub.get("socket_group", str, ""),
        senders=_senders(sub.table.get("senders", {}), "gateway.submission.senders", errors),
    )
    if len(str(submission.socket)) > 100:
        errors.append(f"gateway.submission.socket: {submission.socket} is too long for a socket")
    sub.finish()

    o = Reader(out_table if isinstance(out_table, dict) else {}, "gateway.outbound", errors)
    o.seen.add("nameservers")
    defaults = OutboundConfig()
    outbound = OutboundConfig(
        send_delay=o.get("send_delay", float, defaults.send_delay),
        smtp_port=o.positive("smtp_port", int, defaults.smtp_port),
        nameservers=host_ports(
            o.table.get("nameservers", []), "gateway.outbound.nameservers", errors
        ),
        per_destination=o.positive("per_destination", int, defaults.per_destination),
        connect_timeout=o.positive("connect_timeout", float, defaults.connect_timeout),
        command_timeout=o.positive("command_timeout", float, defaults.command_timeout),
        tls=o.get("tls", str, defaults.tls),
    )
    if outbound.send_delay < 0:
        errors.append("gateway.outbound.send_delay: must be 0 or more seconds")
    if outbound.tls not in ("may", "none"):
        errors.append(f"gateway.outbound.tls: {outbound.tls!r} is not may or none")
    o.finish()

    s = Reader(table("store"), "store", errors)
    lmtp_socket = s.path("lmtp_socket", runtime_dir / "store" / "lmtp.sock")
    store = StoreConfig(
        lmtp_socket=lmtp_socket or runtime_dir / "store" / "lmtp.sock",
        database=s.path("database", state_dir / "tickets.db") or state_dir / "tickets.db",
        socket_group=s.get("socket_group", str, ""),
        duplicate_window_days=s.get(
            "duplicate_window_days", float, StoreConfig.duplicate_window_days
        ),
    )
    if store.duplicate_window_days < 0:
        errors.append("store.duplicate_window_days: must be 0 (off) or more days")
    if len(str(store.lmtp_socket)) > 100:
        errors.append(f"store.lmtp_socket: {store.lmtp_socket} is too long for a Unix socket")
    s.finish()

    k = Reader(table("dkim"), "dkim", errors)
    dkim = DkimConfig(
        keys_dir=k.path("keys_dir", state_dir / "dkim") or state_dir / "dkim",
        ed25519=k.get("ed25519", bool, False),
        publish_lag=k.duration("publish_lag", DkimConfig.publish_lag),
        retire_after=k.duration("retire_after", DkimConfig.retire_after),
        rotate_every=k.duration("rotate_every", DkimConfig.rotate_every),
    )
    k.finish()

    m = Reader(table("metrics"), "metrics", errors)
    metrics_at = m.get("listen", str, "")
    found = host_ports([metrics_at], "metrics.listen", errors) if metrics_at else ()
    metrics = MetricsConfig(found[0] if found else None)
    m.finish()

    dns = parse_dns(table("dns"), base, errors)
    channels = parse_channels(table("channels"), data.get("oauth2", {}), errors)

    config = Config(
        general=general,
        gateway=gateway,
        inbound_retry=retry,
        submission=submission,
        outbound=outbound,
        outbound_retry=outbound_retry,
        inbound_auth=inbound_auth,
        store=store,
        dkim=dkim,
        metrics=metrics,
        dns=dns,
        channels=channels,
        source=source,
    )
    if errors:
        raise ConfigError(errors, as_read=config)
    return config


def config_path(explicit: str | None) -> Path:
    """The file to read: --config, else $MXDESK_CONFIG, else the default path."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load(path: Path) -> Config:
    """Reads and validates the configuration file at path; errors carry its name and lines."""
    try:
        text = path.read_bytes().decode("utf-8").removeprefix(BOM)
    except OSError as exc:
        reason = f"cannot read the configuration file ({exc.strerror})"
        raise ConfigError([Problem("", reason, path)]) from None
    except UnicodeDecodeError as exc:
        reason = f"not valid TOML: not UTF-8 at byte {exc.start}"
        raise ConfigError([Problem("", reason, path)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([toml_error(path, exc)]) from None
    try:
        return parse(data, source=path)
    except ConfigError as exc:
        raise ConfigError(locate(exc.problems, path, text), exc.as_read) from None
