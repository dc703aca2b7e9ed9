"""`mxdesk systemd-units` and `mxdesk --version`: the units come from one place."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from mxdesk import units
from mxdesk.cli import main

SOURCE = Path(__file__).resolve().parent.parent.parent


def fake_install(prefix: Path) -> Path:
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "mxdesk").write_text("#!/bin/sh\n")
    (prefix / "bin" / "mxdesk").chmod(0o755)
    return prefix


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_shipped_files_are_what_the_command_makes_for_opt_mxdesk() -> None:
    for name, text in units.render(Path("/opt/mxdesk")).items():
        assert (SOURCE / "systemd" / name).read_text() == text, f"regenerate systemd/{name}"


def test_units_run_the_prefix_and_are_not_restarted_on_exit_2_or_3() -> None:
    files = units.render(Path("/srv/mx"))
    gateway, store = files["mxdesk-gateway.service"], files["mxdesk-store.service"]
    assert "\nExecStart=/srv/mx/bin/mxdesk gateway\n" in gateway
    assert "\nExecStart=/srv/mx/bin/mxdesk store\n" in store
    for unit in (gateway, store):
        assert "\nRestartPreventExitStatus=2 3\n" in unit and "ExecStartPre" not in unit
    # The store speaks only over Unix sockets; the gateway needs the network for port 25.
    assert "\nPrivateNetwork=yes\n" in store and "PrivateNetwork" not in gateway


def test_prints_the_files_for_a_prefix(tmp_path: Path) -> None:
    prefix = fake_install(tmp_path / "opt" / "mxdesk")
    code, out, _ = run("systemd-units", "--prefix", str(prefix))
    assert code == 0
    assert f"ExecStart={prefix}/bin/mxdesk gateway" in out
    assert "# ==> mxdesk.sysusers <==\n# /etc/sysusers.d/mxdesk.conf" in out


def test_writes_the_files_into_a_directory(tmp_path: Path) -> None:
    prefix = fake_install(tmp_path / "mx")
    code, out, _ = run("systemd-units", "--prefix", str(prefix), "--output", str(tmp_path / "u"))
    assert code == 0
    assert out.splitlines()[0] == f"wrote {tmp_path}/u/mxdesk-gateway.service"
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == [
        "mxdesk-gateway.service",
        "mxdesk-store.service",
        "mxdesk.sysusers",
        "mxdesk.tmpfiles",
    ]
    assert (tmp_path / "u" / "mxdesk-store.service").stat().st_mode & 0o777 == 0o644


def test_refuses_a_prefix_without_mxdesk(tmp_path: Path) -> None:
    code, out, err = run("systemd-units", "--prefix", str(tmp_path))
    assert (code, out) == (1, "")
    assert err == (
        f"mxdesk: {tmp_path}/bin/mxdesk does not exist: give --prefix the directory mxdesk was "
        "installed into (python3 -m venv /opt/mxdesk && /opt/mxdesk/bin/pip install .)\n"
    )


def test_refuses_a_prefix_a_unit_file_cannot_name(tmp_path: Path) -> None:
    prefix = fake_install(tmp_path / "my mxdesk")
    code, _, err = run("systemd-units", "--prefix", str(prefix))
    assert code == 1 and "cannot be written unquoted in a unit file" in err


@pytest.mark.parametrize(
    ("prefix", "setting"),
    [
        ("/root/venv", "ProtectHome=yes"),
        ("/home/ana/mxdesk", "ProtectHome=yes"),
        ("/tmp/mx", "PrivateTmp=yes"),
        ("/opt/mxdesk", None),
        ("/tmpfiles/mxdesk", None),
    ],
)
def test_a_prefix_the_sandbox_hides_is_named(prefix: str, setting: str | None) -> None:
    assert units.hidden_by(Path(prefix)) == setting


def test_version_is_the_installed_distributions() -> None:
    version = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]["version"]
    assert run("--version") == (0, f"mxdesk {version}\n", "")
