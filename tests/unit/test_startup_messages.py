"""Start-up failures in one line, the demo config brought up to date, what a reload may change."""

from __future__ import annotations

import errno
import sqlite3
import tomllib
from pathlib import Path

import pytest

from mxdesk import config as cfg
from mxdesk import demo, reload
from mxdesk.configlines import key_lines
from mxdesk.configread import Listen
from mxdesk.sockets import SocketError
from mxdesk.startup import EXIT_STARTUP, EXIT_UNEXPECTED, bind_error, failure


@pytest.mark.parametrize(
    ("host", "code", "message"),
    [
        (
            "127.0.0.1",
            errno.EADDRINUSE,
            "127.0.0.1:25 is already in use by another program: set [gateway] listen, or stop it",
        ),
        (
            "0.0.0.0",
            errno.EACCES,
            "cannot bind 0.0.0.0:25: permission denied (run as root, or give"
            " CAP_NET_BIND_SERVICE, or listen on a port above 1023)",
        ),
        (
            "2001:db8::25",
            errno.EADDRNOTAVAIL,
            "cannot bind [2001:db8::25]:25: no such address on this machine: set [gateway] listen",
        ),
    ],
)
def test_bind_failures_say_what_to_do(host: str, code: int, message: str) -> None:
    error = bind_error(host, 25, OSError(code, "whatever the OS says"))
    assert str(error) == message
    assert error.code == EXIT_STARTUP


def test_other_failures_are_one_line_each() -> None:
    denied = failure(PermissionError(errno.EACCES, "Permission denied", "/var/lib/mxdesk"), "store")
    assert str(denied) == (
        "/var/lib/mxdesk: permission denied: run mxdesk store as the daemons' user"
        " ([mxdesk] user) or fix the owner and mode (mxdesk doctor says how)"
    )
    in_use = SocketError("the store socket /run/x.sock is in use by a running store: stop it first")
    assert str(failure(in_use, "store")) == str(in_use)
    assert "mxdesk doctor" in str(failure(sqlite3.OperationalError("unable to open"), "gateway"))
    assert denied.code == EXIT_STARTUP
    bug = failure(KeyError("oops"), "gateway")
    assert bug.code == EXIT_UNEXPECTED
    assert str(bug).startswith("mxdesk gateway could not start: KeyError")


OLD_DEMO = """\
# mxdesk demo: everything under this directory, SMTP on 127.0.0.1:2525.
[mxdesk]
base_domain = "helpdesk.example"
state_dir = "/srv/demo/state"
runtime_dir = "/srv/demo/run"
log_level = "debug"

[gateway]
listen = ["127.0.0.1:2525"]

[gateway.inbound_retry]
initial = 2.0
"""


def test_the_demo_port_wins_over_an_old_demo_config(tmp_path: Path) -> None:
    (tmp_path / "mxdesk.toml").write_text(OLD_DEMO)
    path = demo.config_file(tmp_path, 2526)
    data = tomllib.loads(path.read_text())
    assert data["gateway"]["listen"] == ["127.0.0.1:2526"]
    # Written before [mxdesk] user existed: it gains user = "" (run as whoever starts it).
    assert data["mxdesk"]["user"] == ""
    # What the person changed stays.
    assert data["mxdesk"]["log_level"] == "debug"
    assert path.read_text().startswith(
        "# mxdesk demo: everything under this directory, SMTP on 127.0.0.1:2526."
    )
    again = path.read_text()
    demo.config_file(tmp_path, 2526)
    assert path.read_text() == again


def test_a_demo_config_laid_out_otherwise_is_written_again(tmp_path: Path) -> None:
    (tmp_path / "mxdesk.toml").write_text('gateway.listen = ["127.0.0.1:2525"]\n')
    data = tomllib.loads(demo.config_file(tmp_path, 2600).read_text())
    assert data["gateway"]["listen"] == ["127.0.0.1:2600"] and data["mxdesk"]["user"] == ""
    assert data["mxdesk"]["state_dir"] == f"{tmp_path.resolve()}/state"


def test_key_lines_skip_strings_arrays_and_comments() -> None:
    text = (
        "a = '''\n[fake]\nb = 1'''\n"
        'c = "x \\" [y] = z"  # d = 1\n'
        "e = [ { f = 1 }, # [g]\n  2 ]\n"
        "[ 'h.i' . j ]\n"
        'k = { "l.m" = { n = "o" } }\n'
        '[[p]]\nq = """a""""\n'
        "r = 1979-05-27 07:32:00Z\n"
    )
    tomllib.loads(text)
    assert key_lines(text) == {
        ("a",): 1,
        ("c",): 4,
        ("e",): 5,
        ("h.i",): 7,
        ("h.i", "j"): 7,
        ("h.i", "j", "k"): 8,
        ("h.i", "j", "k", "l.m"): 8,
        ("h.i", "j", "k", "l.m", "n"): 8,
        ("p",): 9,
        ("p", "q"): 10,
        ("p", "r"): 11,
    }


def test_a_reload_takes_limits_and_keeps_what_needs_a_restart() -> None:
    running = cfg.parse({"gateway": {"listen": ["127.0.0.1:2525"]}})
    new = cfg.parse(
        {
            "mxdesk": {"log_level": "debug", "state_dir": "/srv/other"},
            "gateway": {"listen": ["127.0.0.1:2600"], "max_message_size": 1000},
        }
    )
    merged = reload.merged(running, new)
    assert merged.general.log_level == "debug"
    assert merged.gateway.max_message_size == 1000
    assert merged.gateway.listen == (Listen("127.0.0.1", 2525),)
    assert merged.general.state_dir == running.general.state_dir
    names = reload.settings(running)
    assert set(names) >= reload.RELOADABLE
    assert {"gateway.listen", "gateway.outbound.tls", "dns.ttl", "store.lmtp_socket"} <= set(names)
    assert reload.show(merged.gateway.listen) == "[127.0.0.1:2525]"
