"""`mxdesk outbox test` against a real server that demands AUTH after TLS (Postfix with
Dovecot SASL): each step with the server's reply, the failing one named, nothing sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_smtp_harness import AuthSmtpServer, auth_server
from daemons import cli, write_config

USER, PASSWORD = "ana@empresa.example", "s3nha-da-Empresa"
REFUSED = "bloqueado@empresa.example"
pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def server() -> Iterator[AuthSmtpServer]:
    with auth_server(USER, PASSWORD, REFUSED) as srv:
        yield srv


@pytest.fixture
def conf(short_tmp: Path) -> Path:
    path = write_config(short_tmp)
    cli(path, "init")
    cli(path, "tenant", "add", "marca", "--owner", "dono@marca.example", "--plan", "plus")
    return path


def outbox(conf: Path, server: AuthSmtpServer, security: str, password: str, address: str) -> None:
    port = server.ssl_port if security == "ssl" else server.starttls_port
    cli(
        conf,
        *("outbox", "set", "marca", "--host", "127.0.0.1", "--port", str(port)),
        *("--security", security, "--user", USER, "--address", address),
        *("--ca-file", str(server.ca_file), "--password-stdin"),
        input=password + "\n",
    )


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_every_step_passes_and_nothing_is_sent(
    conf: Path, server: AuthSmtpServer, security: str
) -> None:
    outbox(conf, server, security, PASSWORD, USER)
    result = cli(conf, "outbox", "test", "marca")
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok    connect to 127.0.0.1",
        f"ok    AUTH as {USER}",
        "ok    MAIL FROM",
        "ok    RSET",
    ], result.stdout
    assert "TLS" in lines[0] and "235" in lines[1] and "250" in lines[2]
    assert server.messages() == []


def test_a_wrong_password_fails_at_auth(conf: Path, server: AuthSmtpServer) -> None:
    outbox(conf, server, "ssl", "not-the-password", USER)
    result = cli(conf, "outbox", "test", "marca", "--json", check=False)
    assert result.returncode == 1
    steps = json.loads(result.stdout)
    assert [s["ok"] for s in steps] == [True, False]
    assert steps[1]["step"] == f"AUTH as {USER}" and steps[1]["reply"].startswith("535")
    assert "not-the-password" not in result.stdout + result.stderr


def test_a_refused_sender_is_found_before_a_reply_is_lost(
    conf: Path, server: AuthSmtpServer
) -> None:
    outbox(conf, server, "starttls", PASSWORD, REFUSED)
    result = cli(conf, "outbox", "test", "marca", check=False)
    assert result.returncode == 1
    last = result.stdout.splitlines()[-1]
    assert last.startswith(f"FAIL  MAIL FROM:<{REFUSED}>: 553"), result.stdout


def test_without_a_terminal_the_password_must_come_on_stdin(conf: Path) -> None:
    result = cli(
        conf,
        "outbox",
        "set",
        "marca",
        "--host",
        "smtp.empresa.example",
        "--address",
        USER,
        input="",
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == "mxdesk: no terminal to ask for the password on: use --password-stdin\n"
