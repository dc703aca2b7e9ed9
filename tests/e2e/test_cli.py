"""The CLI and the daemons as a sysadmin runs them: from a config file, in subprocesses."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from daemons import MXDESK, Daemon, cli, provision, write_config


@pytest.fixture
def conf(short_tmp: Path) -> Path:
    return write_config(short_tmp)


def test_provisioning_round_trip(conf: Path) -> None:
    provision(conf)
    tenants = json.loads(cli(conf, "tenant", "list", "--json").stdout)
    [tenant] = tenants
    assert (tenant["slug"], tenant["owner"], tenant["plan"]) == (
        "marca",
        "owner@marca.example",
        "plus",
    )
    # Times in JSON are ISO 8601 in UTC everywhere, as in the ticket commands.
    assert datetime.fromisoformat(tenant["created"]).utcoffset() == timedelta(0)
    boxes = {m["address"]: m for m in json.loads(cli(conf, "mailbox", "list", "--json").stdout)}
    assert boxes["marca@helpdesk.example"]["default_inbox"] is True
    assert boxes["suporte@marca.helpdesk.example"]["name"] == "Suporte Marca"
    domains = json.loads(cli(conf, "domain", "list", "--json").stdout)
    assert [(d["name"], d["status"]) for d in domains] == [("marca.helpdesk.example", "active")]
    table = cli(conf, "mailbox", "list").stdout
    assert "suporte@marca.helpdesk.example" in table and "Suporte Marca" in table
    # init is idempotent and keeps what is there.
    cli(conf, "init")
    assert len(json.loads(cli(conf, "tenant", "list", "--json").stdout)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["domain", "add", "www", "--tenant", "marca"], "reserved"),
        (["domain", "add", "Marca!", "--tenant", "marca"], "(e.g. 'marca')"),
        (["domain", "add", "marca", "--tenant", "marca"], "already taken"),
        (["domain", "add", "x", "--tenant", "ninguem"], "no tenant 'ninguem'"),
        (["domain", "add", "barata", "--tenant", "barata"], "basic plan"),
        (["tenant", "add", "abuse", "--owner", "a@b.example"], "reserved"),
        (["tenant", "add", "nova", "--owner", "not-an-address"], "owner"),
        (["mailbox", "add", "x@fora.example", "--name", "X"], "not a domain of any tenant"),
    ],
)
def test_errors_are_one_line_and_non_zero(conf: Path, args: list[str], message: str) -> None:
    provision(conf)
    cli(conf, "tenant", "add", "barata", "--owner", "dono@barata.example")
    result = cli(conf, *args, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_commands_before_init_say_what_to_do(conf: Path) -> None:
    result = cli(conf, "tenant", "list", check=False)
    assert result.returncode == 1
    assert "mxdesk init" in result.stderr


def test_check_config_names_the_key_and_exits_2(short_tmp: Path) -> None:
    bad = short_tmp / "bad.toml"
    bad.write_text('[gateway]\nmax_recipients = -1\nlisten = ["nowhere"]\n[mxdesk]\ncolour = 1\n')
    result = cli(bad, "check-config", check=False)
    assert result.returncode == 2
    assert "gateway.max_recipients" in result.stderr
    assert "gateway.listen" in result.stderr
    assert "mxdesk.colour: unknown key" in result.stderr
    for daemon in ("gateway", "store", "serve"):
        refused = cli(bad, daemon, check=False)
        assert refused.returncode == 2
        assert "gateway.max_recipients" in refused.stderr


def test_config_from_environment_variable(conf: Path) -> None:
    import os

    result = subprocess.run(
        [*MXDESK, "check-config"],
        capture_output=True,
        text=True,
        env=dict(os.environ, MXDESK_CONFIG=str(conf)),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(conf) in result.stdout


def test_missing_config_file_is_a_clear_error(short_tmp: Path) -> None:
    result = cli(short_tmp / "absent.toml", "check-config", check=False)
    assert result.returncode == 2
    assert "cannot read the configuration file" in result.stderr


def test_daemons_notify_systemd_and_stop_cleanly_on_sigterm(conf: Path, short_tmp: Path) -> None:
    provision(conf)
    for command in ("store", "gateway", "serve"):
        d = Daemon(conf, command, short_tmp / f"{command}.log")
        try:
            d.start()
            assert d.terminate() == 0
            assert any("STOPPING=1" in n for n in d.stopped_with)
        finally:
            d.close()


def test_domain_add_creates_dkim_keys_and_shows_the_records(conf: Path) -> None:
    provision(conf)
    shown = json.loads(cli(conf, "domain", "show", "marca.helpdesk.example", "--json").stdout)
    assert [r["algorithm"] for r in shown["dkim"]] == ["rsa-sha256"]
    assert shown["dkim"][0]["txt"].startswith("v=DKIM1; k=rsa; p=")
    assert "DKIM rsa-sha256" in cli(conf, "domain", "show", "marca.helpdesk.example").stdout
    missing = cli(conf, "domain", "show", "nada.helpdesk.example", check=False)
    assert missing.returncode == 1 and "no domain" in missing.stderr


def test_operators_signatures_and_mailbox_switches(conf: Path, short_tmp: Path) -> None:
    provision(conf)
    sig = short_tmp / "ana.txt"
    sig.write_text("Ana Souza\nSuporte Marca\n", "utf-8")
    cli(conf, "operator", "add", "Ana Souza", "--tenant", "marca", "--signature-file", str(sig))
    cli(conf, "operator", "add", "Bruno", "--tenant", "marca")
    ops = json.loads(cli(conf, "operator", "list", "--json").stdout)
    assert [(o["name"], o["signature"]) for o in ops] == [
        ("Ana Souza", "Ana Souza\nSuporte Marca"),
        ("Bruno", ""),
    ]
    generic = short_tmp / "equipe.txt"
    generic.write_text("Equipe Marca\n", "utf-8")
    cli(conf, "signature", "set", "--tenant", "marca", "--file", str(generic))
    assert cli(conf, "signature", "show", "--tenant", "marca").stdout.strip() == "Equipe Marca"
    out = json.loads(
        cli(
            conf,
            "mailbox",
            "set",
            "suporte@marca.helpdesk.example",
            "--generic-signature",
            "off",
            "--json",
        ).stdout
    )
    assert out["generic_signature"] is False and out["operator_signatures"] is True
    dup = cli(conf, "operator", "add", "Bruno", "--tenant", "marca", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
