"""Starting the daemons as a sysadmin does: each failure is one line, a documented exit code and
no traceback; configuration errors name file and line; the demo binds what it says."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_real, wait_for_sync
from daemons import MXDESK, Daemon, cli, free_port, provision, write_config
from tls_files import make_tls_files

BASE = "helpdesk.example"
EXIT_CONFIG, EXIT_STARTUP = 2, 3


def port_of(config: Path) -> int:
    return int(config.read_text().split("127.0.0.1:")[1].split('"')[0])


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure: one line for a person, the last; before it only the log of what started."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    said = [line for line in lines if line.startswith("mxdesk: ")]
    assert said == lines[-1:], result.stderr
    assert all(" INFO mxdesk." in line for line in lines[:-1]), result.stderr
    return lines[-1]


@pytest.fixture
def occupied() -> Iterator[socket.socket]:
    """A port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other


def test_a_port_in_use_is_one_line_and_exit_3(short_tmp: Path, occupied: socket.socket) -> None:
    port = occupied.getsockname()[1]
    conf = write_config(short_tmp, port)
    result = cli(conf, "gateway", check=False)
    assert result.returncode == EXIT_STARTUP
    assert one_line(result) == (
        f"mxdesk: 127.0.0.1:{port} is already in use by another program:"
        " set [gateway] listen, or stop it"
    )
    # serve starts the store first: it is stopped again and its socket removed.
    served = cli(conf, "serve", check=False)
    assert served.returncode == EXIT_STARTUP
    assert one_line(served) == one_line(result)
    assert not (short_tmp / "run" / "store" / "lmtp.sock").exists()
    metrics = write_config(short_tmp, gateway_extra=f'[metrics]\nlisten = "127.0.0.1:{port}"')
    result = cli(metrics, "gateway", check=False)
    assert result.returncode == EXIT_STARTUP
    assert one_line(result) == (
        f"mxdesk: 127.0.0.1:{port} is already in use by another program:"
        " set [metrics] listen, or stop it"
    )


def test_the_traceback_goes_to_the_debug_log(short_tmp: Path, occupied: socket.socket) -> None:
    conf = write_config(short_tmp, occupied.getsockname()[1])
    conf.write_text(conf.read_text().replace('log_level = "info"', 'log_level = "debug"'))
    result = cli(conf, "gateway", check=False)
    assert result.returncode == EXIT_STARTUP
    assert "Traceback" in result.stderr and "start-up failed" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mxdesk: 127.0.0.1:")


def test_no_permission_to_bind_port_25(short_tmp: Path) -> None:
    conf = write_config(short_tmp, 25)
    command = [*MXDESK, "--config", str(conf), "gateway"]
    if os.geteuid() == 0:
        # Root without CAP_NET_BIND_SERVICE, as the unit would be without it.
        command = [require_real("setpriv"), "--bounding-set=-net_bind_service", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_STARTUP
    assert one_line(result) == (
        "mxdesk: cannot bind 127.0.0.1:25: permission denied (run as root, or give"
        " CAP_NET_BIND_SERVICE, or listen on a port above 1023)"
    )


def test_a_socket_in_use_by_a_running_daemon(short_tmp: Path) -> None:
    conf = write_config(short_tmp)
    provision(conf)
    store = Daemon(conf, "store", short_tmp / "store.log")
    gateway = Daemon(conf, "gateway", short_tmp / "gateway.log")
    try:
        store.start()
        gateway.start()
        second = cli(conf, "store", check=False)
        assert second.returncode == EXIT_STARTUP
        socket_path = short_tmp / "run" / "store" / "lmtp.sock"
        assert one_line(second) == (
            f"mxdesk: the store socket {socket_path} is in use by a running store: stop it first"
        )
        # A second gateway on another port, with a spool of its own (the first one's is locked),
        # meets the first one's submission socket.
        other = short_tmp / "other.toml"
        text = conf.read_text().replace(str(port_of(conf)), str(free_port()))
        spool = short_tmp / "other-spool.db"
        other.write_text(text.replace("[gateway]\n", f'[gateway]\nspool_path = "{spool}"\n', 1))
        result = cli(other, "gateway", check=False)
        assert result.returncode == EXIT_STARTUP
        submit = short_tmp / "run" / "gateway" / "submit.sock"
        assert one_line(result) == (
            f"mxdesk: the gateway socket {submit} is in use by a running gateway: stop it first"
        )
        # The running ones were not disturbed.
        assert socket_path.exists() and submit.exists()
        assert store.terminate() == 0 and gateway.terminate() == 0
    finally:
        store.close()
        gateway.close()


def test_a_key_given_as_the_certificate_and_a_group_that_does_not_exist(short_tmp: Path) -> None:
    # Seen: tls_cert naming the key file passed check-config ("ok"), then the gateway stopped
    # with exit 3 and "cannot be loaded ([SSL] PEM lib (_ssl.c:3905))".
    _, _, key = make_tls_files(short_tmp / "tls", "mx.helpdesk.example")
    conf = write_config(short_tmp, gateway_extra=f'tls_cert = "{key}"\ntls_key = "{key}"')
    line = conf.read_text().splitlines().index(f'tls_cert = "{key}"') + 1
    expected = (
        f"mxdesk: {conf}:{line}: gateway.tls_cert: {key} is not a PEM certificate but a private"
        " key: set tls_cert to the certificate (chain) and tls_key to its key"
    )
    for command in ("check-config", "gateway", "serve"):
        result = cli(conf, command, check=False)
        assert result.returncode == EXIT_CONFIG, command
        assert one_line(result) == expected
    # The submission socket's group is named as such (it used to be called store.socket_group).
    conf = write_config(short_tmp, gateway_extra='[gateway.submission]\nsocket_group = "nogroup-x"')
    result = cli(conf, "gateway", check=False)
    assert result.returncode == EXIT_STARTUP
    assert one_line(result) == "mxdesk: gateway.submission.socket_group: no group named 'nogroup-x'"


def test_a_config_error_names_file_and_line_and_exits_2(short_tmp: Path) -> None:
    conf = write_config(short_tmp, gateway_extra="max_mesage_size = 1000")
    line = conf.read_text().splitlines().index("max_mesage_size = 1000") + 1
    expected = (
        f"mxdesk: {conf}:{line}: gateway.max_mesage_size: unknown key"
        " (did you mean max_message_size?)"
    )
    for command in ("check-config", "gateway", "store", "serve"):
        result = cli(conf, command, check=False)
        assert result.returncode == EXIT_CONFIG, command
        assert one_line(result) == expected


def test_check_config_json_on_a_bad_and_a_good_file(short_tmp: Path) -> None:
    conf = write_config(short_tmp, gateway_extra='max_mesage_size = 1000\nmax_recipients = "ten"')
    lines = conf.read_text().splitlines()
    result = cli(conf, "check-config", "--json", check=False)
    assert result.returncode == EXIT_CONFIG
    assert json.loads(result.stdout) == {
        "ok": False,
        "path": str(conf),
        "errors": [
            {
                "file": str(conf),
                "line": lines.index("max_mesage_size = 1000") + 1,
                "key": "gateway.max_mesage_size",
                "message": "unknown key (did you mean max_message_size?)",
            },
            {
                "file": str(conf),
                "line": lines.index('max_recipients = "ten"') + 1,
                "key": "gateway.max_recipients",
                "message": "expected an integer, got 'ten'",
            },
        ],
        "warnings": [],
    }
    good = write_config(short_tmp)
    shown = json.loads(cli(good, "check-config", "--json").stdout)
    assert shown == {
        "ok": True,
        "path": str(good),
        "base_domain": BASE,
        "errors": [],
        "warnings": [],
    }


def test_the_example_domain_warns_in_check_config_and_stops_the_daemons(short_tmp: Path) -> None:
    conf = write_config(short_tmp)
    conf.write_text(conf.read_text().replace("allow_example_domain = true\n", ""))
    line = conf.read_text().splitlines().index(f'base_domain = "{BASE}"') + 1
    message = f"base_domain is the example {BASE}: set your own domain"
    checked = cli(conf, "check-config")
    assert checked.stdout.strip() == f"{conf}: ok (base domain {BASE})"
    assert one_line(checked) == f"mxdesk: warning: {conf}:{line}: mxdesk.base_domain: {message}"
    shown = json.loads(cli(conf, "check-config", "--json").stdout)
    assert shown["ok"] is True
    assert shown["warnings"] == [
        {"file": str(conf), "line": line, "key": "mxdesk.base_domain", "message": message}
    ]
    for command in ("gateway", "store", "serve"):
        refused = cli(conf, command, check=False)
        assert refused.returncode == EXIT_CONFIG
        assert one_line(refused).startswith(
            f"mxdesk: {conf}:{line}: mxdesk.base_domain: {message} (allow_example_domain = true"
        )


def run_demo(directory: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Starts `mxdesk serve --demo`; returns it and the address its banner names."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*MXDESK, "serve", "--demo", "--demo-dir", str(directory), "--demo-port", str(port)],
            stdout=out,
            stderr=out,
        )

    def banner() -> str | None:
        if proc.poll() is not None:
            pytest.fail(f"serve --demo exited {proc.returncode}:\n{log.read_text()}")
        text = log.read_text()
        return text.split("SMTP on ")[1].split()[0] if "SMTP on " in text else None

    return proc, wait_for_sync(banner, 60, "the demo's banner")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_the_demo_port_wins_over_an_old_demo_config(
    short_tmp: Path, occupied: socket.socket
) -> None:
    directory = short_tmp / "demo"
    directory.mkdir()
    # The config of an earlier run: another port (taken now) and no [mxdesk] user.
    taken = occupied.getsockname()[1]
    (directory / "mxdesk.toml").write_text(
        f'[mxdesk]\nbase_domain = "{BASE}"\nstate_dir = "{directory}/state"\n'
        f'runtime_dir = "{directory}/run"\n\n[gateway]\nlisten = ["127.0.0.1:{taken}"]\n'
    )
    port = free_port()
    proc, address = run_demo(directory, port, short_tmp / "demo.log")
    try:
        assert address == f"127.0.0.1:{port}"
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.ehlo()[0] == 250
        text = (directory / "mxdesk.toml").read_text()
        assert f'listen = ["127.0.0.1:{port}"]' in text and 'user = ""' in text
    finally:
        assert stop(proc) == 0


def test_the_demo_banner_says_what_was_really_bound(short_tmp: Path) -> None:
    proc, address = run_demo(short_tmp / "demo", 0, short_tmp / "demo.log")
    try:
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with smtplib.SMTP(host, int(port), timeout=10) as client:
            assert client.ehlo()[0] == 250
        text = (short_tmp / "demo.log").read_text()
        assert f"swaks --server {address} --to suporte@marca.{BASE}" in text
        # The command it gives to read the tickets runs as printed, from where it was started.
        read = text.split("read:", 1)[1].splitlines()[0].strip()
        listed = subprocess.run(read, shell=True, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "no tickets yet" in listed.stdout, listed
        # The demo is whole: its health check (the secrets key included) finds nothing to fix.
        conf = short_tmp / "demo" / "mxdesk.toml"
        assert cli(conf, "doctor").stdout.strip() == "everything is in order"
    finally:
        assert stop(proc) == 0


def test_under_the_journal_each_line_carries_its_priority(short_tmp: Path) -> None:
    conf = write_config(short_tmp, gateway_extra="max_connections_per_client = 1")
    log = short_tmp / "gateway.log"
    log.touch()
    st = log.stat()
    # systemd sets JOURNAL_STREAM to the device and inode of the stream it gives as stderr.
    gateway = Daemon(conf, "gateway", log, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        gateway.start()
        with smtplib.SMTP("127.0.0.1", port_of(conf), timeout=10):
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", port_of(conf), timeout=10)
            assert refused.value.smtp_code == 421
            wait_for_sync(lambda: "refused" in log.read_text(), what="the refusal logged")
        assert gateway.terminate() == 0
    finally:
        gateway.close()
    lines = log.read_text().splitlines()
    assert "<6>mxdesk: ready" in lines
    assert any(
        line.startswith("<4>mxdesk.gateway.smtp: client=127.0.0.1 refused") for line in lines
    )
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
