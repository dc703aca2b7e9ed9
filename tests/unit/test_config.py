import dataclasses
import tomllib
from pathlib import Path

import pytest

from mxdesk import config as cfg
from mxdesk.dns.settings import DnsConfig

ROOT = Path(__file__).resolve().parents[2]


def test_example_file_is_valid_and_matches_defaults() -> None:
    loaded = cfg.load(ROOT / "config.example.toml")
    assert loaded.general == cfg.parse({}).general
    assert loaded.gateway == cfg.parse({}).gateway
    assert loaded.store == cfg.parse({}).store
    assert loaded.inbound_retry == cfg.RetryConfig()
    assert loaded.outbound_retry == cfg.OUTBOUND_RETRY
    assert loaded.submission == cfg.parse({}).submission
    assert loaded.outbound == cfg.parse({}).outbound
    assert loaded.dkim == cfg.parse({}).dkim
    assert loaded.dns == cfg.parse({}).dns


def test_every_setting_is_in_the_example_and_nothing_else() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    sections = {
        "mxdesk": (example["mxdesk"], cfg.GeneralConfig),
        "gateway": (
            {k: v for k, v in example["gateway"].items() if not isinstance(v, dict)},
            cfg.GatewayConfig,
        ),
        "gateway.inbound_retry": (example["gateway"]["inbound_retry"], cfg.RetryConfig),
        "gateway.outbound_retry": (example["gateway"]["outbound_retry"], cfg.RetryConfig),
        "gateway.submission": (example["gateway"]["submission"], cfg.SubmissionConfig),
        "gateway.outbound": (example["gateway"]["outbound"], cfg.OutboundConfig),
        "store": (example["store"], cfg.StoreConfig),
        "dkim": (example["dkim"], cfg.DkimConfig),
        # Provider tables are examples in comments (a table is only there when it is used).
        "dns": ({**example["dns"], "providers": {}}, DnsConfig),
    }
    for name, (table, kind) in sections.items():
        assert set(table) == {f.name for f in dataclasses.fields(kind)}, name


def test_errors_name_their_keys() -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse(
            {
                "mxdesk": {"base_domain": "not a domain", "colour": "blue"},
                "gateway": {
                    "max_recipients": 0,
                    "listen": ["nowhere"],
                    "idle_timeout": "long",
                    "inbound_retry": {"factor": 0.5},
                    "outbound": {"tls": "always", "nameservers": ["x"]},
                    "submission": {"senders": {"helpdesk": "marca"}},
                },
                "extra": {},
            }
        )
    text = "\n".join(info.value.errors)
    for key in (
        "mxdesk.base_domain",
        "mxdesk.colour: unknown key",
        "gateway.max_recipients",
        "gateway.listen",
        "gateway.idle_timeout",
        "gateway.inbound_retry.factor",
        "gateway.outbound.tls",
        "gateway.outbound.nameservers",
        "gateway.submission.senders.helpdesk",
        "extra: unknown section",
    ):
        assert key in text


def test_paths_follow_state_dir() -> None:
    c = cfg.parse({"mxdesk": {"state_dir": "/srv/mx", "runtime_dir": "/run/x"}})
    assert c.gateway.spool_path == Path("/srv/mx/spool.db")
    assert c.store.database == Path("/srv/mx/tickets.db")
    assert c.store.lmtp_socket == Path("/run/x/store/lmtp.sock")
    assert c.general.host_name == "mx.helpdesk.example"


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(cfg.ConfigError, match=r"gateway\.tls_cert"):
        cfg.parse({"gateway": {"tls_cert": str(cert)}})


def test_bad_toml_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[mxdesk\n")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(path)
