"""`mxdesk outbox …` as a sysadmin runs it: the password goes in and never comes back out."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import time
from pathlib import Path

import pytest
from daemons import MXDESK, cli, provision, write_config

PASSWORD = "abcd efgh ijkl mnop"
ADDRESS = "suporte@marca.example"


@pytest.fixture
def conf(short_tmp: Path) -> Path:
    path = write_config(short_tmp)
    provision(path)
    return path


def _state_bytes(conf: Path) -> bytes:
    state = conf.parent / "state"
    return b"".join(p.read_bytes() for p in state.glob("state.db*"))


def test_init_makes_a_private_secrets_key(conf: Path) -> None:
    key = conf.parent / "state" / "secrets.key"
    made = key.read_bytes()
    assert len(made) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = cli(conf, "init")
    assert key.read_bytes() == made and f"secrets key in {key}" in again.stdout


def test_password_from_stdin_is_stored_but_never_shown(conf: Path) -> None:
    out = cli(
        conf,
        *("outbox", "set", "marca", "--host", "smtp.marca.example", "--security", "starttls"),
        *("--address", ADDRESS, "--sender-name", "Suporte Marca", "--password-stdin"),
        input=PASSWORD + "\nsecond line is ignored\n",
    )
    assert "password: set" in out.stdout and PASSWORD not in out.stdout + out.stderr
    shown = cli(conf, "outbox", "show", "marca").stdout
    assert "host: smtp.marca.example" in shown
    assert "port: 587" in shown
    assert f"user: {ADDRESS}" in shown
    assert "password: set" in shown
    assert PASSWORD not in shown
    data = json.loads(cli(conf, "outbox", "show", "marca", "--json").stdout)
    assert data["password_set"] is True and data["security"] == "starttls"
    assert PASSWORD not in json.dumps(data) and "password" not in data
    listed = cli(conf, "outbox", "list", "--json").stdout
    assert [o["tenant"] for o in json.loads(listed)] == ["marca"] and PASSWORD not in listed
    assert PASSWORD.encode() not in _state_bytes(conf)
    assert b"smtp.marca.example" in _state_bytes(conf)


def test_prompt_asks_twice(conf: Path) -> None:
    """On a terminal (a pseudo-terminal here, in a session of its own so that no other
    terminal is asked) the password is asked for twice, without echo."""
    args = ("outbox", "set", "marca", "--preset", "outlook", "--address", ADDRESS)
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [*MXDESK, "--config", str(conf), *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stderr is not None
        seen = b""
        # getpass flushes what was typed before its prompt: answer each prompt when it shows.
        for prompt in (b"Password: ", b"Repeat for confirmation: "):
            deadline = time.monotonic() + 30
            while not seen.endswith(prompt):
                assert time.monotonic() < deadline, seen
                if select.select([proc.stderr], [], [], 1)[0]:
                    seen += os.read(proc.stderr.fileno(), 100)
            os.write(master, f"{PASSWORD}\n".encode())
            seen = b""
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, err
    assert b"password: set" in out and PASSWORD.encode() not in out + err
    assert b"Warning" not in err
    assert PASSWORD.encode() not in _state_bytes(conf)


def test_gmail_preset(conf: Path) -> None:
    cli(
        conf,
        *("outbox", "set", "marca", "--preset", "gmail", "--address", ADDRESS),
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    data = json.loads(cli(conf, "outbox", "show", "marca", "--json").stdout)
    assert (data["host"], data["port"], data["security"], data["user"]) == (
        "smtp.gmail.com",
        465,
        "ssl",
        ADDRESS,
    )
    assert "app password" in cli(conf, "outbox", "set", "--help").stdout


def test_there_is_no_password_option(conf: Path) -> None:
    options = cli(conf, "outbox", "set", "--help").stdout.split("Options:")[1]
    assert "--password-stdin" in options and "--password " not in options
    result = cli(
        conf,
        *("outbox", "set", "marca", "--host", "smtp.marca.example", "--address", ADDRESS),
        *("--password", PASSWORD),
        check=False,
    )
    assert result.returncode != 0
    assert "No such option" in result.stderr
    assert json.loads(cli(conf, "outbox", "list", "--json").stdout) == []


def test_remove(conf: Path) -> None:
    args = ("outbox", "set", "marca", "--host", "10.0.0.5", "--address", ADDRESS)
    cli(conf, *args, "--no-password")
    assert "password: not set" in cli(conf, "outbox", "show", "marca").stdout
    assert "removed" in cli(conf, "outbox", "remove", "marca").stdout
    assert json.loads(cli(conf, "outbox", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["set", "ninguem", "--host", "h.example", "--no-password"], "", "no tenant 'ninguem'"),
        (["set", "marca", "--host", "bad host", "--no-password"], "", "not a DNS name"),
        (["set", "marca", "--host", "h.example", "--port", "0", "--no-password"], "", "port 0"),
        (["set", "marca", "--no-password"], "", "no host"),
        (["set", "marca", "--host", "h.example", "--password-stdin"], "", "no password on stdin"),
        (["set", "marca", "--host", "h.example", "--ca-file", "/no/ca.pem", "--no-password"], "",
         "CA file /no/ca.pem does not exist"),
        (["set", "marca", "--host", "h.example", "--security", "none", "--password-stdin"], "pw\n",
         "in clear"),
        (["show", "marca"], "", "has no outbox"),
        (["remove", "marca"], "", "has no outbox"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_exit_1(
    conf: Path, args: list[str], stdin: str, message: str
) -> None:
    if args[0] == "set":
        args = [*args, "--address", ADDRESS]
    result = cli(conf, "outbox", *args, input=stdin, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_secrets_key_says_run_init(conf: Path) -> None:
    (conf.parent / "state" / "secrets.key").unlink()
    result = cli(
        conf,
        *("outbox", "set", "marca", "--host", "h.example", "--address", ADDRESS),
        "--password-stdin",
        input=PASSWORD + "\n",
        check=False,
    )
    assert result.returncode == 1
    assert "run 'mxdesk init'" in result.stderr and len(result.stderr.splitlines()) == 1
