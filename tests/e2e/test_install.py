"""The README's production install: mxdesk in a virtual environment, the units it generates for
that prefix checked by systemd-analyze, and the store working without a network as its unit
runs it (PrivateNetwork=yes)."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import tomllib
from pathlib import Path

import daemons
import pytest
from conftest import require_real
from daemons import Daemon, cli, provision, write_config
from installed import SOURCE, installed_prefix

pytestmark = pytest.mark.real

UNITS = ("mxdesk-gateway.service", "mxdesk-store.service")
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d) (\w+)")
# The gateway keeps replies queued: nothing leaves the machine, no resolver is asked.
HOLD = '\n[gateway.outbound]\nsend_delay = 3600.0\nnameservers = ["127.0.0.1:9"]\n'
MESSAGE = (
    b"From: Cliente <cliente@example.com>\r\nTo: suporte@marca.helpdesk.example\r\n"
    b"Subject: Pedido\r\nMessage-ID: <pedido-9@example.com>\r\n\r\nCad\xc3\xaa?\r\n"
)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def prefix() -> Path:
    return installed_prefix()


@pytest.fixture(scope="module")
def units(prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as the installed command writes them, for the prefix it runs from."""
    out = tmp_path_factory.mktemp("units")
    made = run(prefix / "bin" / "mxdesk", "systemd-units", "--output", out)
    assert made.returncode == 0, made.stderr
    names = (*UNITS, "mxdesk.sysusers", "mxdesk.tmpfiles")
    assert made.stdout.splitlines() == [f"wrote {out}/{name}" for name in names]
    # The test's prefix is under /tmp, which PrivateTmp=yes hides: said, not refused.
    assert "PrivateTmp=yes hides" in made.stderr
    return out


def test_the_installed_command_says_its_version(prefix: Path) -> None:
    version = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]["version"]
    result = run(prefix / "bin" / "mxdesk", "--version")
    assert (result.returncode, result.stdout) == (0, f"mxdesk {version}\n")


def test_units_run_the_installed_command(prefix: Path, units: Path) -> None:
    for name, command in zip(UNITS, ("gateway", "store"), strict=True):
        text = (units / name).read_text()
        assert f"\nExecStart={prefix}/bin/mxdesk {command}\n" in text
        assert "\nRestart=on-failure\n" in text and "\nRestartPreventExitStatus=2 3\n" in text
        assert (units / name).stat().st_mode & 0o777 == 0o644


def test_systemd_analyze_verify_is_clean(units: Path) -> None:
    analyze = require_real("systemd-analyze")
    result = run(analyze, "verify", *(units / name for name in UNITS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mxdesk" not in result.stdout + result.stderr


def test_sandbox_exposure_is_ok_or_better(units: Path) -> None:
    analyze = require_real("systemd-analyze")
    levels, reports = {}, {}
    for name in UNITS:
        result = run(analyze, "security", "--offline=true", units / name)
        found = EXPOSURE.search(result.stdout)
        assert found, result.stdout + result.stderr
        levels[name], reports[name] = found[2], result.stdout
    assert levels["mxdesk-gateway.service"] in ("SAFE", "OK"), levels
    # The store has no network at all (PrivateNetwork=yes).
    assert levels["mxdesk-store.service"] == "SAFE", levels
    assert "✓ PrivateNetwork=" in reports["mxdesk-store.service"]


def test_the_store_works_without_a_network(
    prefix: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unshare = require_real("unshare")
    conf = write_config(short_tmp)
    conf.write_text(conf.read_text() + HOLD)
    provision(conf)
    cli(conf, "operator", "add", "Ana", "--tenant", "marca")
    store = Daemon(conf, "store", short_tmp / "store.log")
    gateway = Daemon(conf, "gateway", short_tmp / "gateway.log")
    # The installed store in a network namespace of its own, as PrivateNetwork=yes runs it (in
    # a user namespace too when not root); the gateway keeps the machine's network.
    own_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    with monkeypatch.context() as m:
        m.setattr(daemons, "MXDESK", [unshare, *own_user, "--net", f"{prefix}/bin/mxdesk"])
        store.start()
    assert store.proc is not None
    assert os.readlink(f"/proc/{store.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    try:
        gateway.start()
        with smtplib.LMTP(str(short_tmp / "run" / "store" / "lmtp.sock")) as lmtp:
            lmtp.sendmail("cliente@example.com", ["suporte@marca.helpdesk.example"], MESSAGE)
        reply = cli(conf, "ticket", "reply", "1", "--operator", "Ana", input="Saiu hoje.\n")
        # The store handed the reply to the gateway over its submission socket.
        assert re.fullmatch(r"message 2 on ticket #1: queued as \w+\n", reply.stdout), reply
    finally:
        for daemon in (gateway, store):
            if daemon.proc is not None:
                assert daemon.terminate() == 0
            daemon.close()
