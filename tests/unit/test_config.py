import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mxdesk import config as cfg
from mxdesk import configcheck, ownership
from mxdesk.channelconfig import ChannelsConfig
from mxdesk.cli import main
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
    assert loaded.metrics == cfg.parse({}).metrics
    assert loaded.channels == cfg.parse({}).channels
    assert loaded.inbound_auth == cfg.InboundAuthConfig()


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
        "gateway.inbound_auth": (example["gateway"]["inbound_auth"], cfg.InboundAuthConfig),
        "store": (example["store"], cfg.StoreConfig),
        "dkim": (example["dkim"], cfg.DkimConfig),
        "metrics": (example["metrics"], cfg.MetricsConfig),
        # [oauth2.NAME] tables are examples in comments, like the DNS providers.
        "channels": ({**example["channels"], "oauth2": ()}, ChannelsConfig),
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


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "mxdesk.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    return [str(p).removeprefix(f"{path}:") for p in info.value.problems]


def test_an_unknown_key_names_file_and_line_and_the_closest_key(tmp_path: Path) -> None:
    path = tmp_path / "mxdesk.toml"
    path.write_text('[mxdesk]\nbase_domain = "x.example"\n\n[gateway]\nmax_mesage_size = 1\n')
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert info.value.errors == [
        f"{path}:5: gateway.max_mesage_size: unknown key (did you mean max_message_size?)"
    ]
    assert [p.as_json() for p in info.value.problems] == [
        {
            "file": str(path),
            "line": 5,
            "key": "gateway.max_mesage_size",
            "message": "unknown key (did you mean max_message_size?)",
        }
    ]


def test_every_error_has_its_line_in_the_order_of_the_file(tmp_path: Path) -> None:
    text = """\
# comment [gateway]
[mxdesk]
log_level = "loud"
banana = 1

[gateway]
max_recipients = "ten"
listen = [
  "127.0.0.1:25",  # a comment with = and [brackets]
  "nowhere",
]
note = \"\"\"
[store]
database = 1
\"\"\"

[gateway.outbound]
tls = "always"

[dns]
zones = { "helpdesk.example" = "nowhere" }

[gatway]
"""
    assert _problems(tmp_path, text) == [
        "3: mxdesk.log_level: 'loud' is not debug, info, warning or error",
        "4: mxdesk.banana: unknown key",
        "7: gateway.max_recipients: expected an integer, got 'ten'",
        '8: gateway.listen: \'nowhere\' is not "host:port" (e.g. "127.0.0.1:2525")',
        "12: gateway.note: unknown key",
        "18: gateway.outbound.tls: 'always' is not may or none",
        "21: dns.zones.helpdesk.example: 'nowhere' is not a provider in [dns.providers]"
        " (configured: none)",
        "23: gatway: unknown section (did you mean gateway?)",
    ]


def test_dotted_keys_and_a_missing_key_at_its_table(tmp_path: Path) -> None:
    text = 'gateway.max_recipients = 0\n\n[store]\n"lmtp_socket" = "/run/x"\n[dkim]\ned2551 = 1\n'
    assert _problems(tmp_path, text) == [
        "1: gateway.max_recipients: must be greater than 0, got 0",
        "6: dkim.ed2551: unknown key (did you mean ed25519?)",
    ]
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    # tls_key is not written: the error is at the [gateway] table that lacks it.
    assert _problems(tmp_path, f'\n[gateway]\ntls_cert = "{cert}"\n') == [
        "3: gateway.tls_cert: tls_cert and tls_key must be set together"
    ]
    assert _problems(tmp_path, '[gateway]\ntls_cert = ""\ntls_key = "/nonexistent/key.pem"\n') == [
        "3: gateway.tls_key: tls_cert and tls_key must be set together",
        "3: gateway.tls_key: /nonexistent/key.pem does not exist",
    ]


def test_a_toml_syntax_error_has_its_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, '[mxdesk]\nbase_domain = "x.example"\nlog_level = "info\n')
    assert len(problems) == 1 and problems[0].startswith("3: not valid TOML: "), problems


def test_the_example_domain_is_a_warning_for_check_config_and_refused_by_daemons(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mxdesk.toml"
    path.write_text('[mxdesk]\nlog_level = "info"\nbase_domain = "helpdesk.example"\n')
    config = cfg.load(path)
    message = "base_domain is the example helpdesk.example: set your own domain"
    assert [str(w) for w in configcheck.warnings(config)] == [
        f"{path}:3: mxdesk.base_domain: {message}"
    ]
    refused = configcheck.daemon_errors(config)
    assert [(p.line, p.key) for p in refused] == [(3, "mxdesk.base_domain")]
    assert "allow_example_domain = true" in refused[0].message
    # Not written at all: the default is the example too.
    assert configcheck.warnings(cfg.parse({}))[0].message == message
    allowed = cfg.parse({"mxdesk": {"allow_example_domain": True}})
    assert configcheck.warnings(allowed) == configcheck.daemon_errors(allowed) == []
    own = cfg.parse({"mxdesk": {"base_domain": "suporte.marca.com.br"}})
    assert configcheck.warnings(own) == configcheck.daemon_errors(own) == []


def test_channels_and_oauth2_sections() -> None:
    loaded = cfg.parse(
        {
            "channels": {"poll_interval": 5, "admin_address": "Admin@Helpdesk.example"},
            "oauth2": {"microsoft": {"client_id": "abc"}},
        }
    )
    assert loaded.channels.poll_interval == 5.0
    ms = loaded.channels.provider("microsoft")
    assert ms is not None and ms.token_endpoint.startswith("https://login.microsoftonline.com/")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse(
            {
                "channels": {"idle_heartbeat": 3600, "pol_interval": 1},
                "oauth2": {
                    "test": {"client_id": "x", "token_endpoint": "http://auth.example/t"},
                    "google": {},
                },
            }
        )
    text = str(info.value)
    assert "channels.idle_heartbeat: at most 1680" in text
    assert "channels.pol_interval: unknown key (did you mean poll_interval?)" in text
    assert "oauth2.test.device_endpoint: required" in text
    assert "oauth2.test.token_endpoint: 'http://auth.example/t' is not an https:// URL" in text
    assert "oauth2.google.client_id" in text


def _check_config(path: Path) -> tuple[int, dict[str, Any], list[str]]:
    """`mxdesk check-config` on path: its exit status, what --json prints and the lines it
    prints on stderr without --json."""
    as_json = CliRunner().invoke(main, ["--config", str(path), "check-config", "--json"])
    as_text = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert as_json.exit_code == as_text.exit_code, (as_json.output, as_text.output)
    return as_text.exit_code, json.loads(as_json.stdout), as_text.stderr.splitlines()


def _line(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_the_unchanged_example_without_its_user_gives_the_line_and_the_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A new sysadmin's first check, as root before the mxdesk user exists: the user error had
    # "line": null and the example domain's warning was dropped ("warnings": []).
    def no_such_user(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(ownership.os, "geteuid", lambda: 0)
    monkeypatch.setattr(ownership.pwd, "getpwnam", no_such_user)
    example = ROOT / "config.example.toml"
    code, shown, lines = _check_config(example)
    assert code == 2 and shown["ok"] is False
    user = (
        "the daemons' user 'mxdesk' does not exist: create it ('mxdesk systemd-units --output"
        " DIR' writes DIR/mxdesk.sysusers; 'systemd-sysusers DIR/mxdesk.sysusers' creates the"
        " user) or set [mxdesk] user"
    )
    domain = configcheck.EXAMPLE_MESSAGE
    user_line, domain_line = (
        _line(example, 'user = "mxdesk"'),
        _line(example, 'base_domain = "helpdesk.example"'),
    )
    assert shown["errors"] == [
        {"file": str(example), "line": user_line, "key": "mxdesk.user", "message": user}
    ]
    assert shown["warnings"] == [
        {"file": str(example), "line": domain_line, "key": "mxdesk.base_domain", "message": domain}
    ]
    assert lines == [
        f"mxdesk: {example}:{user_line}: mxdesk.user: {user}",
        f"mxdesk: warning: {example}:{domain_line}: mxdesk.base_domain: {domain}",
    ]


def test_errors_in_the_file_do_not_hide_its_warnings(tmp_path: Path) -> None:
    path = tmp_path / "mxdesk.toml"
    path.write_text('[mxdesk]\nuser = ""\nbase_domain = "helpdesk.example"\nlog_level = "loud"\n')
    code, shown, lines = _check_config(path)
    assert code == 2
    error = "'loud' is not debug, info, warning or error"
    assert shown["errors"] == [
        {"file": str(path), "line": 4, "key": "mxdesk.log_level", "message": error}
    ]
    assert [(w["line"], w["key"]) for w in shown["warnings"]] == [(3, "mxdesk.base_domain")]
    assert lines == [
        f"mxdesk: {path}:4: mxdesk.log_level: {error}",
        f"mxdesk: warning: {path}:3: mxdesk.base_domain: {configcheck.EXAMPLE_MESSAGE}",
    ]


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Seen: a file from a Windows editor gave "bom.toml:1: not valid TOML: Invalid statement".
    path = tmp_path / "bom.toml"
    bom = "\ufeff".encode()
    path.write_bytes(bom + b'[mxdesk]\nbase_domain = "helpdesk.example"\nlog_level = "warning"\n')
    config = cfg.load(path)
    assert config.general.log_level == "warning"
    # Its warnings and errors have their lines, as in a file without the mark.
    assert [(w.line, w.key) for w in configcheck.warnings(config)] == [(2, "mxdesk.base_domain")]
    path.write_bytes(bom + b"[mxdesk]\nlog_levl = 1\n")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert info.value.errors == [
        f"{path}:2: mxdesk.log_levl: unknown key (did you mean log_level?)"
    ]


def test_a_bad_base_domain_is_one_error_not_one_more_for_the_mx_host_made_from_it() -> None:
    # Seen: base_domain = "exa mple.com" also gave "dns.mx_hosts: 'mx.exa mple.com' is not
    # "host" or "priority host"", a key the file did not set.
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({"mxdesk": {"base_domain": "exa mple.com"}})
    assert info.value.errors == [
        "mxdesk.base_domain: 'exa mple.com' is not a domain name (e.g. helpdesk.example)"
    ]
    # mx_hosts written in the file is checked as before.
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({"mxdesk": {"base_domain": "marca.example"}, "dns": {"mx_hosts": ["mx x"]}})
    assert info.value.errors == ['dns.mx_hosts: \'mx x\' is not "host" or "priority host"']
