"""The CLI and the daemons as a sysadmin runs them: from a config file, in subprocesses."""

from __future__ import annotations

import errno
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import require_real
from daemons import MXDESK, Daemon, cli, provision, write_config

from mxdesk.cli.context import Context


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


def unprivileged() -> list[str]:
    """What runs a command that a file's mode keeps out, root included: root without the
    capabilities that let it read and search whatever it likes."""
    if os.geteuid() != 0:
        return []
    setpriv = require_real("setpriv")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def locked_out(conf: Path, short_tmp: Path) -> Iterator[Path]:
    """An installation whose state and socket directories the CLI's user may not enter (the
    usual "forgot sudo"), as after `mxdesk init` as root with the daemons' directories 0700."""
    provision(conf)
    closed = [short_tmp / "state", short_tmp / "run" / "gateway", short_tmp / "run" / "store"]
    for directory in closed:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0)
    yield conf
    for directory in closed:
        directory.chmod(0o750)


def run_locked_out(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*unprivileged(), *MXDESK, "--config", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "denied"),
    [
        (["status"], "run/gateway/submit.sock"),
        (["ticket", "list"], "state/tickets.db"),
        (["tenant", "list"], "state/state.db"),
        (["domain", "list"], "state/state.db"),
        (["queue", "list"], "state/spool.db"),
        (["init"], "state/"),
    ],
)
def test_a_file_the_user_may_not_open_is_one_line_saying_whom_to_run_as(
    locked_out: Path, short_tmp: Path, args: list[str], denied: str
) -> None:
    result = run_locked_out(locked_out, *args)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"mxdesk: cannot open {short_tmp}/{denied}"), line
    assert line.endswith(": permission denied: run as root or as the user the daemons run as")


@pytest.mark.parametrize(
    ("locked", "args"),
    [
        # SQLite says "unable to open database file" without naming the file.
        ("state.db", ["tenant", "list"]),
        ("state.db", ["domain", "list"]),
        ("state.db", ["doctor"]),
        (
            "message-id.key",
            ["ticket", "reply", "1", "--operator", "Ana", "--body-file", "/dev/null"],
        ),
    ],
)
def test_a_file_the_user_may_not_open_in_an_open_directory_is_named(
    conf: Path, short_tmp: Path, locked: str, args: list[str]
) -> None:
    provision(conf)
    file = short_tmp / "state" / locked
    mode = file.stat().st_mode
    file.chmod(0)
    try:
        result = run_locked_out(conf, *args)
    finally:
        file.chmod(mode)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    if args == ["doctor"]:
        assert str(file) in result.stdout and "may not read it" in result.stdout
    else:
        assert result.stderr == (
            f"mxdesk: cannot open {file}: permission denied: run as root or as the user the"
            " daemons run as\n"
        )


def test_doctor_reports_a_file_it_may_not_read_with_the_command_that_checks_it(
    locked_out: Path, short_tmp: Path
) -> None:
    result = run_locked_out(locked_out, "doctor", "--json")
    assert result.returncode == 1 and result.stderr == ""
    problems = [f for f in json.loads(result.stdout)["findings"] if not f["ok"]]
    assert [(p["what"], p["fix"]) for p in problems] == [
        (f"{short_tmp}/state/state.db", f"sudo mxdesk --config {locked_out} doctor")
    ]
    assert "may not read it" in problems[0]["detail"]


def test_a_missing_daemons_user_is_said_once_with_what_creates_it(conf: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("MXDESK_REQUIRE_REAL") == "1":
            pytest.fail("only root hands files over to the daemons' user")
        pytest.skip("only root hands files over to the daemons' user")
    provision(conf)
    for user, hint in [
        ("mxdesk", "'mxdesk systemd-units --output DIR' writes DIR/mxdesk.sysusers"),
        ("mxd-absent", "useradd --system --no-create-home --shell /usr/sbin/nologin mxd-absent"),
    ]:
        if user in {p.pw_name for p in pwd.getpwall()}:
            continue  # an installed mxdesk
        conf.write_text(conf.read_text().replace('user = ""', f'user = "{user}"'))
        for args in (["tenant", "list"], ["status"], ["init"]):
            result = cli(conf, *args, check=False)
            assert result.returncode == 1
            [line] = result.stderr.splitlines()
            assert line.startswith(f"mxdesk: the daemons' user '{user}' does not exist: "), line
            assert hint in line and "set [mxdesk] user" in line
        conf.write_text(conf.read_text().replace(f'user = "{user}"', 'user = ""'))


@pytest.mark.parametrize("args", [["domain", "list"], ["tenant", "list"], ["dkim", "status"]])
def test_a_closed_pipe_ends_the_command_silently(conf: Path, args: list[str]) -> None:
    provision(conf)
    # The reader is gone before the command writes: `mxdesk domain list | true`.
    with subprocess.Popen(
        [*MXDESK, "--config", str(conf), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) != 0
    assert stderr == ""


def test_whom_to_run_as_is_the_daemons_user_or_its_group_for_their_files_only(
    conf: Path, short_tmp: Path
) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    config = conf.read_text()
    lines = {}
    for user in ("nobody", me):
        conf.write_text(config.replace('user = ""', f'user = "{user}"'))
        context = Context(str(conf))
        assert context.config.general.user == user
        for file in (short_tmp / "run" / "gateway" / "submit.sock", Path("/etc/mine.txt")):
            denied = PermissionError(errno.EACCES, "Permission denied", str(file))
            lines[user, file.name] = context.permission_denied(denied)
    run_as = (
        f"cannot open {short_tmp}/run/gateway/submit.sock: permission denied: run as root or as"
    )
    # The group is offered to one not in it (the test's user is not in nobody's group).
    assert (
        lines["nobody", "submit.sock"]
        == f"{run_as} the daemons' user 'nobody' (or a member of its group)"
    )
    assert lines[me, "submit.sock"] == f"{run_as} the daemons' user '{me}'"
    assert (
        lines[me, "mine.txt"]
        == "cannot open /etc/mine.txt: permission denied: check its owner and mode"
    )
