"""The start-up gate: the daemons refuse a Python with a mail flaw mxdesk relies on being fixed,
in one line that names the version needed, with exit status 3."""

from __future__ import annotations

import email.utils
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemons import write_config

from mxdesk import versions
from mxdesk.cli import main
from mxdesk.startup import EXIT_STARTUP, StartupError
from mxdesk.store import parse


def legacy_getaddresses(values: list[str]) -> list[tuple[str, str]]:
    """email.utils.getaddresses as Python before the CVE-2023-27043 fix behaves (3.11.7)."""
    if getattr(email.utils, "supports_strict_parsing", False):
        return email.utils.getaddresses(values, strict=False)
    return email.utils.getaddresses(values)


def test_this_python_passes() -> None:
    versions.check()


def test_the_gate_checks_behaviour_not_version_numbers() -> None:
    # Python 3.11.7 (this project's development machine) lacks the fix, and passes the gate:
    # the store does not use email.utils.getaddresses.
    assert versions.address_headers() == ""
    assert parse.parse_message(b"From: alice@example.org <bob@example.net>\r\n\r\n").from_addr == ""


def test_a_store_relying_on_an_unfixed_getaddresses_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unfixed(value: str, complete: bool = True) -> list[tuple[str, str]]:
        return legacy_getaddresses([value])

    monkeypatch.setattr(parse, "header_addresses", unfixed)
    monkeypatch.setattr(versions.sys, "version_info", (3, 11, 7, "final", 0))
    with pytest.raises(StartupError) as refused:
        versions.check()
    assert refused.value.code == EXIT_STARTUP
    assert str(refused.value) == (
        "Python 3.11.7 reads From: alice@example.org <bob@example.net> as 'alice@example.org'"
        " (CVE-2023-27043): use Python 3.13, or 3.12.6, 3.11.10 or later"
    )


@pytest.mark.parametrize("command", ["store", "gateway", "serve"])
def test_a_daemon_stops_with_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path, command: str
) -> None:
    def started(config: object) -> None:
        raise AssertionError("the gate should have stopped the daemon before its state")

    monkeypatch.setattr("mxdesk.cli.daemons.init_state", started)
    monkeypatch.setattr(parse, "header_addresses", lambda value, complete=True: [("", "a@b")])
    monkeypatch.setattr(versions.sys, "version_info", (3, 11, 7, "final", 0))
    config = write_config(short_tmp)
    result = CliRunner().invoke(main, ["--config", str(config), command])
    assert result.exit_code == EXIT_STARTUP
    assert result.output.splitlines()[-1] == (
        "mxdesk: Python 3.11.7 reads From: alice@example.org <bob@example.net> as 'a@b'"
        " (CVE-2023-27043): use Python 3.13, or 3.12.6, 3.11.10 or later"
    )


def test_the_daemons_do_not_import_aiosmtpd() -> None:
    # A production install has no aiosmtpd (a test dependency only): nothing the daemons or
    # the CLI load may need it.
    code = (
        "import sys, mxdesk.cli, mxdesk.cli.daemons, mxdesk.gateway.service,"
        " mxdesk.gateway.listener, mxdesk.store.service; print('aiosmtpd' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
